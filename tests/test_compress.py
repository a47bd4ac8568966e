"""Compress, without Prefect: lossless codec on the cluster, every chunk verified."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import zarr

from builders import ome_tiff, random_image
from zarrchive.errors import VerificationError
from zarrchive.records import FileRecord
from zarrchive.tasks.compress import chunk_slices, compress_image, encode_verify
from zarrchive.tasks.convert import convert_file
from zarrchive.tasks.pyramid import build_pyramid


def smooth(shape, seed=0):
    """Compressible, microscopy-like content: smooth structure plus mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[-2], 0:shape[-1]]
    base = (np.sin(yy / 9.0) + np.cos(xx / 7.0) + 2) * 800
    return (np.broadcast_to(base, shape) + rng.normal(0, 5, shape)).clip(0, 65535).astype(np.uint16)


@pytest.fixture()
def pyramid_image(tmp_path, settings, scheduler):
    data = smooth((2, 2, 140, 100))
    path = ome_tiff(tmp_path / "x.ome.tif", data, "CZYX", {"x": 0.5, "y": 0.5, "z": 1.0}, ["a", "b"])
    rec = FileRecord(path="x.ome.tif", source_uri=str(path), staged_path=str(path), size=path.stat().st_size,
                     sha256=hashlib.sha256(path.read_bytes()).hexdigest(), kind="image")
    small = settings.convert.model_copy(update={"chunk_xy": 64})
    [image] = convert_file(rec, None, str(tmp_path / "s"), small, scheduler)
    return build_pyramid(image, settings.pyramid, scheduler), data


@pytest.mark.parametrize("codec", [{"codec": "blosc", "cname": "zstd", "clevel": 5, "shuffle": "shuffle"},
                                   {"codec": "blosc", "cname": "lz4", "clevel": 3, "shuffle": "bitshuffle"},
                                   {"codec": "zstd", "clevel": 3}])
def test_compressed_store_decodes_to_the_source_exactly(pyramid_image, tmp_path, settings, scheduler, codec):
    image, data = pyramid_image
    cfg = settings.compress.model_copy(update=codec)
    report = compress_image(image, str(tmp_path / "s"), cfg, scheduler)
    for level in image.levels:
        src = zarr.open_array(f"{image.store}/{level.path}", mode="r")[...]
        out = zarr.open_array(f"{report.store}/{level.path}", mode="r")
        np.testing.assert_array_equal(out[...], src)
        assert out.compressors[0].to_dict()["name"] == codec["codec"]
    np.testing.assert_array_equal(zarr.open_array(f"{report.store}/0", mode="r")[...], data)
    assert report.chunks_verified == sum(len(chunk_slices(l.shape, l.chunks)) for l in image.levels)
    assert report.ratio > 1.05 and report.bytes_out < report.bytes_in
    digests = "".join(hashlib.sha256(np.ascontiguousarray(data[r]).tobytes()).hexdigest()
                      for r in chunk_slices(image.levels[0].shape, image.levels[0].chunks))
    assert report.level0_sha256 == hashlib.sha256(digests.encode()).hexdigest()
    assert zarr.open_group(report.store, mode="r").attrs["ome"]["multiscales"][0]["name"] == image.image_id


