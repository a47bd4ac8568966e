"""A Zeiss CZI scene read plane by plane with libCZI (pylibCZIrw), where each plane is one subblock.

bioio-czi's lazy array makes a whole z-stack one chunk: a task reading one plane of a CZI z-stack reads, decodes
and holds every plane of it. ZEN stores a z-stack, a time lapse or a multi-channel image (not a tiled mosaic) as
one subblock per plane, each covering the scene, raw or compressed (zstd, JPEG-XR). Such a scene is read here
a plane at a time, each plane's part of a region cropped from its subblock by libCZI, the reader bioio-czi's own
readers wrap. ``CziPlanes.of`` says so only where that is certain; any other scene (a mosaic, a pyramid, colour
samples, a dimension beyond T, C and Z) is bioio-czi's to read, as before.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from typing import Any, NamedTuple

import numpy as np

DTYPES = {"Gray8": np.dtype(np.uint8), "Gray16": np.dtype(np.uint16), "Gray32Float": np.dtype(np.float32)}
PLANE_DIMS = "TCZ"  # the plane coordinates a scene read here may have (besides S, its scene)


class Scene(NamedTuple):
    """Where a scene's planes lie: its rectangle in the file's pixel coordinates, their counts (T, C and Z from
    0), and its pixel type."""

    s: int | None  # the scene's S index (None: the file has no S dimension)
    rect: tuple[int, int, int, int]  # x, y, w, h
    shape: tuple[int, int, int, int, int]  # T, C, Z, Y, X
    dtype: np.dtype
    kind: str  # libCZI's pixel type (the scene's own: libCZI would otherwise take its first channel's)


class CziPlanes:
    """Scene ``scene`` of a CZI file as a TCZYX array, indexed as a numpy array is (integers and step-1 slices):
    each plane's part of the region is read from its subblock by libCZI. Each thread reads with a libCZI reader
    of its own, which decodes without holding the GIL: threads read at once (``concurrent``)."""

    concurrent = True  # (``sources.read_region`` reads it without a lock)

    def __init__(self, path: str, scene: Scene):
        self.path, self.scene = path, scene
        self.shape, self.dtype = scene.shape, scene.dtype
        self._own = threading.local()
        self._readers: list[Any] = []

    @property
    def reader(self) -> Any:
        """This thread's libCZI reader of the file."""
        reader = getattr(self._own, "reader", None)
        if reader is None:
            from pylibCZIrw import czi as pyczi

            reader = self._own.reader = pyczi.CziReader(self.path)
            with _READERS:
                self._readers.append(reader)
        return reader

    @classmethod
    def of(cls, path: str, scene: int) -> Scene | None:
        """Scene ``scene`` (bioio-czi's index) of the file as one subblock per plane; None where it is not."""
        scenes = _scenes(path)[1]
        return scenes[scene] if 0 <= scene < len(scenes) else None

    @staticmethod
    def held(path: str) -> int:
        """How many scenes the file's subblocks hold (their distinct S indices; 1 without any; 0 for a file
        libCZI does not read)."""
        return _scenes(path)[0]

    @staticmethod
    def every(path: str) -> tuple[list[Scene | None], str]:
        """Every scene of the file (none where its S indices are not 0, 1, …) and its metadata XML."""
        return _scenes(path)[1:]

    def __getitem__(self, index: tuple[int | slice, ...]) -> np.ndarray:
        if len(index) != 5:
            raise IndexError(f"{self.path}: {len(index)} indices for a TCZYX array")
        bounds = []
        for i, n in zip(index, self.shape):
            if isinstance(i, (int, np.integer)):
                if not -n <= i < n:
                    raise IndexError(f"{self.path}: index {i} out of range for an axis of {n}")
                bounds.append((int(i) % n, int(i) % n + 1))
            elif isinstance(i, slice) and i.step in (None, 1):
                a, b, _ = i.indices(n)
                bounds.append((a, max(a, b)))
            else:
                raise IndexError(f"{self.path}: only integers and step-1 slices index a CZI scene, not {i!r}")
        (t0, t1), (c0, c1), (z0, z1), (y0, y1), (x0, x1) = bounds
        out = np.empty([b - a for a, b in bounds], dtype=self.dtype)
        if out.size:
            x, y, _w, _h = self.scene.rect
            roi = (x + x0, y + y0, x1 - x0, y1 - y0)
            reader = self.reader
            for t, c, z in itertools.product(range(t0, t1), range(c0, c1), range(z0, z1)):
                plane = reader.read(roi=roi, plane={"T": t, "C": c, "Z": z}, scene=self.scene.s,
                                    pixel_type=self.scene.kind)
                if plane.shape[:2] != (y1 - y0, x1 - x0) or plane.dtype != self.dtype:
                    raise ValueError(f"{self.path}: libCZI gave {plane.shape} {plane.dtype} pixels for a plane "
                                     f"region of {(y1 - y0, x1 - x0)} {self.dtype}")
                out[t - t0, c - c0, z - z0] = plane.reshape(plane.shape[:2])
        drop = tuple(0 if isinstance(i, (int, np.integer)) else slice(None) for i in index)
        return out[drop]

    def close(self) -> None:
        with _READERS:
            readers, self._readers = self._readers, []
        for reader in readers:
            reader.close()


