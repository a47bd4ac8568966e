"""Pyramid: plan the resolution levels of an image and define how each is computed from the one above.

Each level halves y and x (and z, once the image is isotropic enough: z is
halved only when its spacing is no coarser than that of x, so an anisotropic
stack keeps its planes until x catches up), until a plane fits one chunk.
Each output pixel is the mean of the 2x2 (or 2x2x2) block of the level above;
at an odd edge the block holds fewer pixels and their mean is taken (the edge
is replicated, which gives exactly that mean). Integers are rounded to
nearest. Level k's scale is the product of the factors times level 0's, and
its translation keeps pixel centres in place: + (factor - 1)/2 pixels of the
level above along each halved axis.

The plan is this stage's record; the pixels of every level are computed in
the compress stage's single streaming pass (``downsample_mean`` on each region
as it is written), so the source is read once.
"""

from __future__ import annotations

import itertools

import numpy as np
from prefect import task

from zarrchive.config import PyramidSettings
from zarrchive.lineage import Traced, traced
from zarrchive.records import ImageRecord, Level


def downsample_mean(block: np.ndarray, axes: tuple[int, ...] = (-2, -1)) -> np.ndarray:
    """Mean over 2-blocks along ``axes``, rounding integers to nearest (ties to even) and keeping the dtype
    (bool: majority, ties true)."""
    axes = tuple(sorted(a % block.ndim for a in axes))
    pad = [(0, block.shape[i] % 2 if i in axes else 0) for i in range(block.ndim)]
    if any(p[1] for p in pad):
        block = np.pad(block, pad, mode="edge")
    dtype = block.dtype
    if dtype.kind in "ui" and dtype.itemsize <= 4:
        return _integer_mean(block, axes)
    shape, reduce = [], []
    for i, n in enumerate(block.shape):
        if i in axes:
            shape += [n // 2, 2]
            reduce.append(len(shape) - 1)
        else:
            shape.append(n)
    mean = block.reshape(shape).mean(axis=tuple(reduce), dtype=np.float64)
    if dtype == np.bool_:
        return mean >= 0.5
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(mean), info.min, info.max).astype(dtype)
    return mean.astype(dtype)


def _integer_mean(block: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """The exact rounded mean of integer 2-blocks, in integer arithmetic (as ``np.rint`` of the float mean)."""
    total = None
    wide = np.int64 if block.dtype.itemsize == 4 else np.int32
    for offsets in itertools.product(*[(0, 1) if i in axes else (None,) for i in range(block.ndim)]):
        view = block[tuple(slice(o, None, 2) if o is not None else slice(None) for o in offsets)]
        total = view.astype(wide) if total is None else np.add(total, view, dtype=wide, out=total)
    n = 1 << len(axes)
    quotient, remainder = total >> len(axes), total & (n - 1)  # floor division and its remainder, also below 0
    quotient += (remainder > n // 2) | ((remainder == n // 2) & (quotient & 1).astype(bool))
    return quotient.astype(block.dtype)


def factors(above: Level, level: Level) -> tuple[int, ...]:
    """The downsampling factor (1 or 2) of ``level`` along each axis, relative to the level above."""
    return tuple(int(round(b / a)) for a, b in zip(above.scale, level.scale))


def halve_z(level: Level, axes: list[str], calibrated_z: bool) -> bool:
    """Whether the next level halves z too: only a calibrated z whose spacing is no coarser than x's."""
    if "z" not in axes or not calibrated_z:
        return False
    z, x = axes.index("z"), axes.index("x")
    return level.shape[z] > 1 and level.scale[z] <= level.scale[x] * (1 + 1e-6)


def next_level(level: Level, halved: tuple[int, ...], chunks: tuple[int, ...]) -> Level:
    """Shape and transforms of the level below ``level``, halving the axes at positions ``halved``."""
    shape, scale, translation = list(level.shape), list(level.scale), list(level.translation)
    for axis in halved:
        shape[axis] = -(-shape[axis] // 2)
        translation[axis] = translation[axis] + scale[axis] / 2
        scale[axis] = scale[axis] * 2
    return Level(path=str(int(level.path) + 1), shape=tuple(shape),
                 chunks=tuple(min(c, n) for c, n in zip(chunks, shape)),
                 scale=tuple(scale), translation=tuple(translation))


def plan_levels(level0: Level, axes: list[str], max_levels: int, calibrated_z: bool = False) -> list[Level]:
    """All levels: halve y and x (and z when ``halve_z``) until the largest plane fits one chunk
    (at most ``max_levels``)."""
    yx = (axes.index("y"), axes.index("x"))
    base_chunks = level0.chunks
    levels = [level0]
    while len(levels) < max_levels:
        last = levels[-1]
        if all(last.shape[a] <= base_chunks[a] for a in yx):
            break
        halved = ((axes.index("z"),) if halve_z(last, axes, calibrated_z) else ()) + yx
        levels.append(next_level(last, halved, base_chunks))
    return levels


def build_pyramid(image: ImageRecord, settings: PyramidSettings) -> ImageRecord:
    """The image's record with every level planned (shapes, chunks, exact scale and translation)."""
    axes = [a.name for a in image.axes]
    z_axis = next((a for a in image.axes if a.name == "z"), None)
    x_axis = next(a for a in image.axes if a.name == "x")
    calibrated_z = bool(z_axis and z_axis.unit and x_axis.unit)
    levels = plan_levels(image.levels[0], axes, settings.max_levels, calibrated_z)
    return image.model_copy(update={"levels": tuple(levels)})


@task(name="pyramid", task_run_name="pyramid: {image.image_id}", tags=["plan"])
def pyramid(image: ImageRecord, settings: PyramidSettings) -> Traced[ImageRecord]:
    return traced("pyramid", build_pyramid, image, settings, image_id=image.image_id)