def test_store_digest_changes_when_any_byte_does(pyramid_image, tmp_path, settings, scheduler):
    image, _ = pyramid_image
    first = compress_image(image, str(tmp_path / "a"), settings.compress, scheduler)
    again = compress_image(image, str(tmp_path / "b"), settings.compress, scheduler)
    assert first.store_sha256 == again.store_sha256
    chunk = next(p for p in (tmp_path / "b").rglob("c/*/*/*/*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:-1] + b"\0")
    from zarrchive.tasks.compress import store_digest
    assert store_digest(again.store)[1] != first.store_sha256


def test_a_lossy_write_is_caught(tmp_path):
    src = zarr.create_array(str(tmp_path / "src"), shape=(4, 4), chunks=(2, 2), dtype="uint16", zarr_format=3)
    src[...] = np.arange(16, dtype=np.uint16).reshape(4, 4) * 1000
    zarr.create_array(str(tmp_path / "dst"), shape=(4, 4), chunks=(2, 2), dtype="uint8", zarr_format=3)
    with pytest.raises(VerificationError, match="differ"):
        encode_verify(str(tmp_path / "src"), str(tmp_path / "dst"), chunk_slices((4, 4), (2, 2)), (2, 2))


from hypothesis import given, settings as hsettings, strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

DTYPES = ["bool", "uint8", "uint16", "uint32", "int8", "int16", "int32", "float32", "float64"]


@st.composite
def arrays_and_chunks(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(1, 40)))
    chunks = tuple(draw(st.integers(1, n)) for n in shape)
    data = draw(arrays(dtype, shape))  # NaN and infinities included: equality is checked on the bytes
    return data, chunks


@given(arrays_and_chunks(), st.sampled_from(["blosc-shuffle", "blosc-bitshuffle", "zstd"]))
@hsettings(max_examples=40, deadline=None)
def test_encode_verify_round_trips_any_array_losslessly(tmp_path_factory, case, codec_name):
    from zarrchive.config import CompressSettings
    from zarrchive.tasks.compress import make_codec

    data, chunks = case
    codec, _, shuffle = codec_name.partition("-")
    cfg = CompressSettings(codec=codec, clevel=3, shuffle=shuffle or "shuffle")
    root = tmp_path_factory.mktemp("rt")
    src = zarr.create_array(str(root / "src"), shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=3,
                            compressors=None)
    src[...] = data
    zarr.create_array(str(root / "dst"), shape=data.shape, chunks=chunks, dtype=data.dtype, zarr_format=3,
                      compressors=[make_codec(cfg)])
    regions = chunk_slices(data.shape, chunks)
    digests = encode_verify(str(root / "src"), str(root / "dst"), regions, chunks)
    assert [start for start, _ in digests] == [tuple(s.start for s in r) for r in regions]
    np.testing.assert_array_equal(zarr.open_array(str(root / "dst"), mode="r")[...], data)


def test_output_is_sharded_and_each_chunk_still_verified(pyramid_image, tmp_path, settings, scheduler):
    image, data = pyramid_image  # level 0: (2, 2, 140, 100) in chunks of (1, 1, 64, 64)
    cfg = settings.compress.model_copy(update={"shard_xy": 128, "shard_z": 2})
    report = compress_image(image, str(tmp_path / "s"), cfg, scheduler)
    out = zarr.open_array(f"{report.store}/0", mode="r")
    assert out.shards == (1, 2, 128, 128) and out.chunks == (1, 1, 64, 64)
    np.testing.assert_array_equal(out[...], data)
    stored = [p for p in Path(report.store, "0").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(stored) == 2 * 1 * 2 * 1  # c x z-shards x y-shards x x-shards, instead of 2 x 2 x 3 x 2 chunks
    unsharded = compress_image(image, str(tmp_path / "u"), cfg.model_copy(update={"shard_xy": 0}), scheduler)
    assert report.level0_sha256 == unsharded.level0_sha256  # the same pixels, digested chunk by chunk
    assert report.chunks_verified == unsharded.chunks_verified


def test_shard_shapes_are_whole_chunks_within_the_level(settings):
    from zarrchive.tasks.compress import shard_shape

    cfg = settings.compress.model_copy(update={"shard_xy": 1000, "shard_z": 3})
    assert shard_shape(["c", "z", "y", "x"], (2, 10, 5000, 300), (1, 1, 256, 256), cfg) == (1, 3, 1024, 512)
    assert shard_shape(["y", "x"], (100, 100), (64, 64), cfg) == (128, 128)
    assert shard_shape(["y", "x"], (100, 100), (64, 64), cfg.model_copy(update={"shard_xy": 0})) is None
