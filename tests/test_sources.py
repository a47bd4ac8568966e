"""Sources: regions of TIFF series read straight from the file (a contiguous run; strips and tiles decoded in the
calling thread) equal tifffile's pixels."""

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


def test_a_multi_file_set_is_not_read_as_one_contiguous_run(tmp_path):
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


def _zarr_view(series):
    import zarr

    return zarr.open_array(series.aszarr(level=0), mode="r")


def _same_as_the_zarr_view(path, rng, regions=30):
    """Every region ``TiffSegments`` reads of the file's first series is what tifffile's Zarr view reads."""
    from zarrchive.pixels.segments import TiffSegments

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        segments = TiffSegments.of(series)
        assert segments is not None, f"{path}: left to the Zarr view"
        view = _zarr_view(series)
        for index in [tuple(slice(None) for _ in series.shape)] + [_region(rng, series.shape) for _ in range(regions)]:
            got, expected = segments[index], view[index]
            assert (got.shape, got.dtype) == (expected.shape, expected.dtype), index
            np.testing.assert_array_equal(got, expected, err_msg=str(index))


_RNG = np.random.default_rng(7)
_GRAY = _RNG.integers(1, 4000, (5, 77, 93)).astype(np.uint16)
_RGB = _RNG.integers(0, 255, (3, 70, 90, 3)).astype(np.uint8)
_LAYOUTS = {  # every kind of strip and tile tifffile writes: compressions, predictors, samples, depths, bit depths
    "tiles, deflate": (_GRAY, {"tile": (32, 48), "compression": "zlib"}),
    "strips, deflate": (_GRAY, {"rowsperstrip": 10, "compression": "zlib"}),
    "tiles, uncompressed": (_GRAY, {"tile": (32, 16)}),
    "tiles, LZW, horizontal predictor": (_GRAY, {"tile": (16, 16), "compression": "lzw", "predictor": True}),
    "tiles, zstd, big-endian": (_GRAY, {"tile": (32, 32), "compression": "zstd", "byteorder": ">"}),
    "strips, PackBits": ((_GRAY > 2000).astype(np.uint8), {"rowsperstrip": 7, "compression": "packbits"}),
    "strips, LZMA, one row each": (_GRAY.astype(np.int16), {"rowsperstrip": 1, "compression": "lzma"}),
    "float32, floating-point predictor": (_RNG.random((3, 50, 60)).astype(np.float32),
                                          {"tile": (16, 32), "compression": "zlib", "predictor": 3,
                                           "photometric": "minisblack", "planarconfig": "contig"}),
    "float64 strips, floating-point predictor": (_RNG.random((2, 20, 30)), {"rowsperstrip": 4, "compression": "zlib",
                                                                            "predictor": 3}),
    "uint32 tiles, horizontal predictor": (_RNG.integers(0, 2**31, (2, 40, 50)).astype(np.uint32),
                                           {"tile": (16, 16), "compression": "zlib", "predictor": True}),
    "RGB, contiguous samples": (_RGB, {"tile": (32, 32), "compression": "zlib", "photometric": "rgb"}),
    "RGB, separate sample planes": (_RGB.transpose(0, 3, 1, 2).copy(),
                                    {"tile": (32, 32), "compression": "zlib", "photometric": "rgb",
                                     "planarconfig": "separate"}),
    "RGB, JPEG tiles": (_RGB, {"tile": (32, 32), "compression": "jpeg", "photometric": "rgb"}),
    "RGB, JPEG strips": (_RGB, {"rowsperstrip": 16, "compression": "jpeg", "photometric": "rgb"}),
    "YCbCr, JPEG, chroma subsampled": (_RGB, {"tile": (32, 32), "compression": "jpeg", "photometric": "ycbcr",
                                              "subsampling": (2, 2)}),
    "1-bit, strips": (_GRAY > 2000, {}),
    "1-bit, tiles": (_GRAY > 2000, {"tile": (16, 16)}),
    "volumetric tiles": (_RNG.integers(0, 999, (20, 40, 50)).astype(np.uint16),
                         {"tile": (8, 16, 16), "compression": "zlib", "volumetric": True}),
    "ImageJ hyperstack": (_RNG.integers(0, 999, (2, 3, 2, 40, 50)).astype(np.uint16),
                          {"imagej": True, "metadata": {"axes": "TZCYX"}, "compression": "zlib"}),
    "OME-TIFF, tiled": (_RNG.integers(0, 999, (2, 3, 2, 40, 50)).astype(np.uint16),
                        {"metadata": {"axes": "TCZYX"}, "tile": (16, 32), "compression": "zlib"}),
    "one plane, odd strips": (_GRAY[:1].astype(np.int16), {"compression": "zlib", "rowsperstrip": 3}),
}


