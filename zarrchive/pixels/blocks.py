"""Blocks: what is done to the pixels of a region, in numpy alone (no Prefect, no zarr), so Dask workers stay light.

The pyramid's downsampling (``mean`` for intensities, ``mode`` for labels),
the regions of a level's chunks, and the bit view used to compare pixels
exactly (NaN and -0.0 included).
"""

from __future__ import annotations

import itertools

import numpy as np


def index_bounds(index: tuple[int | slice, ...], full: tuple[int, ...]) -> list[tuple[int, int]]:
    """The start and stop of ``index`` along each axis of an array of shape ``full``: one entry per axis, each an
    integer inside the axis (counted from its end when negative) or a slice of step 1 selecting something."""
    if len(index) != len(full):
        raise IndexError(f"{len(index)} indices for an array of {len(full)} axes {full}")
    bounds = []
    for i, n in zip(index, full):
        if isinstance(i, (int, np.integer)):
            if not -n <= i < n:
                raise IndexError(f"index {i} outside an axis of {n}")
            bounds.append((int(i) % n, int(i) % n + 1))
        elif isinstance(i, slice) and i.step in (None, 1):
            a, b, _ = i.indices(n)
            if b <= a:
                raise IndexError(f"an empty or reversed slice {i} of an axis of {n}")
            bounds.append((a, b))
        else:
            raise IndexError(f"{i!r}: only integers and slices of step 1 are read")
    return bounds


def chunk_slices(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """The region of every chunk, in C order of chunk indices."""
    ranges = [range(0, n, c) for n, c in zip(shape, chunks)]
    return [tuple(slice(s, min(s + c, n)) for s, c, n in zip(start, chunks, shape))
            for start in itertools.product(*ranges)]


def bits(block: np.ndarray) -> np.ndarray:
    """The array's bits as unsigned integers of the same size (so NaNs and -0.0 compare exactly)."""
    return block.view(f"u{block.dtype.itemsize}") if block.dtype != np.bool_ else block


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
    """The exact rounded mean of integer 2-blocks, in integer arithmetic (as ``np.rint`` of the float mean).

    Pairs are summed one axis at a time, the outermost first (its pairs are whole rows, added in one vectorised
    pass that also widens the type), each pass halving what the next reads; then rounding to nearest, ties to
    even, in place: (total + n/2 - 1 + (floor(total / n) & 1)) >> log2(n) for n pixels per block."""
    wide = np.int64 if block.dtype.itemsize == 4 else np.int32
    total = block
    for axis in axes:  # sorted, outermost first
        pick = [slice(None)] * block.ndim
        pick[axis] = slice(0, None, 2)
        even = total[tuple(pick)]
        pick[axis] = slice(1, None, 2)
        total = np.add(even, total[tuple(pick)], dtype=wide)
    k = len(axes)
    odd = total >> k  # floor division, also below 0
    odd &= 1
    total += odd
    total += (1 << (k - 1)) - 1
    total >>= k
    return total.astype(block.dtype)


def downsample_mode(block: np.ndarray, axes: tuple[int, ...] = (-2, -1)) -> np.ndarray:
    """Mode over 2-blocks along ``axes``: the most frequent value of each block, a tie going to the smallest
    value; at an odd edge the mode of the pixels the block holds. The output only ever holds values of its
    block (for label images: integers and bools)."""
    axes = tuple(sorted(a % block.ndim for a in axes))
    pad = [(0, block.shape[i] % 2 if i in axes else 0) for i in range(block.ndim)]
    if any(p[1] for p in pad):  # replicating the edge doubles every count of an edge block: same mode, same ties
        block = np.pad(block, pad, mode="edge")
    views = [block[tuple(slice(o, None, 2) if o is not None else slice(None) for o in offsets)]
             for offsets in itertools.product(*[(0, 1) if i in axes else (None,) for i in range(block.ndim)])]
    best = views[0].copy()
    best_count = np.zeros(best.shape, dtype=np.uint8)
    count = np.empty(best.shape, dtype=np.uint8)
    for j, candidate in enumerate(views):  # 4 (or 8) candidates, each counted against the block
        count.fill(1)
        for i, other in enumerate(views):
            if i != j:
                count += candidate == other
        better = (count > best_count) | ((count == best_count) & (candidate < best))
        np.copyto(best, candidate, where=better)
        np.copyto(best_count, count, where=better)
    return best


DOWNSAMPLERS = {"mean": downsample_mean, "mode": downsample_mode}


BAND_BYTES = 4 << 20  # a block is halved a band of about this many bytes at a time


def downsample(block: np.ndarray, axes: tuple[int, ...], method: str) -> np.ndarray:
    """Halve ``block`` along ``axes`` with the level's method: ``mean`` (intensities) or ``mode`` (labels).

    The block is halved in bands along its outermost halved axis, each an even number of rows but the last,
    into the output: the working arrays (a mean's wider sums, a mode's counts) are then those of a band, not
    several times the block's bytes. Every 2-block lies in one band, so the result is the same."""
    method_of = DOWNSAMPLERS[method]
    axes = tuple(sorted(a % block.ndim for a in axes))
    outer = axes[0]
    row = block.nbytes // max(1, block.shape[outer])
    step = max(2, (BAND_BYTES // max(1, row)) // 2 * 2)
    if step >= block.shape[outer]:
        return method_of(block, axes)
    out = None
    for start in range(0, block.shape[outer], step):
        pick = [slice(None)] * block.ndim
        pick[outer] = slice(start, start + step)
        part = method_of(block[tuple(pick)], axes)
        if out is None:
            shape = [-(-n // 2) if i in axes else n for i, n in enumerate(block.shape)]
            out = np.empty(shape, dtype=part.dtype)
        pick[outer] = slice(start // 2, start // 2 + part.shape[outer])
        out[tuple(pick)] = part
    return out
