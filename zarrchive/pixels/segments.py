"""A TIFF series read strip by strip or tile by tile, straight from its file, in the calling thread.

tifffile's Zarr view (``series.aszarr``) reads a region of a tiled or stripped series through zarr: every
segment is one chunk, fetched by zarr's event loop, decoded (in a thread of its own, or in that loop), handed
back as a buffer and copied into the region. ``TiffSegments`` does what that view does for a region, without
the loop: it reads the bytes of the segments the region touches (``os.pread``, no shared file position, so no
lock), decodes each with tifffile's own decoder for the page (``TiffPage.decode``: every compression, predictor,
fill order and bit depth tifffile reads), and copies the part inside the region straight into the region's
buffer. The threads of a worker decode side by side, and reading a deflate TIFF costs about a fifth less CPU.

It reads the series the view would describe, in the same axes, with the same fill (the page's no-data value)
where a page or a segment is missing. The series it cannot lay out that way (a transform, a contiguous run, a
shape that is not whole pages of the key frame's shape) are left to the view: ``TiffSegments.of`` gives None.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from zarrchive.errors import Truncated
from zarrchive.pixels.blocks import index_bounds


@dataclass(frozen=True)
class TiffSegments:
    """How one series lies in its file: the pages (``frames``, C order) and, inside a page, the key frame's
    normalized shape (``shaped``: separate samples, depth, length, width, contiguous samples) and segment shape."""

    series: Any  # tifffile.TiffPageSeries
    lock: threading.RLock  # the file handle's: loading a page object seeks the shared handle
    frames: tuple[int, ...]  # the series' leading axes, one page per index
    page_axes: tuple[int, ...]  # for each axis of a page (the key frame's shape), its axis in ``shaped``
    shaped: tuple[int, int, int, int, int]
    key: Any  # the series' key frame; ``segment`` and ``tiled`` are its
    segment: tuple[int, int, int, int]  # depth, length, width, contiguous samples of one strip or tile
    tiled: bool
    dtype: np.dtype
    nodata: Any

    @classmethod
    def of(cls, series: Any) -> TiffSegments | None:
        """The layout of ``series`` (level 0), or None when tifffile's Zarr view must read it."""
        key = series.keyframe
        if (key is None or key.dtype is None or series.dtype is None or series.transform is not None
                or series.dataoffset is not None or series.levels[0] is not series):
            return None
        page_shape, shape = tuple(key.shape), tuple(series.shape)
        n = len(page_shape)
        frames = shape[:len(shape) - n]
        if shape[len(shape) - n:] != page_shape or math.prod(frames) != len(series):
            return None
        page_axes = _aligned(page_shape, tuple(key.shaped))
        if page_axes is None:
            return None
        segment = _segment(key)
        handle = key.parent.filehandle
        if min(segment) < 1 or not os.path.isfile(handle.path):  # (a file inside another is opened by its name)
            return None
        key.decode  # noqa: B018 - tifffile makes the page's decoder once, here, not in two threads at once
        handle.set_lock(True)
        return cls(series, handle.lock, frames, page_axes, tuple(key.shaped), key, segment, bool(key.is_tiled),
                   np.dtype(series.dtype), key.nodata)

    def __getitem__(self, index: tuple[int | slice, ...]) -> np.ndarray:
        return self.read(index)

    def read(self, index: tuple[int | slice, ...]) -> np.ndarray:
        """``series[index]`` (an integer or a step-1 slice per axis), as tifffile's Zarr view of it reads."""
        full = tuple(self.frames) + tuple(self.shaped[a] for a in self.page_axes)
        bounds = index_bounds(index, full)
        out = np.empty([b - a for a, b in bounds], self.dtype)
        within = [(0, 1)] * 5  # the region inside one page, in ``shaped`` axes
        for axis, bound in zip(self.page_axes, bounds[len(self.frames):]):
            within[axis] = bound
        extent5 = tuple(b - a for a, b in within)
        files: dict[str, int] = {}
        try:
            for at in np.ndindex(*[b - a for a, b in bounds[:len(self.frames)]]):
                number = int(np.ravel_multi_index([a + i for (a, _b), i in zip(bounds, at)], self.frames)
                             ) if self.frames else 0
                self._read_page(number, within, out[at].reshape(extent5), files)
        finally:
            for fd in files.values():
                os.close(fd)
        return out.reshape([b - a for (a, b), i in zip(bounds, index) if not isinstance(i, (int, np.integer))])

    def _read_page(self, number: int, within: list[tuple[int, int]], target: np.ndarray,
                   files: dict[str, int]) -> None:
        with self.lock:
            page = self.series[number]
        if page is None or page.keyframe is None:  # a page the file does not hold: the view's fill
            target[...] = self.nodata
            return
        key, path = page.keyframe, page.parent.filehandle.path
        segment, tiled = self.segment, self.tiled
        if key is not self.key:  # a page of another file of a set: its strips or tiles may be cut otherwise
            if tuple(key.shaped) != self.shaped or np.dtype(key.dtype) != self.dtype:
                raise ValueError(f"{path}: page {number} of the series holds {key.shaped} {key.dtype} pixels, its "
                                 f"first page {self.shaped} {self.dtype}")
            segment, tiled = _segment(key), bool(key.is_tiled)
        fd = files.get(path)
        if fd is None:
            fd = files[path] = os.open(path, os.O_RDONLY)
        base = page.parent.filehandle._offset or 0  # a TIFF embedded at an offset in its file
        args: dict[str, Any] = {}
        if page.jpegtables is not None:
            args["jpegtables"] = page.jpegtables
        if key.jpegheader is not None:
            args["jpegheader"] = key.jpegheader
        offsets, counts = page.dataoffsets, page.databytecounts
        for number_, start in _segments(within, self.shaped, segment, tiled):
            offset = offsets[number_] if number_ < len(offsets) else 0
            count = counts[number_] if number_ < len(counts) else 0
            if not offset or not count:  # a sparse segment: the view's fill
                _place(target, within, start, None, segment, self.nodata)
                continue
            data = os.pread(fd, count, base + offset)
            if len(data) < count:
                raise Truncated(path, f"ends at byte {base + offset + len(data):,}, inside a strip or tile of "
                                      f"{count:,} bytes at {base + offset:,}")
            pixels, where, _shape = key.decode(data, number_, **args)
            if tuple(where) != start:  # tifffile lays segments out as _segments does; never otherwise
                raise RuntimeError(f"segment {number_} of {path} decoded at {tuple(where)}, not at {start}")
            inside = tuple(min(n, size - p) for n, size, p in zip(segment, self.shaped[1:], start[1:]))
            if pixels is None or any(have < need for have, need in zip(pixels.shape, inside)):
                raise ValueError(f"{path}: strip or tile {number_} of page {number} decodes to "
                                 f"{None if pixels is None else pixels.shape} pixels, not the {inside} it holds")
            _place(target, within, start, pixels, segment, self.nodata)


