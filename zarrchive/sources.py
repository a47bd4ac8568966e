"""Sources: the pixels of one series of a staged file, read region by region in the image's NGFF axes.

Convert describes a series (``SourceLayout``: the reader, the series, how the
file's own axes map onto the image's t, c, z, y, x); the compress pass reads
the regions it writes with ``read_region`` on a Dask worker, so pixels flow
from the source file straight into the compressed store.

TIFF-based files (OME-TIFF and TIFF) are read through tifffile's Zarr view of
the series, and OME-Zarr inputs through zarr, their level-0 array: only the
pages, strips or chunks of a region are read. A TIFF series stored
uncompressed in one contiguous run of the file (what microscopes and ImageJ
write most) is read straight into the region's buffer instead, a few large
reads at computed offsets: a copy from the page cache, about eight times less
work than the Zarr view's per-page path. Other formats go through the bioio
reader's own lazy array.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from zarrchive.errors import InputError
from zarrchive.records import SourceLayout

if TYPE_CHECKING:
    import dask.array as da

NGFF_ORDER = "tczyx"


def lazy_pixels(img: Any, shown_as: str) -> tuple[da.Array, list[str] | None]:
    """Pixels of a BioImage's current scene as a lazy TCZYX array; RGB(A) samples become channels."""
    import dask.array as da

    dims = img.dims
    if "S" in dims.order and dims.S > 1:
        if dims.C > 1:
            raise InputError(shown_as, "images with both channels and colour samples are not supported")
        data = img.get_image_dask_data("TCZYXS")[:, 0]  # T Z Y X S
        return da.moveaxis(data, -1, 1), ["R", "G", "B", "A"][: dims.S]
    return img.get_image_dask_data("TCZYX"), None


def tiff_axes(path: str, img: Any, tiff_series: int | None = None) -> str | None:
    """The file's axes in tifffile's order, named as bioio names them, when tifffile can read the series
    directly: the axes longer than one agree in order, size and letter with the reader's native dims (bioio
    may add or drop singleton axes). None otherwise (the bioio reader then reads the pixels)."""
    import tifffile

    native = img.reader.xarray_dask_data
    dims = [(str(d), int(n)) for d, n in zip(native.dims, native.shape) if int(n) > 1]
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[img.current_scene_index if tiff_series is None else tiff_series]
            t_axes, t_shape = series.axes, tuple(series.levels[0].shape)
    except Exception:
        return None
    if len(dims) != sum(1 for n in t_shape if n > 1) or any(len(d) != 1 for d, _n in dims):
        return None
    named, wide = [], iter(dims)
    for letter, size in zip(t_axes, t_shape):
        if size == 1:
            named.append(letter)  # a singleton: read at index 0 (or as the image's one channel)
            continue
        dim, n = next(wide)
        if n != size or (letter in "TCZYXS" and letter != dim):
            return None
        named.append(dim)
    return "".join(named)


def ome_tiff_set(path: str) -> list[str]:
    """The files of the multi-file OME-TIFF set ``path`` belongs to (names relative to its folder, in the order
    of their planes); [] for a file that holds its own planes, or is no OME-TIFF."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return _set_members(path, tif.ome_metadata)
    except Exception:  # not a TIFF at all
        return []


def _set_members(path: str, xml: str | None) -> list[str]:
    """``ome_tiff_set`` from the file's OME-XML (None: no OME-TIFF)."""
    from xml.etree import ElementTree

    if not xml:
        return []
    names: list[str] = []
    for element in ElementTree.fromstring(xml).iter():
        name = element.get("FileName") if element.tag.rsplit("}", 1)[-1] == "UUID" else None
        if name and name not in names:
            names.append(name)
    return names if any(n != os.path.basename(path) for n in names) else []


