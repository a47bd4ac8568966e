"""Pyramid, without Prefect: block means, shapes and transforms (Hypothesis), levels on the cluster."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st
from hypothesis.extra.numpy import arrays

from builders import ome_tiff, random_image
from zarrchive.pixels import blocks
from zarrchive.pixels.blocks import downsample, downsample_mean
from zarrchive.records import FileRecord, Level
from zarrchive.tasks.convert import convert_file
from zarrchive.tasks.pyramid import build_pyramid, plan_levels


def reference_mean(a: np.ndarray) -> np.ndarray:
    """Mean over each 2x2 block of the last two axes, counting only the pixels a block holds."""
    h, w = a.shape[-2:]
    out = np.empty(a.shape[:-2] + (-(-h // 2), -(-w // 2)), dtype=np.float64)
    for i in range(out.shape[-2]):
        for j in range(out.shape[-1]):
            out[..., i, j] = a[..., 2 * i:2 * i + 2, 2 * j:2 * j + 2].astype(np.float64).mean(axis=(-2, -1))
    return out


@given(arrays(np.uint16, st.tuples(st.integers(1, 3), st.integers(1, 13), st.integers(1, 13))))
@hsettings(max_examples=60, deadline=None)
def test_downsample_is_the_rounded_block_mean(a):
    got = downsample_mean(a)
    assert got.dtype == a.dtype
    np.testing.assert_array_equal(got, np.rint(reference_mean(a)).astype(a.dtype))


@given(st.sampled_from(["u1", "i1", "u2", "i2", "u4", "i4"]).flatmap(
    lambda dtype: arrays(np.dtype(dtype), st.tuples(st.integers(1, 5), st.integers(1, 9), st.integers(1, 9)))),
    st.sampled_from([(1, 2), (0, 1, 2), (2,), (0,)]))
@hsettings(max_examples=120, deadline=None)
def test_integer_means_round_to_nearest_even_over_any_axes(a, axes):
    # the float64 mean is exact for these sums; rint rounds ties to even, as the integer arithmetic must
    padded = np.pad(a, [(0, a.shape[i] % 2 if i in axes else 0) for i in range(a.ndim)], mode="edge")
    shape = [n for i, size in enumerate(padded.shape) for n in ((size // 2, 2) if i in axes else (size,))]
    split = padded.reshape(shape)
    blocks = tuple(k for k, i in enumerate(_split_axes(padded.ndim, axes)) if i)
    expected = np.rint(split.astype(np.float64).mean(axis=blocks)).astype(a.dtype)
    np.testing.assert_array_equal(downsample_mean(a, axes), expected)


def _split_axes(ndim: int, axes: tuple[int, ...]) -> list[bool]:
    """For the reshaped array: True at each new axis of block offsets (after every halved axis)."""
    return [flag for i in range(ndim) for flag in ((False, True) if i in axes else (False,))]


@given(st.sampled_from(["u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f2", "f4", "f8", "?"]).flatmap(
    lambda dtype: arrays(np.dtype(dtype), st.tuples(st.integers(1, 4), st.integers(1, 11), st.integers(1, 11)))),
    st.sampled_from([(1, 2), (0, 1, 2), (0,), (1,), (2,), (0, 1), (0, 2)]), st.sampled_from(["mean", "mode"]),
    st.integers(1, 200))
@hsettings(max_examples=200, deadline=None)
def test_a_block_halved_in_bands_is_halved_as_a_whole(a, axes, method, band_bytes):
    # bands of any size, odd ends included: every 2-block lies in one band, so the bits are those of one call
    whole = blocks.DOWNSAMPLERS[method](a, axes)
    saved = blocks.BAND_BYTES
    blocks.BAND_BYTES = band_bytes
    try:
        banded = downsample(a, axes, method)
    finally:
        blocks.BAND_BYTES = saved
    assert banded.dtype == whole.dtype and banded.shape == whole.shape
    np.testing.assert_array_equal(blocks.bits(banded), blocks.bits(whole))


def test_halving_a_large_block_holds_little_more_than_its_output():
    import tracemalloc

    a = np.random.default_rng(0).integers(0, 65535, (8, 1024, 1024), dtype=np.uint16)  # 16 MiB
    tracemalloc.start()
    try:
        out = downsample(a, (1, 2), "mean")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.nbytes == a.nbytes // 4
    # the output (4 MiB) and the working arrays of one band; halved at once, the int32 sums took 9x the output
    assert peak < out.nbytes + 4 * blocks.BAND_BYTES, peak


def test_downsample_float_and_bool():
    f = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_allclose(downsample_mean(f), reference_mean(f).astype(np.float32))
    b = np.array([[True, True, False], [True, False, False]])
    np.testing.assert_array_equal(downsample_mean(b), [[True, False]])


@given(st.integers(1, 5000), st.integers(1, 5000), st.sampled_from([16, 64, 256, 512]),
       st.floats(0.01, 10), st.floats(0.01, 10))
@hsettings(max_examples=200, deadline=None)
def test_levels_halve_until_a_plane_fits_one_chunk(h, w, chunk, sy, sx):
    level0 = Level(path="0", shape=(2, h, w), chunks=(1, min(chunk, h), min(chunk, w)), scale=(1.0, sy, sx),
                   translation=(0.0, 0.0, 0.0))
    levels = plan_levels(level0, ["c", "y", "x"], max_levels=20)
    last = levels[-1]
    assert last.shape[1] <= chunk and last.shape[2] <= chunk
    if len(levels) > 1:
        assert max(levels[-2].shape[1:]) > chunk
    for k, level in enumerate(levels):
        assert level.path == str(k)
        assert level.shape[0] == 2
        assert level.shape[1] == -(-h // 2 ** k) and level.shape[2] == -(-w // 2 ** k)
        assert np.isclose(level.scale[1], sy * 2 ** k) and np.isclose(level.scale[2], sx * 2 ** k)
        # pixel centres stay in place: (2^k - 1) / 2 level-0 pixels
        assert np.isclose(level.translation[1], sy * (2 ** k - 1) / 2)
        assert np.isclose(level.translation[2], sx * (2 ** k - 1) / 2)
        assert level.scale[0] == 1.0 and level.translation[0] == 0.0
        assert all(c <= n for c, n in zip(level.chunks, level.shape))


def test_anisotropic_z_is_halved_only_once_as_fine_as_x():
    level0 = Level(path="0", shape=(1, 40, 4096, 4096), chunks=(1, 1, 256, 256), scale=(1.0, 2.0, 0.5, 0.5),
                   translation=(0.0, 0.0, 0.0, 0.0))
    levels = plan_levels(level0, ["c", "z", "y", "x"], max_levels=20, calibrated_z=True)
    assert [lvl.shape[1] for lvl in levels] == [40, 40, 40, 20, 10]  # x: 0.5, 1, 2 (= z) -> then both halve
    assert [lvl.scale[1] for lvl in levels] == [2.0, 2.0, 2.0, 4.0, 8.0]
    assert levels[3].translation[1] == 1.0 and levels[4].translation[1] == 3.0  # (factor - 1) / 2 pixels above
    assert [lvl.scale[3] for lvl in levels] == [0.5, 1.0, 2.0, 4.0, 8.0]
    uncalibrated = plan_levels(level0, ["c", "z", "y", "x"], max_levels=20, calibrated_z=False)
    assert {lvl.shape[1] for lvl in uncalibrated} == {40}  # z spacing unknown: planes are never merged


def test_downsample_over_z_too_is_the_2x2x2_block_mean():
    a = np.arange(3 * 3 * 4, dtype=np.uint8).reshape(3, 3, 4)
    got = downsample_mean(a, (0, 1, 2))
    padded = np.pad(a, [(0, 1), (0, 1), (0, 0)], mode="edge").astype(np.float64)
    want = padded.reshape(2, 2, 2, 2, 2, 2).mean(axis=(1, 3, 5))
    np.testing.assert_array_equal(got, np.rint(want).astype(np.uint8))


def test_build_pyramid_plans_levels_from_the_image(tmp_path, settings):
    data = random_image((2, 3, 150, 133))
    path = ome_tiff(tmp_path / "p.ome.tif", data, "CZYX", {"x": 0.2, "y": 0.2, "z": 1.0})
    rec = FileRecord(path="p.ome.tif", source_uri=str(path), staged_path=str(path), size=path.stat().st_size,
                     sha256=hashlib.sha256(path.read_bytes()).hexdigest(), kind="image")
    small = settings.convert.model_copy(update={"chunk_xy": 32})
    [image] = convert_file(rec, None, str(tmp_path / "s"), small)
    image = build_pyramid(image, settings.pyramid)
    shapes = [lvl.shape for lvl in image.levels]
    assert shapes == [(2, 3, 150, 133), (2, 3, 75, 67), (2, 3, 38, 34), (2, 3, 19, 17)]  # z (1.0) stays coarser
    assert image.levels[-1].scale[-1] == pytest.approx(1.6)  # than x (0.2, 0.4, 0.8) above every level made
