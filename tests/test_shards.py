"""The shard writer: what it stores is what zarr reads, bit for bit, for every layout the archive writes."""

from __future__ import annotations

import dataclasses
import os

import numcodecs
import numpy as np
import pytest
import zarr
from hypothesis import given, settings as hsettings, strategies as st
from hypothesis.extra.numpy import arrays
from zarr.codecs import BloscCodec, ZstdCodec

from zarrchive.pixels.blocks import chunk_slices
from zarrchive.pixels.codecs import JpegLSCodec
from zarrchive.errors import VerificationError
from zarrchive.pixels.shards import ArrayWriter

LAYOUTS = {
    "v3 sharded blosc": dict(zarr_format=3, sharded=True, compressors=BloscCodec(cname="zstd", clevel=3,
                                                                                   shuffle="bitshuffle")),
    "v3 sharded zstd": dict(zarr_format=3, sharded=True, compressors=ZstdCodec(level=3)),
    "v3 chunks": dict(zarr_format=3, sharded=False, compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")),
    "v2 chunks": dict(zarr_format=2, sharded=False, compressors=numcodecs.Blosc("zstd", 3, numcodecs.Blosc.SHUFFLE),
                      chunk_key_encoding={"name": "v2", "separator": "/"}),
}


def random_pixels(shape):
    return np.random.default_rng(3).integers(1, 4096, shape, dtype=np.uint16)


def create(path, shape, chunks, shards, dtype, layout):
    options = dict(LAYOUTS[layout])
    sharded = options.pop("sharded")
    return zarr.create_array(str(path), shape=shape, chunks=chunks, shards=shards if sharded else None, dtype=dtype,
                             fill_value=0, **options)


def write_all(path, data, objects):
    """Write ``data`` object by object, as the streaming tasks do (each task its own whole objects)."""
    writer = ArrayWriter.open(str(path))
    return sum(writer.write(region, data[region]).chunks for region in chunk_slices(data.shape, objects))


@st.composite
def cases(draw):
    ndim = draw(st.integers(2, 4))
    shape = tuple(draw(st.lists(st.integers(1, 40), min_size=ndim, max_size=ndim)))
    chunks = tuple(draw(st.integers(1, n + 3)) for n in shape)
    per_shard = tuple(draw(st.integers(1, 3)) for _ in shape)
    dtype = draw(st.sampled_from(["bool", "uint8", "uint16", "uint32", "int8", "int16", "int32", "float32",
                                   "float64"]))
    data = draw(arrays(dtype, shape, elements={"allow_nan": True} if dtype.startswith("float") else None))
    return data, chunks, tuple(c * k for c, k in zip(chunks, per_shard))


@pytest.mark.parametrize("layout", LAYOUTS)
@hsettings(max_examples=25, deadline=None)
@given(case=cases())
def test_zarr_reads_back_exactly_what_was_written(tmp_path_factory, layout, case):
    data, chunks, shards = case
    path = tmp_path_factory.mktemp("a") / "a.zarr"
    create(path, data.shape, chunks, shards, data.dtype, layout)
    write_all(path, data, shards if LAYOUTS[layout]["sharded"] else chunks)
    back = zarr.open_array(str(path), mode="r")[...]
    assert back.dtype == data.dtype
    assert back.tobytes() == data.tobytes()  # bit for bit: NaN payloads and -0.0 included


@pytest.mark.parametrize("layout", LAYOUTS)
def test_chunks_of_only_the_fill_value_are_not_stored_but_negative_zero_is(tmp_path, layout):
    data = np.zeros((8, 8), np.float32)
    data[4:, 4:] = -0.0  # equal to the fill value 0, yet other bits: stored
    create(tmp_path / "a", data.shape, (4, 4), (8, 8), data.dtype, layout)
    proven = write_all(tmp_path / "a", data, (8, 8) if LAYOUTS[layout]["sharded"] else (4, 4))
    assert proven == 4  # three read as the fill value, one stored
    stored = [f for _, _, files in os.walk(tmp_path / "a") for f in files if f not in ("zarr.json", ".zarray",
                                                                                        ".zattrs")]
    assert len(stored) == 1
    back = zarr.open_array(str(tmp_path / "a"), mode="r")[...]
    assert back.tobytes() == data.tobytes()


def test_an_image_codec_writes_through_the_same_path(tmp_path):
    data = np.random.default_rng(1).integers(0, 4096, (2, 50, 70), dtype=np.uint16)
    zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=(1, 32, 32), shards=(2, 64, 64),
                      dtype=data.dtype, fill_value=0, serializer=JpegLSCodec(), compressors=None)
    write_all(tmp_path / "a", data, (2, 64, 64))
    assert np.array_equal(zarr.open_array(str(tmp_path / "a"), mode="r")[...], data)