@pytest.mark.parametrize("kind", list(_LAYOUTS))
def test_a_series_strips_and_tiles_read_in_the_calling_thread_are_tifffile_s_pixels(tmp_path, kind):
    """Every region of a series read segment by segment (``TiffSegments``) equals what tifffile's Zarr view
    reads of it: shape, dtype and pixels, for every layout of strips and tiles tifffile writes."""
    data, options = _LAYOUTS[kind]
    path = tmp_path / "t.ome.tif" if kind.startswith("OME") else tmp_path / "t.tif"
    tifffile.imwrite(path, data, **options)
    _same_as_the_zarr_view(path, np.random.default_rng(len(kind)))


@pytest.mark.parametrize("kind", ["grey", "RGB as YCbCr", "RGB labelled RGB"])
def test_jpeg_tiles_sharing_one_table_as_slide_scanners_write_them_are_read_as_tifffile_reads_them(tmp_path, kind):
    """Aperio scanners write an SVS slide as JPEG tiles sharing one JPEGTables tag, each tile an abbreviated
    stream without tables. Read segment by segment, every region is what tifffile's Zarr view reads, and the pixels
    are the source's within JPEG's error: grey pages, RGB stored as YCbCr, and RGB tiles labelled RGB (Aperio's)."""
    from builders import jpeg_tables_tiff

    from zarrchive.pixels.segments import TiffSegments

    yy, xx = np.mgrid[0:150, 0:200]
    if kind == "grey":
        planes = np.stack([((yy + xx * k) % 256).astype(np.uint8) for k in (1, 2, 3)])
    else:
        smooth = np.stack([(yy * 1.5) % 256, (xx * 1.2) % 256, ((yy + xx) * 0.6) % 256], -1).astype(np.uint8)
        planes = np.stack([smooth, smooth[::-1]])
    path = jpeg_tables_tiff(tmp_path / "slide.tif", planes, photometric="minisblack" if kind == "grey" else "rgb",
                            labelled=2 if kind == "RGB labelled RGB" else None)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.jpegtables is not None and page.compression == 7
        tif.filehandle.seek(page.dataoffsets[0])
        assert b"\xff\xdb" not in tif.filehandle.read(page.databytecounts[0])  # no tables of its own
        whole = TiffSegments.of(tif.series[0])[tuple(slice(None) for _ in planes.shape)]
    _same_as_the_zarr_view(path, np.random.default_rng(3))
    assert whole.shape == planes.shape and np.abs(whole.astype(int) - planes).mean() < 2


@st.composite
def segmented_series(draw):
    planes = draw(st.integers(1, 4))
    shape = (planes, draw(st.integers(2, 70)), draw(st.integers(2, 70)))  # one pixel wide: see the next test
    dtype = draw(st.sampled_from(["u1", "u2", "i2", "u4", "f4"]))
    compression = draw(st.sampled_from([None, "zlib", "lzw", "zstd", "packbits"]))
    cut = (draw(st.sampled_from([16, 32, 48])), draw(st.sampled_from([16, 32])))
    layout = {"tile": cut} if draw(st.booleans()) else {"rowsperstrip": draw(st.integers(1, 80))}
    predictor = draw(st.booleans()) and compression in ("zlib", "lzw", "zstd") and dtype != "f4"
    return shape, dtype, compression, layout, predictor, draw(st.sampled_from(["<", ">"])), draw(st.integers(0, 99))


@given(segmented_series())
@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_strip_or_tile_layout_is_read_as_tifffile_reads_it(tmp_path, case):
    shape, dtype, compression, layout, predictor, byteorder, seed = case
    rng = np.random.default_rng(seed)
    data = (rng.random(shape) * 250).astype(dtype)
    path = tmp_path / f"{seed}.tif"
    tifffile.imwrite(path, data, compression=compression, predictor=predictor or None, byteorder=byteorder,
                     photometric="minisblack", **layout)
    with tifffile.TiffFile(path) as tif:
        if tif.series[0].dataoffset is not None:
            return  # one contiguous run (uncompressed strips): read_contiguous reads it
    _same_as_the_zarr_view(path, rng, regions=6)