def own_images(path: str) -> list[int]:
    """The images (their indices in the file's OME-XML) whose planes all lie in ``path`` itself: every TiffData of
    the image names this file (by UUID FileName) or no file. A screening acquisition writes one file per field,
    each naming the whole plate: submitted alone, such a file holds complete images of its own."""
    import tifffile
    from xml.etree import ElementTree

    with tifffile.TiffFile(path) as tif:
        xml = tif.pages.first.description or ""
    if "<OME" not in xml[:4096]:
        return []
    name = os.path.basename(path)
    own = []
    images = [e for e in ElementTree.fromstring(xml) if e.tag.rsplit("}", 1)[-1] == "Image"]
    for index, image in enumerate(images):
        files = {uuid.get("FileName") or name for element in image.iter()
                 if element.tag.rsplit("}", 1)[-1] == "TiffData"
                 for uuid in ([u for u in element if u.tag.rsplit("}", 1)[-1] == "UUID"] or [element])}
        if files <= {name}:
            own.append(index)
    return own


def zarr_level0(path: str, series: int) -> tuple[str, str] | None:
    """An OME-Zarr input's level-0 array (its path in the store) and that array's axes, for zarr to read regions
    of directly; None when its axes are not NGFF's t, c, z, y, x (bioio's reader then reads the pixels)."""
    from zarrchive.ngff import image_attributes

    try:
        multiscale = image_attributes(path)["multiscales"][series]
        axes = "".join(a["name"].lower() for a in multiscale["axes"])
        array = multiscale["datasets"][0]["path"]
    except (KeyError, IndexError, TypeError):
        return None
    if len(set(axes)) != len(axes) or not set(axes) <= set(NGFF_ORDER) or not {"y", "x"} <= set(axes):
        return None
    return array, axes


def layout_of(path: str, img: Any, reader: str, series: int, axes: tuple[str, ...], samples: bool,
              tiff_series: int | None = None) -> SourceLayout:
    """The layout of the current scene of ``img`` (read from ``path``); ``tiff_series``: tifffile's index of that
    series when it is not the scene's (a file holding only some of the images its OME-XML describes)."""
    level0 = zarr_level0(path, series) if reader == "bioio_ome_zarr" else None
    tiff = reader in ("bioio_ome_tiff", "bioio_tifffile")
    return SourceLayout(reader=reader, series=series, axes=axes, samples_as_channels=samples,
                        tiff_axes=tiff_axes(path, img, tiff_series) if tiff else None,
                        tiff_series=tiff_series if tiff_series != series else None,
                        zarr_array=level0[0] if level0 else None, zarr_axes=level0[1] if level0 else None)


def read_region(path: str, layout: SourceLayout, region: tuple[slice, ...]) -> np.ndarray:
    """The pixels of ``region`` (slices in ``layout.axes``) of the series, as a numpy array (of
    ``layout.dtype`` when the layout stores another type than the file's)."""
    if layout.tiff_axes:
        block = _read_tiff(path, layout, region)
    elif layout.stored_axes:  # a format zarrchive reads itself (zarrchive.formats)
        block = _in_image_axes(_native_array(path, layout.reader, layout.series, _version(path)),
                               layout.stored_axes, layout, region)
    elif layout.zarr_array and layout.zarr_axes:
        block = _in_image_axes(_zarr_array(path, layout.zarr_array, _version(path)), layout.zarr_axes, layout,
                               region)
    else:
        block = np.asarray(_bioio_array(path, layout, _version(path))[region].compute(scheduler="synchronous"))
    return block.astype(layout.dtype) if layout.dtype else block


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

    store = tifffile.TiffFile(path).series[series].aszarr(level=0)
    return zarr.open_array(store, mode="r")


@functools.lru_cache(maxsize=4)
def _tiff_raw(path: str, series: int, _version: tuple[int, int]) -> tuple[int, tuple[int, ...], np.dtype] | None:
    """Where the series' pixels lie in the file when they are stored as they are held in memory (uncompressed,
    no predictor, whole bytes per sample) in one contiguous run: its offset, shape and dtype in the file's byte
    order. None otherwise (compressed, tiled or scattered pages: the Zarr view reads those)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series_ = tif.series[series]
        offset = series_.dataoffset
        if offset is None or series_.dtype is None:
            return None
        if _set_members(path, tif.ome_metadata):
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


def _read_exactly(fd: int, target: memoryview, offset: int, path: str) -> None:
    done = 0
    while done < len(target):
        got = os.preadv(fd, [target[done:]], offset + done)
        if got == 0:
            raise OSError(f"{path} ends at byte {offset + done}, before the pixels it declares end")
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