def test_a_stored_object_that_differs_from_the_one_written_fails(tmp_path, monkeypatch):
    data = np.arange(256, dtype=np.uint16).reshape(16, 16)
    create(tmp_path / "a", data.shape, (4, 4), (16, 16), data.dtype, "v3 sharded blosc")
    import zarrchive.pixels.shards as shards

    appended = shards._append
    flips = iter([True])

    def damaged(fd, data):  # the disk keeps other bytes than those handed to it (the object's first ones)
        stored = bytearray(data)
        if next(flips, False):
            stored[10] ^= 0xFF
        appended(fd, bytes(stored))

    monkeypatch.setattr(shards, "_append", damaged)
    with pytest.raises(VerificationError, match="c/0/0: chunk 0"):
        write_all(tmp_path / "a", data, (16, 16))


def test_a_region_must_be_whole_objects_and_of_the_array_type(tmp_path):
    create(tmp_path / "a", (10, 10), (4, 4), (8, 8), "uint16", "v3 sharded blosc")
    writer = ArrayWriter.open(str(tmp_path / "a"))
    with pytest.raises(ValueError, match="whole objects"):
        writer.write((slice(0, 4), slice(0, 8)), np.zeros((4, 8), np.uint16))
    with pytest.raises(ValueError, match="uint8"):
        writer.write((slice(0, 8), slice(0, 8)), np.zeros((8, 8), np.uint8))
    writer.write((slice(8, 10), slice(8, 10)), np.ones((2, 2), np.uint16))  # the array's end cuts the object
    assert not [f for _, _, files in os.walk(tmp_path / "a") for f in files if f.endswith(".partial")]
    assert zarr.open_array(str(tmp_path / "a"), mode="r")[9, 9] == 1


