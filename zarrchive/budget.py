"""The budget of one image: what a file may declare before any of its pixels is read.

A file's header says how large its image is; a hostile or broken one can
declare terabytes in a few hundred bytes (a tiled TIFF of 1000 × 100000 ×
100000, an OME-XML with a billion planes), and a reader would then try to
allocate or stream all of it. Every declared size is checked against the
configured limits (``convert.limits``) from the header alone, before a reader
builds anything from it: bytes and planes of one image, pixels of one plane,
series and TIFF pages of one file, and how far the declared bytes exceed the
file's own (a "decompression bomb"). A file over budget is refused with what it
declares and the limit it passes.
"""

from __future__ import annotations

import math
from typing import Any, Iterable
from xml.etree import ElementTree

import numpy as np

from zarrchive.config import ImageBudget
from zarrchive.errors import InputError

OME_BYTES = {"int8": 1, "uint8": 1, "int16": 2, "uint16": 2, "int32": 4, "uint32": 4, "float": 4, "double": 8,
             "complex": 8, "double-complex": 16, "bit": 1}


class OverBudget(InputError):
    """A file declares more than the configured budget of one image allows."""


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def check_shape(shown_as: str, shape: Iterable[int], itemsize: int, budget: ImageBudget, file_bytes: int | None,
                plane_axes: int = 2, what: str = "") -> None:
    """Refuse an image of ``shape`` (its last ``plane_axes`` axes make one plane) of ``itemsize``-byte pixels."""
    shape = [int(n) for n in shape]
    declared = " × ".join(str(n) for n in shape) + (f" {what}" if what else "")
    if any(n < 0 for n in shape):
        raise OverBudget(shown_as, f"declares a negative size ({declared})")
    plane = math.prod(shape[-plane_axes:]) if shape else 0
    planes = math.prod(shape[:-plane_axes]) if len(shape) > plane_axes else 1
    size = plane * planes * itemsize
    over = [
        (plane > budget.max_plane_pixels, f"{plane:,} pixels in one plane, more than convert.limits."
                                          f"max_plane_pixels ({budget.max_plane_pixels:,})"),
        (planes > budget.max_planes, f"{planes:,} planes, more than convert.limits.max_planes "
                                     f"({budget.max_planes:,})"),
        (size > budget.max_bytes, f"{human(size)} in one image, more than convert.limits.max_bytes "
                                  f"({human(budget.max_bytes)})"),
    ]
    if file_bytes is not None and size > budget.expansion_floor and size > budget.max_expansion * max(file_bytes, 1):
        over.append((True, f"{human(size)} from a file of {human(file_bytes)}, {size / max(file_bytes, 1):,.0f} "
                           f"times its size, more than convert.limits.max_expansion ({budget.max_expansion:,.0f})"))
    reasons = [reason for hit, reason in over if hit]
    if reasons:
        raise OverBudget(shown_as, f"declares {declared} pixels: {'; '.join(reasons)}. Refused before any pixel was "
                                   "read (if the image is real, raise the limit in the configuration)")


def check_series_count(shown_as: str, count: int, budget: ImageBudget) -> None:
    if count > budget.max_series:
        raise OverBudget(shown_as, f"declares {count:,} series, more than convert.limits.max_series "
                                   f"({budget.max_series:,})")


def check_tiff(tif: Any, shown_as: str, budget: ImageBudget, file_bytes: int) -> None:
    """A TIFF's declared sizes (``tif``: an open ``tifffile.TiffFile``) from its first page, its OME-XML or ImageJ
    description and its page count, checked before tifffile builds any series from them (building them is where
    a huge declaration allocates)."""
    pages = tif.pages
    try:
        pages._seek(budget.max_ifds)  # walks the IFD chain, never further than the limit
        count = len(pages._offsets)
    except (AttributeError, IndexError):  # a tifffile without these internals: count them all
        count = len(pages)
    if count > budget.max_ifds:
        raise OverBudget(shown_as, f"has more than {budget.max_ifds:,} TIFF pages (IFDs), the limit "
                                   "convert.limits.max_ifds")
    first = pages.first
    check_shape(shown_as, first.shape, first.dtype.itemsize if first.dtype is not None else 1, budget,
                file_bytes, plane_axes=len(first.shape), what="(one page)")
    description = first.description or ""
    if "<OME" in description[:4096]:
        check_ome_xml(description, shown_as, budget, file_bytes)
    elif tif.is_imagej and (ij := tif.imagej_metadata):
        planes = int(ij.get("images") or 1)
        check_shape(shown_as, (planes, *first.shape), first.dtype.itemsize if first.dtype is not None else 1,
                    budget, file_bytes, plane_axes=len(first.shape), what="(ImageJ)")
    elif tif.is_shaped and (shaped := tif.shaped_metadata):
        for meta in shaped:
            shape = meta.get("shape") or ()
            check_shape(shown_as, shape, first.dtype.itemsize if first.dtype is not None else 1, budget,
                        file_bytes, plane_axes=min(2, len(shape)), what="(tifffile shape)")


def check_ome_xml(xml: str, shown_as: str, budget: ImageBudget, file_bytes: int | None) -> None:
    """Every image an OME-XML document declares (its Pixels sizes and type), and how many there are."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise InputError(shown_as, f"damaged OME-XML: {exc}") from None
    images = [e for e in root if e.tag.rsplit("}", 1)[-1] == "Image"]
    check_series_count(shown_as, len(images), budget)
    for image in images:
        pixels = next((e for e in image if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
        if pixels is None:
            continue
        try:
            sizes = [int(pixels.get(f"Size{axis}", "1")) for axis in "TCZYX"]
        except ValueError as exc:
            raise InputError(shown_as, f"damaged OME-XML: a size is not a number ({exc})") from None
        samples = _samples(pixels)
        check_shape(shown_as, sizes, OME_BYTES.get(pixels.get("Type", "uint8"), 8) * samples, budget, file_bytes,
                    what=f"({pixels.get('Type', '?')}, OME-XML)")


def _samples(pixels: Any) -> int:
    channels = [e for e in pixels if e.tag.rsplit("}", 1)[-1] == "Channel"]
    values = [int(c.get("SamplesPerPixel", "1")) for c in channels if (c.get("SamplesPerPixel") or "1").isdigit()]
    return max(1, max(values, default=1))


def check_zarr_level(array_meta: dict[str, Any], shown_as: str, budget: ImageBudget, file_bytes: int | None) -> None:
    """An OME-Zarr input's level-0 array, from its metadata document alone."""
    shape = array_meta.get("shape") or ()
    dtype = array_meta.get("data_type") or array_meta.get("dtype") or "uint8"
    try:
        itemsize = np.dtype(dtype if isinstance(dtype, str) else "uint8").itemsize
    except TypeError:
        itemsize = 8
    check_shape(shown_as, shape, itemsize, budget, file_bytes, plane_axes=min(2, len(shape)), what=f"({dtype})")