_LOCK = threading.Lock()  # one scan of a file's subblocks at a time (each scan is cached)
_READERS = threading.Lock()


def _scenes(path: str) -> tuple[int, list[Scene | None], str]:
    stat = os.stat(path)
    with _LOCK:
        return _scenes_of(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _scenes_of(path: str, _mtime: int, _size: int) -> tuple[int, list[Scene | None], str]:
    """How many scenes the subblocks hold, each S index's scene, in order (one scene when the file has no S
    dimension), or None where its subblocks are not one per plane, and the metadata XML; no scenes for a file
    whose S indices are not 0, 1, … (bioio-czi counts scenes so), nothing for one libCZI does not read."""
    try:
        from pylibCZIrw import czi as pyczi

        blocks: list[tuple[dict[str, int], tuple[int, int, int, int], tuple[int, int], bool, str]] = []

        def seen(_index: int, info: Any) -> bool:
            rect, size = info.logicalRect, info.physicalSize
            blocks.append((dict(info.coordinate.to_dict()), (rect.x, rect.y, rect.w, rect.h), (size.w, size.h),
                           bool(info.is_mindex_valid()) and info.mIndex != 0, str(info.pixelType).split(".")[-1]))
            return True

        with pyczi.open_czi(path) as czi:
            czi.enumerate_subblocks(seen)
            xml = czi.raw_metadata
    except Exception:  # libCZI cannot read it: bioio-czi reads it, or says why
        return 0, [], ""
    by_scene: dict[int | None, list[Any]] = {}
    for block in blocks:
        by_scene.setdefault(block[0].get("S"), []).append(block)
    keys = sorted(by_scene, key=lambda s: -1 if s is None else s)
    if keys != [None] and keys != list(range(len(keys))):
        return len(keys), [], xml
    return len(keys), [_scene(s, by_scene[s]) for s in keys], xml


def _scene(s: int | None, blocks: list[Any]) -> Scene | None:
    """The scene of these subblocks where each of its planes (T, C, Z, each counted from 0, as bioio-czi counts
    them) is exactly one unscaled subblock, all of one rectangle and one grey pixel type; None otherwise."""
    rects = {rect for _c, rect, _p, _m, _t in blocks}
    types = {kind for _c, _r, _p, _m, kind in blocks}
    if len(rects) != 1 or len(types) != 1 or (kind := types.pop()) not in DTYPES:
        return None
    rect = rects.pop()
    if any(size != rect[2:] or tiled for _c, _r, size, tiled, _t in blocks):
        return None  # a pyramid layer (scaled), or mosaic tiles of one plane
    if any(set(coord) - set(PLANE_DIMS) - {"S"} for coord, *_ in blocks):
        return None  # another dimension (a phase, a rotation, an illumination, a view, a block)
    planes = {tuple(coord.get(d, 0) for d in PLANE_DIMS) for coord, *_ in blocks}
    counts = tuple(max(p[k] for p in planes) + 1 for k in range(3))
    if len(planes) != len(blocks) or len(planes) != int(np.prod(counts)) or min(min(p) for p in planes) < 0:
        return None  # two subblocks of one plane, a plane with none (one before the first index: not from 0)
    return Scene(s, rect, (*counts, rect[3], rect[2]), DTYPES[kind], kind)
