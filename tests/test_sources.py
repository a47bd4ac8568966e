"""Sources: regions of uncompressed, contiguous TIFF series read straight from the file equal tifffile's pixels."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from zarrchive.errors import Truncated
from zarrchive.pixels.sources import _tiff_raw, _version, forget_open_files, read_contiguous


@st.composite
def stored_regions(draw):
    ndim = draw(st.integers(2, 5))
    shape = tuple(draw(st.integers(1, 6)) for _ in range(ndim - 2)) + (draw(st.integers(2, 33)),
                                                                       draw(st.integers(2, 33)))
    dtype = np.dtype(draw(st.sampled_from(["u1", "u2", "i2", "u4", "f4", "f8"])))
    byteorder = draw(st.sampled_from(["<", ">"]))
    return shape, dtype, byteorder, draw(st.integers(0, 2**32 - 1))


def _region(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[int | slice, ...]:
    index: list[int | slice] = []
    for n in shape:
        if rng.random() < 0.3:
            index.append(int(rng.integers(n)))
        else:
            start = int(rng.integers(n))
            index.append(slice(start, int(rng.integers(start + 1, n + 1))))
    return tuple(index)


@given(stored_regions())
@hsettings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_regions_read_from_the_file_are_tifffiles_pixels(tmp_path, case):
    shape, dtype, byteorder, seed = case
    rng = np.random.default_rng(seed)
    data = (rng.random(shape) * 250).astype(dtype)
    path = str(tmp_path / f"{seed}.tif")
    tifffile.imwrite(path, data, byteorder=byteorder, contiguous=True)
    forget_open_files()
    raw = _tiff_raw(path, 0, _version(path))
    assert raw is not None, "an uncompressed contiguous series is read from the file directly"
    whole = tifffile.imread(path).reshape(raw[1])
    for _ in range(4):
        index = _region(rng, raw[1])
        got = read_contiguous(path, *raw, index)
        expected = whole[index]
        assert got.dtype == expected.dtype.newbyteorder("=") and got.dtype.isnative
        assert got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


def test_compressed_series_are_left_to_the_zarr_view(tmp_path):
    path = str(tmp_path / "zlib.tif")
    tifffile.imwrite(path, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64), compression="zlib")
    assert _tiff_raw(path, 0, _version(path)) is None


def test_a_truncated_file_is_named(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.ones((4, 64, 64), dtype=np.uint16), contiguous=True)
    raw = _tiff_raw(str(path), 0, _version(str(path)))
    path.write_bytes(path.read_bytes()[: raw[0] + 3 * 64 * 64 * 2 + 100])  # the fourth plane is cut
    with pytest.raises(Truncated, match="cut.tif: ends at byte"):  # bad input (an InputError), never retried
        read_contiguous(str(path), *raw, (slice(0, 4), slice(0, 64), slice(0, 64)))
    np.testing.assert_array_equal(read_contiguous(str(path), *raw, (1, slice(0, 64), slice(0, 64))), 1)


def test_a_multi_file_set_is_left_to_the_zarr_view(tmp_path):
    from builders import ome_tiff_file_set, random_image

    first, _second = ome_tiff_file_set(tmp_path / "set", random_image((4, 16, 16)), ["a.ome.tif", "b.ome.tif"])
    assert _tiff_raw(str(first), 0, _version(str(first))) is None  # its pages' offsets are in two files


def test_a_plugin_s_reader_is_read_from_one_thread_at_a_time_and_other_files_meanwhile(tmp_path, monkeypatch):
    import threading
    import time

    from zarrchive.pixels import sources
    from zarrchive.records import SourceLayout

    inside: dict[str, int] = {}
    most: dict[str, int] = {}
    guard = threading.Lock()

    class Watched:  # a cached reader's array that notes how many threads read it at once
        def __init__(self, path):
            self.path = path
            self.shape = (4, 8, 8)

        def __getitem__(self, index):
            with guard:
                inside[self.path] = inside.get(self.path, 0) + 1
                most[self.path] = max(most.get(self.path, 0), inside[self.path])
                most["all"] = max(most.get("all", 0), sum(inside.values()))
            time.sleep(0.1)
            with guard:
                inside[self.path] -= 1
            return np.zeros((4, 8, 8), np.uint16)[index]

    monkeypatch.setattr(sources, "_native_array", lambda path, *_: Watched(path))
    monkeypatch.setattr(sources, "_version", lambda path: (0, 0))
    layout = SourceLayout(reader="zarrchive_mrc", series=0, axes=("z", "y", "x"), stored_axes="zyx")
    stripes = {}
    for n in range(200):  # two files whose readers have locks of their own
        stripes.setdefault(sources._one_reader_at_a_time(f"f{n}.mrc", layout), f"f{n}.mrc")
    one, other = list(stripes.values())[:2]
    region = (slice(0, 4), slice(0, 8), slice(0, 8))
    threads = [threading.Thread(target=sources.read_region, args=(path, layout, region))
               for path in (one, one, one, other, other, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == {one: 1, other: 1, "all": 2}  # never two threads in one reader; the two files side by side


@pytest.mark.parametrize("compression", [None, "zlib", "lzw", "zstd"])
def test_a_compressed_tiff_s_tiles_are_decoded_in_threads_and_read_back_exactly(tmp_path, compression):
    """tifffile's Zarr view decodes a compressed tile in a thread of its own (not in zarr's one event loop, which
    every thread of a process reads through); an uncompressed one, only copied, without the hop. The pixels of any
    region, read from several threads at once, are tifffile's."""
    from concurrent.futures import ThreadPoolExecutor

    from zarrchive.pixels.sources import _tiff_array

    data = np.random.default_rng(2).integers(0, 4000, (6, 96, 80)).astype(np.uint16)
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, data, tile=(32, 32), compression=compression)
    _tiff_array.cache_clear()
    array = _tiff_array(str(path), 0, _version(str(path)))
    assert array.store._maxworkers == (1 if compression is None else 2)
    regions = [(slice(z, z + 2), slice(y, y + 40), slice(x, x + 50)) for z in (0, 3) for y in (0, 45) for x in (0, 29)]
    with ThreadPoolExecutor(4) as pool:
        for region, got in zip(regions, pool.map(lambda r: array[r], regions)):
            np.testing.assert_array_equal(got, data[region])