@pytest.mark.parametrize("kind", ["TileByteCounts", "StripByteCounts"])
def test_a_missing_strip_or_tile_is_the_page_s_fill_as_tifffile_reads_it(tmp_path, kind):
    """A sparse segment (its byte count 0) reads as the page's no-data value (GDAL's tag: 7 here, not a zero
    that fresh memory might hold anyway), as tifffile reads it."""
    path = tmp_path / "sparse.tif"
    cut = {"tile": (32, 32)} if kind == "TileByteCounts" else {"rowsperstrip": 10}
    tifffile.imwrite(path, _GRAY, compression="zlib", photometric="minisblack",
                     extratags=[(42113, "s", 0, "7", True)], **cut)
    with tifffile.TiffFile(path, mode="r+b") as tif:
        for page in (0, 3):
            counts = list(tif.pages[page].tags[kind].value)
            counts[1] = counts[-1] = 0
            tif.pages[page].tags[kind].overwrite(counts)
    _same_as_the_zarr_view(path, np.random.default_rng(3))
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].nodata == 7 and (_zarr_view(tif.series[0])[0] == 7).sum() >= 32 * 3


def test_a_multi_file_set_is_read_page_by_page_from_each_file_and_a_missing_member_is_the_fill(tmp_path):
    from builders import ome_tiff_file_set, random_image

    from zarrchive.pixels.segments import TiffSegments

    data = random_image((4, 16, 16))
    first, second = ome_tiff_file_set(tmp_path / "set", data, ["a.ome.tif", "b.ome.tif"])
    with tifffile.TiffFile(first) as tif:
        segments = TiffSegments.of(tif.series[0])
        np.testing.assert_array_equal(segments[(slice(0, 4), slice(0, 16), slice(0, 16))], data)
    second.unlink()
    with tifffile.TiffFile(first) as tif:
        series = tif.series[0]
        got = TiffSegments.of(series)[(slice(1, 4), slice(2, 16), slice(0, 9))]
        np.testing.assert_array_equal(got, _zarr_view(series)[1:4, 2:16, 0:9])
        np.testing.assert_array_equal(got[0], data[1, 2:16, 0:9])


def _set_of_two(folder, first_options, second_options, data):
    """A multi-file OME-TIFF set of ``data``'s two planes, one a file, each written with its own options."""
    import uuid

    names, ids = ["a.ome.tif", "b.ome.tif"], [f"urn:uuid:{uuid.uuid4()}" for _ in range(2)]
    tiff_data = "".join(f'<TiffData FirstZ="{i}" IFD="0" PlaneCount="1"><UUID FileName="{n}">{u}</UUID></TiffData>'
                        for i, (n, u) in enumerate(zip(names, ids)))
    folder.mkdir()
    for i, (name, own, options) in enumerate(zip(names, ids, (first_options, second_options))):
        xml = ('<?xml version="1.0" encoding="UTF-8"?>'
               f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="{own}"><Image ID="Image:0">'
               f'<Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16" SizeX="{data.shape[2]}" '
               f'SizeY="{data.shape[1]}" SizeZ="2" SizeC="1" SizeT="1"><Channel ID="Channel:0:0" SamplesPerPixel="1"/>'
               f'{tiff_data}</Pixels></Image></OME>')
        plane = data[i:i + 1].astype(options.pop("dtype", data.dtype))
        tifffile.imwrite(folder / name, plane, description=xml, metadata=None, photometric="minisblack", **options)
    return folder / names[0]


def test_the_files_of_a_set_may_cut_their_pages_differently_but_not_hold_other_pixels(tmp_path):
    """A multi-file set whose members were written with strips of other heights, or tiles, is read right (each
    page by its own key frame); a member holding another pixel type is refused naming the file (tifffile's Zarr
    view fails on both)."""
    from zarrchive.pixels.segments import TiffSegments

    data = np.random.default_rng(5).integers(1, 60000, (2, 40, 56)).astype(np.uint16)
    cuts = _set_of_two(tmp_path / "cuts", {"compression": "zlib", "rowsperstrip": 16},
                       {"compression": "lzw", "tile": (16, 32)}, data)
    with tifffile.TiffFile(cuts) as tif:
        segments = TiffSegments.of(tif.series[0])
        np.testing.assert_array_equal(segments[(slice(0, 2), slice(0, 40), slice(0, 56))], data)
        np.testing.assert_array_equal(segments[(1, slice(9, 31), slice(5, 50))], data[1, 9:31, 5:50])
    other = _set_of_two(tmp_path / "other", {"compression": "zlib"}, {"compression": "zlib", "dtype": np.uint8},
                        data)
    with tifffile.TiffFile(other) as tif:
        segments = TiffSegments.of(tif.series[0])
        np.testing.assert_array_equal(segments[(0, slice(0, 40), slice(0, 56))], data[0])
        with pytest.raises(ValueError, match=r"b\.ome\.tif: page 1 of the series holds .* uint8 pixels"):
            segments[(1, slice(0, 40), slice(0, 56))]


