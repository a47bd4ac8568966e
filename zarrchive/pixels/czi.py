"""A Zeiss CZI scene read plane by plane with libCZI (pylibCZIrw), where each plane is one subblock.

bioio-czi's lazy array makes a whole z-stack one chunk: a task reading one plane of a CZI z-stack reads, decodes
and holds every plane of it. ZEN stores a z-stack, a time lapse or a multi-channel image (not a tiled mosaic) as
one subblock per plane, each covering the scene, raw or compressed (zstd, JPEG-XR). Such a scene is read here
a plane at a time, each plane's part of a region cropped from its subblock by libCZI, the reader bioio-czi's own
readers wrap. ``CziPlanes.of`` says so only where that is certain; any other scene (a mosaic, a pyramid, colour
samples, a dimension beyond T, C and Z, planes not counted from 0, a plane missing) is bioio-czi's to read, as
before, and so is a file of more than ``MOST_SUBBLOCKS``. The same scan of the subblock directory says, for every
file libCZI reads however many subblocks it holds, which scenes hold JPEG or JPEG XR subblocks (a lossy source)
and how many scenes the file holds.
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
from typing import Any, NamedTuple

import numpy as np

from zarrchive.pixels.blocks import index_bounds

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
    """Scene ``scene`` of a CZI file as a TCZYX array, indexed as a numpy array is (integers and step-1 slices,
    each selecting something: ``blocks.index_bounds``): each plane's part of the region is read from its subblock
    by libCZI. Each thread reads with a libCZI reader of its own, which decodes without holding the GIL: threads
    read at once (``concurrent``)."""

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
        scenes = scan(path).scenes
        return scenes[scene] if 0 <= scene < len(scenes) else None

    @staticmethod
    def held(path: str) -> int:
        """How many scenes the file's subblocks hold (their distinct S indices; 1 without any; 0 for a file
        libCZI does not read)."""
        return scan(path).held

    @staticmethod
    def lossy(path: str, scene: int) -> str | None:
        """The lossy compression (JPEG, JPEG XR) a subblock of scene ``scene`` (bioio-czi's index) was stored
        with, if one was. Where the S indices are 0, 1, … a scene is its S index; else (gaps, or no S dimension,
        which bioio-czi may still count scenes in) any subblock of the file counts for every scene."""
        found = scan(path)
        return found.lossy.get(scene) if found.numbered else next(iter(found.lossy.values()), None)

    def __getitem__(self, index: tuple[int | slice, ...]) -> np.ndarray:
        try:
            bounds = index_bounds(index, self.shape)
        except IndexError as exc:
            raise IndexError(f"{self.path}: {exc}") from None
        (t0, t1), (c0, c1), (z0, z1), (y0, y1), (x0, x1) = bounds
        out = np.empty([b - a for a, b in bounds], dtype=self.dtype)
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
LOSSY = {"Jpg": "JPEG", "JpgXr": "JPEGXR"}  # subblock compressions that are lossy in practice (as in a TIFF)
MOST_SUBBLOCKS = 250_000  # subblocks recorded at most (a slide scanner's mosaic and pyramid hold tens of thousands):
# a file of more is bioio-czi's to describe and read, as a record holds a few hundred bytes of Python; its scenes and
# their lossy compressions are still counted from every subblock


class Block(NamedTuple):
    """What libCZI's directory says of one subblock."""

    coordinate: dict[str, int]  # T, C, Z, S, …
    rect: tuple[int, int, int, int]  # x, y, w, h (logical)
    stored: tuple[int, int]  # w, h (physical: smaller in a pyramid's scaled layers)
    tile: bool  # a mosaic tile (an M index other than 0)
    kind: str  # pixel type
    compression: str


class Scan(NamedTuple):
    """What a file's subblock directory says of its scenes."""

    held: int  # scenes the subblocks hold (their distinct S indices; 1 without any; 0: libCZI cannot read it)
    scenes: list[Scene | None]  # each S index's scene, where those are 0, 1, … (None: not one subblock a plane);
    #                             none for a file of more than ``MOST_SUBBLOCKS``
    xml: str  # the metadata
    lossy: dict[int | None, str]  # the lossy compression of each S index that has one (None: no S dimension)
    numbered: bool  # the S indices are 0, 1, … (a scene of bioio-czi's is then its S index)


def scan(path: str) -> Scan:
    """What the file's subblock directory says (``Scan``): scanned once while the file stays the same."""
    stat = os.stat(path)
    with _LOCK:
        return _scenes_of(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _scenes_of(path: str, _mtime: int, _size: int) -> Scan:
    """The file's scenes, in order of their S index (one scene when the file has no S dimension); none where the S
    indices are not 0, 1, … (bioio-czi counts scenes so) or the file holds more than ``MOST_SUBBLOCKS`` (then only
    its S indices and their compressions are kept, not each subblock); nothing for a file libCZI does not read."""
    try:
        from pylibCZIrw import czi as pyczi

        blocks: list[Block] = []
        held: set[int | None] = set()
        lossy: dict[int | None, str] = {}

        def seen(_index: int, info: Any) -> bool:
            coordinate = dict(info.coordinate.to_dict())
            compression = str(info.get_compression_mode()).split(".")[-1]
            held.add(coordinate.get("S"))
            if compression in LOSSY:
                lossy.setdefault(coordinate.get("S"), LOSSY[compression])
            if len(blocks) <= MOST_SUBBLOCKS:  # (one more than the most: the file is then left to bioio-czi)
                rect, size = info.logicalRect, info.physicalSize
                blocks.append(Block(coordinate, (rect.x, rect.y, rect.w, rect.h), (size.w, size.h),
                                    bool(info.is_mindex_valid()) and info.mIndex != 0,
                                    str(info.pixelType).split(".")[-1], compression))
            return True

        with pyczi.open_czi(path) as czi:
            czi.enumerate_subblocks(seen)
            xml = czi.raw_metadata
    except Exception:  # libCZI cannot read it: bioio-czi reads it, or says why
        return Scan(0, [], "", {}, False)
    keys = sorted(held, key=lambda s: -1 if s is None else s)
    numbered = keys == list(range(len(keys)))
    if len(blocks) > MOST_SUBBLOCKS or (keys != [None] and not numbered):
        return Scan(len(keys), [], xml, lossy, numbered)
    by_scene: dict[int | None, list[Block]] = {}
    for block in blocks:
        by_scene.setdefault(block.coordinate.get("S"), []).append(block)
    return Scan(len(keys), [_scene(s, by_scene[s]) for s in keys], xml, lossy, numbered)


def _scene(s: int | None, blocks: list[Block]) -> Scene | None:
    """The scene of these subblocks where each of its planes (T, C, Z, each counted from 0, as bioio-czi counts
    them) is exactly one unscaled subblock, all of one rectangle and one grey pixel type; None otherwise."""
    rects = {block.rect for block in blocks}
    types = {block.kind for block in blocks}
    if len(rects) != 1 or len(types) != 1 or (kind := types.pop()) not in DTYPES:
        return None
    rect = rects.pop()
    if any(block.stored != rect[2:] or block.tile for block in blocks):
        return None  # a pyramid layer (scaled), or mosaic tiles of one plane
    if any(set(block.coordinate) - set(PLANE_DIMS) - {"S"} for block in blocks):
        return None  # another dimension (a phase, a rotation, an illumination, a view, a block)
    planes = {tuple(block.coordinate.get(d, 0) for d in PLANE_DIMS) for block in blocks}
    counts = tuple(max(p[k] for p in planes) + 1 for k in range(3))
    if len(planes) != len(blocks) or len(planes) != int(np.prod(counts)) or min(min(p) for p in planes) < 0:
        return None  # two subblocks of one plane, a plane with none (one before the first index: not from 0)
    return Scene(s, rect, (*counts, rect[3], rect[2]), DTYPES[kind], kind)
