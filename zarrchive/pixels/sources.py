"""Sources: the pixels of one series of a staged file, read region by region in the image's NGFF axes.

Convert describes a series (``SourceLayout``, given by its format in
``zarrchive.formats``: the reader, the series, how the file's own axes map
onto the image's t, c, z, y, x); the compress pass reads
the regions it writes with ``read_region`` on a Dask worker, so pixels flow
from the source file straight into the compressed store.

TIFF-based files (OME-TIFF and TIFF) are read strip by strip or tile by tile
(``segments.TiffSegments``: only the segments a region touches, decoded by
tifffile in the calling thread), and OME-Zarr inputs through zarr, their
level-0 array: only the pages, strips or chunks of a region are read. A TIFF
series stored uncompressed in one contiguous run of the file (what microscopes
and ImageJ write most) is read straight into the region's buffer instead, a
few large reads at computed offsets: a copy from the page cache. The few TIFF
series neither lays out go through tifffile's Zarr view. Other formats go
through the bioio reader's own lazy array.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from zarrchive.errors import Truncated
from zarrchive.records import SourceLayout

if TYPE_CHECKING:
    import dask.array as da

NGFF_ORDER = "tczyx"


def read_region(path: str, layout: SourceLayout, region: tuple[slice, ...]) -> np.ndarray:
    """The pixels of ``region`` (slices in ``layout.axes``) of the series, as a numpy array (of
    ``layout.dtype`` when the layout stores another type than the file's)."""
    if layout.tiff_axes:  # strips, tiles and contiguous runs are read with pread: no shared file position
        block = _read_tiff(path, layout, region)
    elif layout.stored_axes:  # a format zarrchive reads itself (zarrchive.formats)
        lock = _one_reader_at_a_time(path, layout)
        with lock:
            array = _native_array(path, layout.reader, layout.series, _version(path))
        with contextlib.nullcontext() if getattr(array, "concurrent", False) else lock:  # (threads read at once)
            block = _in_image_axes(array, layout.stored_axes, layout, region)
    elif layout.zarr_array and layout.zarr_axes:
        block = _in_image_axes(_zarr_array(path, layout.zarr_array, _version(path)), layout.zarr_axes, layout,
                               region)
    else:
        with _one_reader_at_a_time(path, layout):
            block = np.asarray(_bioio_array(path, layout, _version(path))[region].compute(scheduler="synchronous"))
    return block.astype(layout.dtype) if layout.dtype else block


def read_unit(path: str, layout: SourceLayout) -> dict[str, int]:
    """How many pixels along each of the image's axes one read of the source decodes at the least: its chunks (a
    Zarr input's, an HDF5 dataset's, a bioio reader's dask chunks, which may hold a whole z-stack). A streaming
    task reads slabs of whole multiples of them (or its whole region), so that it decodes no chunk of the source
    more often than one read of its region would. A TIFF is read page by page, and a memory-mapped file (MRC) as
    it lies: none. An axis left out: 1."""
    if layout.tiff_axes:
        return {}
    try:
        if layout.stored_axes:
            with _one_reader_at_a_time(path, layout):
                array = _native_array(path, layout.reader, layout.series, _version(path))
            axes = layout.stored_axes
        elif layout.zarr_array and layout.zarr_axes:
            array, axes = _zarr_array(path, layout.zarr_array, _version(path)), layout.zarr_axes
        else:
            with _one_reader_at_a_time(path, layout):
                array = _bioio_array(path, layout, _version(path))
            axes = "".join(name for name in NGFF_ORDER if name in layout.axes)
        chunks = getattr(array, "chunks", None) or ()
        return {name: int(max(c)) if isinstance(c, tuple) else int(c)  # dask: every chunk's extent along the axis
                for name, c in zip(axes, chunks) if name in layout.axes}
    except Exception:  # the source cannot be opened (reading it says why, naming the file), or chunks unknown
        return {}


_READER_LOCKS = tuple(threading.Lock() for _ in range(64))  # striped: bounded however many files a worker reads


def _one_reader_at_a_time(path: str, layout: SourceLayout) -> threading.Lock:
    """The lock of one cached reader (a file's series through one plugin): the threads of a worker (or of
    ``zarrchive convert``) share the readers they open, and a plugin's reader is not known to read safely from two
    threads at once (a file handle's position, a decoder's state). Other files are read meanwhile, but for the
    few that share its stripe."""
    return _READER_LOCKS[hash((path, layout.reader, layout.series)) % len(_READER_LOCKS)]


def _read_tiff(path: str, layout: SourceLayout, region: tuple[slice, ...]) -> np.ndarray:
    wanted = dict(zip(layout.axes, region))
    index, kept = [], []
    for letter in layout.tiff_axes or "":
        name = "c" if letter == "S" and layout.samples_as_channels else letter.lower()
        if letter == "C" and layout.samples_as_channels:
            name = "_"  # a singleton channel axis beside the samples
        if name in wanted:
            index.append(wanted[name])
            kept.append(name)
        else:
            index.append(0)  # a singleton axis the image drops (t or z of size 1, …)
    series = layout.series if layout.tiff_series is None else layout.tiff_series
    raw = _tiff_raw(path, series, _version(path))
    block = (read_contiguous(path, *raw, tuple(index)) if raw
             else _tiff_array(path, series, _version(path))[tuple(index)])
    for name in layout.axes:  # an axis the file does not have (one channel): a singleton
        if name not in kept:
            block = block[..., np.newaxis]
            kept.append(name)
    order = [kept.index(name) for name in layout.axes]
    return np.ascontiguousarray(np.transpose(block, order))


def _in_image_axes(array: Any, file_axes: str, layout: SourceLayout, region: tuple[slice, ...]) -> np.ndarray:
    """``region`` (in the image's axes) of an array whose axes are ``file_axes`` (NGFF names): an axis the image
    dropped is read at 0, one the file lacks becomes a singleton."""
    wanted = dict(zip(layout.axes, region))
    block = array[tuple(wanted.get(name, 0) for name in file_axes)]
    kept = [name for name in file_axes if name in wanted]
    for name in layout.axes:
        if name not in kept:
            block = block[..., np.newaxis]
            kept.append(name)
    return np.ascontiguousarray(np.transpose(block, [kept.index(name) for name in layout.axes]))


def _version(path: str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=4)
def _tiff_array(path: str, series: int, _version: tuple[int, int]) -> Any:
    import tifffile
    import zarr

    from zarrchive.pixels.segments import TiffSegments

    found = tifffile.TiffFile(path).series[series]
    if (segments := TiffSegments.of(found)) is not None:
        return segments  # read segment by segment in the calling thread
    # what TiffSegments leaves to tifffile's Zarr view (a transform, a page shape of its own); maxworkers > 1: the
    # view decodes each compressed tile in a thread of its own (asyncio.to_thread), not in zarr's one event loop,
    # which every thread of this process reads through. Uncompressed tiles are only copied: no hop
    compressed = found.keyframe is not None and found.keyframe.compression != 1
    return zarr.open_array(found.aszarr(level=0, maxworkers=2 if compressed else 1), mode="r")


@functools.lru_cache(maxsize=4)
def _tiff_raw(path: str, series: int, _version: tuple[int, int]) -> tuple[int, tuple[int, ...], np.dtype] | None:
    """Where the series' pixels lie in the file when they are stored as they are held in memory (uncompressed,
    no predictor, whole bytes per sample) in one contiguous run: its offset, shape and dtype in the file's byte
    order. None otherwise (compressed, tiled or scattered pages: the Zarr view reads those)."""
    import tifffile

    from zarrchive.formats.ometiff import set_members

    with tifffile.TiffFile(path) as tif:
        series_ = tif.series[series]
        offset = series_.dataoffset
        if offset is None or series_.dtype is None:
            return None
        if set_members(path, tif.ome_metadata):
            return None  # a multi-file OME-TIFF set: some pages, and their offsets, are in the other files
        return offset, tuple(series_.shape), np.dtype(series_.dtype).newbyteorder(tif.byteorder)


def read_contiguous(path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype,
                    index: tuple[int | slice, ...]) -> np.ndarray:
    """``array[index]`` (integers and step-1 slices) of the C-ordered array of ``shape`` and ``dtype`` stored at
    ``offset`` in ``path``, read with as few reads as keep the bytes read within twice those wanted."""
    bounds = [(i, i + 1) if isinstance(i, (int, np.integer)) else i.indices(n)[:2] for i, n in zip(index, shape)]
    if any(b <= a for a, b in bounds):
        raise ValueError(f"empty or reversed region {index} of {shape}")
    wanted = int(np.prod([b - a for a, b in bounds]))
    # axes after ``k`` are read whole, axis k in its bounds, and every combination of the axes before it is one
    # contiguous run of the file; an axis is read whole beyond its bounds when that saves reads cheaply
    k = len(shape) - 1
    while k > 0 and (bounds[k] == (0, shape[k]) or
                     int(np.prod([b - a for a, b in bounds[:k]])) * int(np.prod(shape[k:])) <= 2 * wanted):
        k -= 1
    extent = [b - a for a, b in bounds[:k + 1]] + list(shape[k + 1:])
    buffer = np.empty(extent, dtype=dtype)
    run = int(np.prod(extent[k:])) * dtype.itemsize
    flat = memoryview(buffer.reshape(-1).view(np.uint8))
    strides = np.cumprod((shape[1:] + (1,))[::-1])[::-1] * dtype.itemsize  # bytes per step along each axis
    fd = os.open(path, os.O_RDONLY)
    try:
        for n, outer in enumerate(np.ndindex(*extent[:k])):
            start = offset + sum((a + i) * int(s) for (a, _b), i, s in zip(bounds, outer, strides))
            start += bounds[k][0] * int(strides[k])
            _read_exactly(fd, flat[n * run:(n + 1) * run], start, path)
    finally:
        os.close(fd)
    crop = tuple(slice(None) if i <= k else slice(a, b) for i, (a, b) in enumerate(bounds))
    drop = tuple(0 if isinstance(i, (int, np.integer)) else slice(None) for i in index)
    block = buffer[crop][drop]
    return block.astype(dtype.newbyteorder("="), copy=False) if dtype.byteorder not in "=|" else block


class ContiguousArray:
    """A C-ordered array of ``shape`` and ``dtype`` stored at ``offset`` in ``path``, indexed as a numpy array is
    (integers and step-1 slices), each index read with ``read_contiguous``: nothing is mapped or held, and
    threads read at once (``concurrent``: each read opens the file and reads at offsets)."""

    concurrent = True

    def __init__(self, path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        self.path, self.offset, self.shape, self.dtype = path, offset, shape, np.dtype(dtype)

    def __getitem__(self, index: tuple[int | slice, ...]) -> np.ndarray:
        return read_contiguous(self.path, self.offset, self.shape, self.dtype, tuple(index))


def _read_exactly(fd: int, target: memoryview, offset: int, path: str) -> None:
    done = 0
    while done < len(target):
        got = os.preadv(fd, [target[done:]], offset + done)
        if got == 0:
            raise Truncated(path, f"ends at byte {offset + done:,}, before the pixels it declares end")
        done += got


@functools.lru_cache(maxsize=4)
def _native_array(path: str, reader: str, series: int, _version: tuple[int, int]) -> Any:
    from zarrchive import formats

    return formats.by_name(reader).array(path, series)


@functools.lru_cache(maxsize=4)
def _zarr_array(path: str, array: str, _version: tuple[int, int]) -> Any:
    import zarr

    return zarr.open_array(os.path.join(path, array), mode="r")


@functools.lru_cache(maxsize=4)
def _bioio_array(path: str, layout: SourceLayout, _version: tuple[int, int]) -> da.Array:
    from bioio import BioImage

    from zarrchive.formats.bioio import lazy_pixels

    img = BioImage(path, reader=importlib.import_module(layout.reader).Reader)
    img.set_scene(layout.series)
    data, _names = lazy_pixels(img, path)
    index = tuple(slice(None) if name in layout.axes else 0 for name in NGFF_ORDER)
    return data[index]


def forget_open_files() -> None:
    """Close what this process keeps open (tests and workers call it when files are replaced)."""
    _tiff_array.cache_clear()
    _tiff_raw.cache_clear()
    _zarr_array.cache_clear()
    _native_array.cache_clear()
    _bioio_array.cache_clear()