@pytest.mark.parametrize("index, why", [
    ((0, slice(0, 40, 2), slice(None)), "slices of step 1"), ((0, 77, slice(None)), "outside an axis of 77"),
    ((5, slice(None), slice(None)), "outside an axis of 5"), ((0, slice(None), slice(None), 0), "4 indices"),
    ((0, slice(9, 3), slice(None)), "empty or reversed"), ((0, slice(None)), "2 indices")])
def test_an_index_the_segments_cannot_read_is_refused(tmp_path, index, why):
    from zarrchive.pixels.segments import TiffSegments

    path = tmp_path / "t.tif"
    tifffile.imwrite(path, _GRAY, tile=(32, 32), compression="zlib", photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        segments = TiffSegments.of(tif.series[0])
        with pytest.raises(IndexError, match=why):
            segments[index]
        np.testing.assert_array_equal(segments[(-1, -77, slice(-10, None))], _GRAY[-1, -77, -10:])  # from the end


def test_a_strip_or_tile_past_the_file_s_end_is_named(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, _GRAY, tile=(32, 32), compression="zlib", photometric="minisblack")
    with tifffile.TiffFile(path, mode="r+b") as tif:
        counts = list(tif.pages[4].tags["TileByteCounts"].value)
        counts[-1] = 65000  # the last tile claims bytes the file does not have
        tif.pages[4].tags["TileByteCounts"].overwrite(counts)
    from zarrchive.pixels.segments import TiffSegments

    with tifffile.TiffFile(path) as tif:
        segments = TiffSegments.of(tif.series[0])
        with pytest.raises(Truncated, match="cut.tif: ends at byte"):  # bad input, never retried
            segments[(4, slice(0, 77), slice(0, 93))]
        np.testing.assert_array_equal(segments[(4, slice(0, 32), slice(0, 32))], _GRAY[4, :32, :32])


@pytest.mark.parametrize("compression", [None, "zlib", "lzw", "zstd"])
def test_a_tiled_tiff_is_read_segment_by_segment_from_several_threads_at_once(tmp_path, compression):
    """A tiled TIFF's regions are read by ``TiffSegments`` (no event loop, no shared file position), and
    regions read from four threads at once are tifffile's pixels."""
    from concurrent.futures import ThreadPoolExecutor

    from zarrchive.pixels.segments import TiffSegments
    from zarrchive.pixels.sources import _tiff_array

    data = np.random.default_rng(2).integers(0, 4000, (6, 96, 80)).astype(np.uint16)
    path = tmp_path / "t.tif"
    tifffile.imwrite(path, data, tile=(32, 32), compression=compression)
    _tiff_array.cache_clear()
    array = _tiff_array(str(path), 0, _version(str(path)))
    assert isinstance(array, TiffSegments)
    regions = [(slice(z, z + 2), slice(y, y + 40), slice(x, x + 50)) for z in (0, 3) for y in (0, 45) for x in (0, 29)]
    with ThreadPoolExecutor(4) as pool:
        for region, got in zip(regions * 4, pool.map(lambda r: array[r], regions * 4)):
            np.testing.assert_array_equal(got, data[region])


def test_what_the_segments_cannot_lay_out_is_left_to_the_zarr_view(tmp_path):
    """A contiguous run (``read_contiguous`` reads it), a series with a transform (MD Gel's scaled pixels), and
    one whose shape is not whole pages of its key frame's shape are not read segment by segment."""
    from zarrchive.pixels.segments import TiffSegments

    path = tmp_path / "run.tif"
    tifffile.imwrite(path, _GRAY, contiguous=True, photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].dataoffset is not None and TiffSegments.of(tif.series[0]) is None
    tifffile.imwrite(path, _GRAY, tile=(32, 32), compression="zlib", photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        pages = list(tif.pages)
        assert TiffSegments.of(tif.series[0]) is not None
        scaled = tifffile.TiffPageSeries(pages[:1], (77, 93), np.float32, "YX", transform=lambda a: a * 2.0)
        assert TiffSegments.of(scaled) is None
        flat = tifffile.TiffPageSeries(pages, (5, 77 * 93), np.uint16, "QX")
        assert TiffSegments.of(flat) is None
    tifffile.imwrite(path, np.arange(6, dtype=np.uint8).reshape(3, 2, 1), tile=(16, 16), photometric="minisblack")
    with tifffile.TiffFile(path) as tif:  # one pixel wide: tifffile's pages are (1, 2), its series (3, 2, 1)
        assert TiffSegments.of(tif.series[0]) is None
        np.testing.assert_array_equal(_zarr_view(tif.series[0])[:], np.arange(6).reshape(3, 2, 1))