def test_a_lossy_codec_is_caught(tmp_path):
    create(tmp_path / "a", (8, 8), (4, 4), (8, 8), "uint16", "v3 chunks")
    writer = ArrayWriter.open(str(tmp_path / "a"))
    lossy = dataclasses.replace(writer, decode=lambda data: writer.decode(data) // 2 * 2)
    with pytest.raises(VerificationError, match="other pixels"):
        lossy.write((slice(0, 8), slice(0, 8)), np.arange(64, dtype=np.uint16).reshape(8, 8) + 1)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("where", [(0, 0), (1, 1), (3, 3), (0, 3)])  # inside the array, or in the padding beyond it
def test_a_chunk_cut_by_the_array_end_is_proven_inside_and_in_its_padding(tmp_path, layout, where):
    create(tmp_path / "a", (10, 10), (4, 4), (8, 8), "uint16", layout)
    writer = ArrayWriter.open(str(tmp_path / "a"))
    region = (slice(8, 10), slice(8, 10))  # the last object (a shard or a chunk), two by two inside the array

    def decode(data):  # the codec gives back one other pixel of the whole (padded) chunk
        chunk = writer.decode(data).copy()
        chunk[where] ^= 1
        return chunk

    with pytest.raises(VerificationError, match="other pixels"):
        dataclasses.replace(writer, decode=decode).write(region, np.full((2, 2), 7, np.uint16))
    writer.write(region, np.full((2, 2), 7, np.uint16))  # and the true codec proves it
    assert zarr.open_array(str(tmp_path / "a"), mode="r")[8:, 8:].tolist() == [[7, 7], [7, 7]]


@pytest.mark.parametrize("layout", LAYOUTS)
@hsettings(max_examples=20, deadline=None)
@given(case=cases(), data=st.data())
def test_a_region_written_a_part_at_a_time_stores_the_same_bytes(tmp_path_factory, layout, case, data):
    """Parts in C order cut along outer axes (never the last), one chunk thick along every axis outside the
    innermost one cut, as ``passes.slabs`` cuts a region (a z-stack plane by plane): each object is byte for byte
    the one a single write of the whole region stores (its chunks come in the same order), and its size and digest
    the same."""
    pixels, chunks, shards = case
    one, parts = tmp_path_factory.mktemp("one") / "a", tmp_path_factory.mktemp("parts") / "a"
    for path in (one, parts):
        create(path, pixels.shape, chunks, shards, pixels.dtype, layout)
    whole = ArrayWriter.open(str(one)).write(tuple(slice(0, n) for n in pixels.shape), pixels)
    cut = data.draw(st.integers(0, pixels.ndim - 2))  # the innermost axis cut: one chunk thick outside it
    thick = tuple(c if i < cut else c * data.draw(st.integers(1, 3)) if i == cut else n
                  for i, (c, n) in enumerate(zip(chunks, pixels.shape)))
    region = tuple(slice(0, n) for n in pixels.shape)
    with ArrayWriter.open(str(parts)).region(region) as writing:
        for part in chunk_slices(pixels.shape, thick):
            writing.add(part, pixels[part])
        stored = writing.finish()
    assert stored == whole
    for key in whole.objects:
        assert (parts / key).read_bytes() == (one / key).read_bytes()


def _open_files(under) -> list[str]:
    """The files under ``under`` this process holds open (other threads of the test process open their own)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith(str(under)):
            held.append(target)
    return held


def test_a_region_left_unfinished_leaves_nothing_of_its_open_objects(tmp_path):
    create(tmp_path / "a", (8, 8, 8), (1, 4, 4), (4, 8, 8), "uint16", "v3 sharded blosc")
    writer = ArrayWriter.open(str(tmp_path / "a"))
    ones = np.ones((1, 8, 8), np.uint16)
    with pytest.raises(RuntimeError, match="the reader failed"):
        with writer.region((slice(0, 8), slice(0, 8), slice(0, 8))) as writing:
            for z in range(5):  # the first shard (planes 0-3) is finished and put in place; the second is not
                writing.add((slice(z, z + 1), slice(0, 8), slice(0, 8)), ones * z + 1)
                assert _open_files(tmp_path) == []  # an object waiting for its next part holds no file open
            raise RuntimeError("the reader failed")
    files = sorted(str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == ["c/0/0/0", "zarr.json"]
    with pytest.raises(ValueError, match="not written whole"):
        with writer.region((slice(0, 8), slice(0, 8), slice(0, 8))) as writing:
            writing.add((slice(0, 2), slice(0, 8), slice(0, 8)), np.ones((2, 8, 8), np.uint16))
            writing.finish()
    with pytest.raises(ValueError, match="whole chunks"):
        writer.region((slice(0, 4), slice(0, 8), slice(0, 8))).add((slice(0, 1), slice(0, 2), slice(0, 8)),
                                                                    np.ones((1, 2, 8), np.uint16))
    with pytest.raises(ValueError, match="handed over twice"):  # a plane given twice never completes a shard
        with writer.region((slice(0, 4), slice(0, 8), slice(0, 8))) as writing:
            for z in (0, 1, 2, 2):
                writing.add((slice(z, z + 1), slice(0, 8), slice(0, 8)), ones)
    with pytest.raises(ValueError, match="hands over a chunk twice"):  # nor once its shard is finished
        with writer.region((slice(0, 4), slice(0, 8), slice(0, 8))) as writing:
            for z in (0, 1, 2, 3, 0):
                writing.add((slice(z, z + 1), slice(0, 8), slice(0, 8)), ones)
    assert not [p for p in (tmp_path / "a").rglob("*.partial")] and _open_files(tmp_path) == []


def test_a_stored_shard_index_that_differs_is_caught_and_leaves_nothing(tmp_path, monkeypatch):
    import zarrchive.pixels.shards as shards

    create(tmp_path / "a", (16, 16), (4, 4), (16, 16), "uint16", "v3 sharded blosc")
    writer = ArrayWriter.open(str(tmp_path / "a"))
    read_back, index = shards._read_back, 16 * 16 + 4  # 16 chunks: offset and length each, and the CRC32C

    def damaged(fd, start, length):  # the disk gives back another index than the one written
        data = read_back(fd, start, length)
        return data[:-1] + bytes([data[-1] ^ 1]) if length == index else data

    monkeypatch.setattr(shards, "_read_back", damaged)
    with pytest.raises(VerificationError, match="stored shard index differs"):
        writer.write((slice(0, 16), slice(0, 16)), np.arange(256, dtype=np.uint16).reshape(16, 16) + 1)
    assert not [p for p in (tmp_path / "a").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert _open_files(tmp_path) == []


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_region_written_in_parts_under_a_umask_without_the_owners_write(tmp_path, layout, monkeypatch):
    """The temporary file is opened again for each part: under a umask that leaves its owner no write bit, the file
    still lets its owner write (root writes anyway, so the mode itself is checked)."""
    import zarrchive.pixels.shards as shards

    data = random_pixels((4, 8, 8))
    create(tmp_path / "a", data.shape, (1, 4, 4), (4, 8, 8), data.dtype, layout)
    appended, modes = shards._append, []

    def append(fd, data):
        modes.append(os.fstat(fd).st_mode)
        appended(fd, data)

    monkeypatch.setattr(shards, "_append", append)
    before = os.umask(0o277)
    try:
        with ArrayWriter.open(str(tmp_path / "a")).region((slice(0, 4), slice(0, 8), slice(0, 8))) as writing:
            for z in range(4):
                writing.add((slice(z, z + 1), slice(0, 8), slice(0, 8)), data[z:z + 1])
            writing.finish()
    finally:
        os.umask(before)
    assert modes and all(mode & 0o200 for mode in modes)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a"), mode="r")[...], data)
