"""Pyramid: halve y and x level by level (2x2 block mean) until a plane fits one chunk.

Each output pixel is the mean of the 2x2 block of the level below; at an odd
edge the block holds fewer pixels and their mean is taken (the edge row or
column is replicated, which gives exactly that mean). Integers are rounded
to nearest. Level k has scale 2^k times level 0 along y and x, and a
translation of (2^k - 1)/2 level-0 pixels, so pixel centres stay in place.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import zarr
from prefect import task

from zarrchive.cluster import client_for
from zarrchive.config import PyramidSettings
from zarrchive.identity import pyramid_key
from zarrchive.lineage import Traced, traced
from zarrchive.ngff import multiscales_attrs
from zarrchive.records import ImageRecord, Level


def downsample_mean(block: np.ndarray) -> np.ndarray:
    """2x2 mean over the last two axes, rounding integers to nearest and keeping the dtype."""
    pad = [(0, 0)] * (block.ndim - 2) + [(0, block.shape[-2] % 2), (0, block.shape[-1] % 2)]
    if any(p[1] for p in pad):
        block = np.pad(block, pad, mode="edge")
    h, w = block.shape[-2] // 2, block.shape[-1] // 2
    blocks = block.reshape(*block.shape[:-2], h, 2, w, 2)
    mean = blocks.mean(axis=(-3, -1), dtype=np.float64)
    dtype = block.dtype
    if dtype == np.bool_:
        return mean >= 0.5
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(mean), info.min, info.max).astype(dtype)
    return mean.astype(dtype)


def next_level(level: Level, yx: tuple[int, int], chunks: tuple[int, ...]) -> Level:
    """Shape and transforms of the level below ``level`` (y and x at positions ``yx``)."""
    shape, scale, translation = list(level.shape), list(level.scale), list(level.translation)
    for axis in yx:
        shape[axis] = -(-shape[axis] // 2)
        translation[axis] = translation[axis] + scale[axis] / 2
        scale[axis] = scale[axis] * 2
    return Level(path=str(int(level.path) + 1), shape=tuple(shape),
                 chunks=tuple(min(c, n) for c, n in zip(chunks, shape)),
                 scale=tuple(scale), translation=tuple(translation))


def plan_levels(level0: Level, axes: list[str], max_levels: int) -> list[Level]:
    """All levels: halve y and x until the largest plane fits one chunk (at most ``max_levels``)."""
    yx = (axes.index("y"), axes.index("x"))
    base_chunks = level0.chunks
    levels = [level0]
    while len(levels) < max_levels:
        last = levels[-1]
        if all(last.shape[a] <= base_chunks[a] for a in yx):
            break
        levels.append(next_level(last, yx, base_chunks))
    return levels


def build_pyramid(image: ImageRecord, settings: PyramidSettings, scheduler: str) -> ImageRecord:
    """Write levels 1..n next to level 0 in the image's staging store; return the record with all levels."""
    axes = [a.name for a in image.axes]
    levels = plan_levels(image.levels[0], axes, settings.max_levels)
    root = zarr.open_group(image.store, mode="r+")
    with client_for(scheduler) as client:
        for below, level in zip(levels, levels[1:]):
            source = zarr.open_array(f"{image.store}/{below.path}", mode="r")
            # read blocks of two output chunks along y and x so each output block is one chunk
            read_chunks = tuple(c * 2 if i >= len(axes) - 2 else c for i, c in enumerate(level.chunks))
            data = da.from_zarr(source, chunks=read_chunks)
            out_chunks = tuple(
                tuple(-(-c // 2) for c in dim) if i >= len(axes) - 2 else dim for i, dim in enumerate(data.chunks)
            )
            down = data.map_blocks(downsample_mean, chunks=out_chunks, dtype=data.dtype)
            target = root.create_array(level.path, shape=level.shape, chunks=level.chunks, dtype=image.dtype,
                                       compressors=None, fill_value=0, dimension_names=axes, overwrite=True)
            client.compute(da.store(down, target, lock=False, compute=False)).result()
    record = image.model_copy(update={"levels": tuple(levels)})
    root.update_attributes({"ome": multiscales_attrs(record)})
    return record


@task(name="pyramid", task_run_name="pyramid: {image.image_id}", tags=["pixels"], cache_key_fn=pyramid_key,
      persist_result=True)
def pyramid(image: ImageRecord, settings: PyramidSettings, scheduler: str) -> Traced[ImageRecord]:
    return traced("pyramid", build_pyramid, image, settings, scheduler, image_id=image.image_id)