def _segment(key: Any) -> tuple[int, int, int, int]:
    """The depth, length, width and contiguous samples of one strip or tile of a key frame's pages."""
    samples = key.samplesperpixel if key.planarconfig == 1 else 1
    if key.is_tiled:
        return key.tiledepth, key.tilelength, key.tilewidth, samples
    return 1, key.rowsperstrip, key.imagewidth, samples


def _segments(within: list[tuple[int, int]], shaped: tuple[int, ...], segment: tuple[int, int, int, int],
              tiled: bool):
    """The segments of a page that the region ``within`` touches: their number in the page's offsets and where
    each starts in ``shaped`` (as tifffile's decoder says)."""
    _planes, depth, length, width, _samples = shaped
    d, h, w, _s = segment
    across, down, deep = -(-width // w), -(-length // h), -(-depth // d)
    (s0, s1), (z0, z1), (y0, y1), (x0, x1), _ = within
    for s in range(s0, s1):
        for dz in range(z0 // d, -(-z1 // d)):
            for ty in range(y0 // h, -(-y1 // h)):
                for tx in range(x0 // w, -(-x1 // w)):
                    if tiled:
                        number = ((s * deep + dz) * down + ty) * across + tx
                    else:  # strips: rows of whole width, one plane of depth after another
                        number = (s * depth + dz) * down + ty
                    yield number, (s, dz * d, ty * h, tx * w, 0)


def _place(target: np.ndarray, within: list[tuple[int, int]], start: tuple[int, ...], pixels: np.ndarray | None,
           segment: tuple[int, int, int, int], nodata: Any) -> None:
    """Copy the part of a decoded segment (depth, length, width, samples; None: missing) inside the region."""
    extent = (1,) + (tuple(pixels.shape) if pixels is not None else segment)
    into, take = [], []
    for (a, b), p, n in zip(within, start, extent):
        lo, hi = max(a, p), min(b, p + n)
        if hi <= lo:
            return
        into.append(slice(lo - a, hi - a))
        take.append(slice(lo - p, hi - p))
    if pixels is None:
        target[tuple(into)] = nodata
    else:
        target[tuple(into)] = pixels[tuple(take[1:])]


def _aligned(page_shape: tuple[int, ...], shaped: tuple[int, ...]) -> tuple[int, ...] | None:
    """For each axis of a page's shape, its axis in the normalized ``shaped``: the page's shape is ``shaped``
    with axes of length one left out. None if it is not."""
    axes, k = [], 0
    for n in page_shape:
        while k < len(shaped) and shaped[k] != n:
            if shaped[k] != 1:
                return None
            k += 1
        if k == len(shaped):
            return None
        axes.append(k)
        k += 1
    if any(n != 1 for n in shaped[k:]):
        return None
    return tuple(axes)
