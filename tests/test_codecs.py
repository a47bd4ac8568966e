"""Codecs: imagecodecs' lossless image codecs as Zarr v3 codecs, the profiles, and the per-image choice."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import given, settings as hsettings, strategies as st
from hypothesis.extra.numpy import arrays

from builders import archive_images, ome_tiff
from zarrchive.pixels.codecs import (
    IMAGE_CODECS, OBJECTIVE, WITH_IMAGECODECS, WITH_PCODEC, array_codec_kwargs, choose_codec, make_codec, sample_regions,
)
from zarrchive.config import CodecSpec, load_settings
from zarrchive.errors import ConfigError


def microscopy(shape, dtype="uint16", seed=0):
    """Smooth structure, blobs and shot noise: what the image codecs are for."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[-2], 0:shape[-1]]
    base = 300 + 200 * np.sin(yy / 11.0) * np.cos(xx / 17.0)
    stack = np.broadcast_to(base, shape) + rng.poisson(40, shape)
    return np.clip(stack, 0, np.iinfo(dtype).max).astype(dtype)


@pytest.mark.parametrize("name", sorted(n for n in IMAGE_CODECS if n != "pcodec"))  # pcodec: numcodecs' (below)
def test_each_image_codec_round_trips_in_sharded_arrays_and_plain_zarr_reads_it(tmp_path, name):
    cls = IMAGE_CODECS[name]
    for dtype in cls.dtypes:
        if dtype in ("uint64", "int64"):
            continue
        info = np.iinfo(dtype) if np.dtype(dtype).kind in "ui" else None
        data = microscopy((2, 64, 48), "uint16").astype(np.int64) % min(info.max if info else 65535, 65535)
        if info is not None and info.min < 0:
            data = data - 100  # negative values too
        data = data.astype(dtype)
        path = tmp_path / f"{name}-{dtype}"
        array = zarr.create_array(str(path), shape=data.shape, chunks=(1, 32, 16), shards=(2, 64, 48),
                                  dtype=dtype, zarr_format=3, **array_codec_kwargs(make_codec(CodecSpec(codec=name))))
        array[...] = data
        np.testing.assert_array_equal(zarr.open_array(str(path), mode="r")[...], data)
        meta = json.loads((path / "zarr.json").read_text())
        inner = meta["codecs"][0]["configuration"]["codecs"]
        assert inner[0]["name"] == cls.codec_name  # the serializer inside the sharding codec
    # a reader that has zarrchive installed but never imports it: the entry point registers the codec
    code = "import zarr, sys; a = zarr.open_array(sys.argv[1], mode='r'); print(int(a[...].astype('int64').sum()))"
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert int(out.stdout) == int(data.astype(np.int64).sum())


@given(st.sampled_from(sorted(IMAGE_CODECS)), st.data())
@hsettings(max_examples=40, deadline=None)
def test_image_codecs_are_lossless_on_any_content(name, data):
    cls = IMAGE_CODECS[name]
    dtype = data.draw(st.sampled_from([d for d in cls.dtypes if d not in ("uint64", "int64")]))
    shape = data.draw(st.tuples(st.integers(1, 2), st.integers(1, 33), st.integers(1, 33)))
    values = data.draw(arrays(dtype, shape))
    array = zarr.create_array(store={}, shape=shape, chunks=shape, dtype=dtype, zarr_format=3,
                              **array_codec_kwargs(make_codec(CodecSpec(codec=name))))
    array[...] = values
    np.testing.assert_array_equal(array[...].view(f"u{values.dtype.itemsize}"), values.view(f"u{values.dtype.itemsize}"))


def test_the_baseline_is_eligible_however_slow_and_never_beaten_by_a_larger_candidate():
    samples = [microscopy((1, 128, 128), seed=s)[0] for s in range(4)]
    fast_and_large = CodecSpec(codec="blosc", cname="lz4", clevel=1, shuffle="noshuffle")
    baseline = CodecSpec(codec="blosc", cname="zstd", clevel=5, shuffle="shuffle", baseline=True)
    # no candidate is fast enough: the baseline still is eligible, and it is the smaller one
    slow = choose_codec(samples, [fast_and_large, baseline], min_encode_mbps=1e9)
    assert slow.chosen == 1 and slow.candidates[1].stored_bytes < slow.candidates[0].stored_bytes
    # a tolerance that counts every size as equal takes the fastest, but never one larger than the baseline
    tolerant = choose_codec(samples, [fast_and_large, baseline], min_encode_mbps=0, size_tolerance=1.0)
    assert tolerant.chosen == 1
    assert "baseline" not in str(load_settings().compress.identity())  # a rule of the choice, not an identity


def test_an_image_codec_refuses_a_dtype_it_cannot_keep(tmp_path):
    with pytest.raises(ValueError, match="imagecodecs_jpegls encodes uint8, uint16, not float32"):
        zarr.create_array(str(tmp_path / "f"), shape=(4, 4), dtype="float32", zarr_format=3,
                          **array_codec_kwargs(make_codec(CodecSpec(codec="jpegls"))))


def test_the_choice_is_the_smallest_fast_enough_candidate_and_records_every_trial():
    samples = [microscopy((1, 128, 128), seed=s)[0] for s in range(4)]
    candidates = [CodecSpec(codec="blosc", cname="lz4", clevel=1, shuffle="noshuffle"), CodecSpec(codec="jpegls"),
                  CodecSpec(codec="blosc", cname="zstd", clevel=3, shuffle="bitshuffle")]
    chosen = choose_codec(samples, candidates, min_encode_mbps=0)
    trials = chosen.candidates
    assert chosen.objective == OBJECTIVE and chosen.sample_chunks == 4 and chosen.sample_bytes == 4 * 128 * 128 * 2
    assert all(t.ratio and t.encode_mbps and t.skipped is None for t in trials)
    assert [i for i, t in enumerate(trials) if t.decode_mbps] == [chosen.chosen]  # only the chosen is decoded
    assert chosen.chosen == min(range(3), key=lambda i: trials[i].stored_bytes)
    assert trials[1].codec.name == "imagecodecs_jpegls" and trials[1].codec.readable_by == WITH_IMAGECODECS
    assert trials[1].ratio > trials[0].ratio  # the image codec beats plain lz4 on microscopy
    # sizes within the tolerance count as equal: the fastest of them is taken
    everything_equal = choose_codec(samples, candidates, min_encode_mbps=0, size_tolerance=1.0)
    speeds = [t.encode_mbps for t in everything_equal.candidates]
    small = [i for i, t in enumerate(everything_equal.candidates)
             if t.stored_bytes <= 2 * min(u.stored_bytes for u in everything_equal.candidates)]
    assert everything_equal.chosen == max(small, key=lambda i: speeds[i]) and everything_equal.size_tolerance == 1.0
    # nothing is fast enough: the fastest is taken
    slowest_bar = choose_codec(samples, candidates, min_encode_mbps=1e9)
    assert slowest_bar.chosen == max(range(3), key=lambda i: slowest_bar.candidates[i].encode_mbps)
    # a candidate that cannot keep the dtype is skipped, with the reason
    floats = [s.astype("float32") for s in samples]
    skipped = choose_codec(floats, candidates, min_encode_mbps=0).candidates[1]
    assert skipped.skipped == "imagecodecs_jpegls does not encode float32" and skipped.ratio is None


def test_samples_are_whole_chunks_spread_over_the_image():
    regions = sample_regions((3, 100, 130), (1, 32, 32), 5)
    assert len(regions) == 5 and regions[0] == (slice(0, 1), slice(0, 32), slice(0, 32))
    assert all(r[1].stop - r[1].start == 32 and r[2].stop - r[2].start == 32 for r in regions)
    assert regions[-1][0] == slice(2, 3)  # the last plane too
    assert sample_regions((10, 10), (32, 32), 8) == [(slice(0, 10), slice(0, 10))]


# A Python where zarrchive is not installed: importing it fails and its zarr.codecs entry points are not there.
WITHOUT_ZARRCHIVE = """
import importlib.abc, importlib.metadata as metadata, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "zarrchive" or name.startswith("zarrchive."):
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NotInstalled())
found = metadata.entry_points

def entry_points(**select):
    every = found()  # (Python 3.11: a dict of groups; later: one list)
    flat = [e for group in every.values() for e in group] if hasattr(every, "values") else list(every)
    kept = metadata.EntryPoints(e for e in flat if not e.value.startswith("zarrchive"))
    return kept.select(**select) if select else kept

metadata.entry_points = entry_points
import zarr
a = zarr.open_array(sys.argv[1], mode="r")
print(int(a[...].astype("int64").sum()), a.metadata.codecs[0].codecs[0].to_dict()["name"])
"""


@pytest.mark.parametrize("dtype", ["uint16", "int16", "uint32", "float32"])
def test_a_pcodec_store_opens_in_zarr_python_without_zarrchive(tmp_path, dtype):
    data = (microscopy((2, 64, 48)).astype(np.int64) - (100 if dtype == "int16" else 0)).astype(dtype)
    path = tmp_path / dtype
    array = zarr.create_array(str(path), shape=data.shape, chunks=(1, 32, 16), shards=(2, 64, 48), dtype=dtype,
                              zarr_format=3, **array_codec_kwargs(make_codec(CodecSpec(codec="pcodec", level=8))))
    array[...] = data
    out = subprocess.run([sys.executable, "-c", WITHOUT_ZARRCHIVE, str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(int(data.astype(np.int64).sum())), "numcodecs.pcodec"]


def test_a_store_of_imagecodecs_jpegls_does_not_open_without_zarrchive(tmp_path):
    """The check above can fail: without zarrchive, and without imagecodecs-zarr (not in this environment), an
    image codec is not found."""
    data = microscopy((2, 64, 48))
    path = tmp_path / "jpegls"
    zarr.create_array(str(path), shape=data.shape, chunks=(1, 32, 16), dtype="uint16", zarr_format=3,
                      **array_codec_kwargs(make_codec(CodecSpec(codec="jpegls"))))[...] = data
    out = subprocess.run([sys.executable, "-c", WITHOUT_ZARRCHIVE, str(path)], capture_output=True, text=True)
    assert out.returncode != 0 and "imagecodecs_jpegls" in out.stderr


# ---------------------------------------------------------------- a reader's own, fresh Python

# What a reader sees of arrays: their pixels' sha256, shape, dtype and codecs (an image codec with its
# configuration, which imagecodecs' own codec must parse as zarrchive's does). One source for both sides: run in
# the reader's Python by READ_EACH, and here by ``_seen``.
SEEN = """
import hashlib
import numpy as np

def seen(arrays):
    return [[hashlib.sha256(np.ascontiguousarray(a[...]).tobytes()).hexdigest(), list(a.shape), str(a.dtype),
             [c.to_dict() if c.to_dict()["name"].startswith("imagecodecs_") else c.to_dict()["name"]
              for c in a.metadata.codecs[0].codecs]] for a in arrays]
"""

# Every store listed opens with what the reader installed; what it sees of each, as JSON.
READ_EACH = SEEN + """
import importlib.util, json, sys
import zarr
assert importlib.util.find_spec("zarrchive") is None, "zarrchive is installed here"
out = {}
for path, level_paths in json.load(open(sys.argv[1])).items():
    try:
        group = zarr.open_group(path, mode="r") if level_paths else None
        out[path] = seen([group[p] for p in level_paths] if level_paths else [zarr.open_array(path, mode="r")])
    except Exception as exc:
        out[path] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def _seen(arrays) -> list:
    """What READ_EACH prints of the arrays, as zarrchive reads them (``SEEN``, run here)."""
    namespace: dict = {}
    exec(SEEN, namespace)
    return namespace["seen"](arrays)


def _codec_names(seen: list) -> set[str]:
    return {c if isinstance(c, str) else c["name"] for [_, _, _, codecs] in seen for c in codecs}


def _newer_python() -> str | None:
    """A Python 3.12 or later on this machine (imagecodecs-zarr needs one), or None."""
    import glob
    import os
    import shutil

    found = [os.environ.get("ZARRCHIVE_READER_PYTHON", "")]
    found += [shutil.which(f"python3.{minor}") or "" for minor in range(20, 11, -1)]
    found += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[2-9]*/bin/python3")), reverse=True)
    for python in filter(None, found):
        try:  # (a pyenv shim is on the PATH whether or not its version is selected)
            out = subprocess.run([python, "-c", "import sys; print(sys.version_info >= (3, 12))"],
                                 capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip() == "True":
            return python
    return None


@pytest.fixture(scope="module")
def readers(tmp_path_factory):
    """Fresh virtual environments of a newer Python, each with zarr and what the landing page tells a visitor to
    install beside it for a codec (``landing.extra_install``), from the package registry: no zarrchive, none of
    its entry points. A function of that extra install line, each environment made once."""
    import os
    import shlex

    python = _newer_python()
    if python is None:
        pytest.skip("no Python 3.12 or later on this machine: imagecodecs-zarr needs one")
    made: dict[str, str] = {}

    def reader(extra: str) -> str:
        if extra not in made:
            venv = tmp_path_factory.mktemp("reader") / "venv"
            subprocess.run([python, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
            packages = ["zarr", *shlex.split(extra)]
            pins = Path(__file__).with_name("reader-constraints.txt")  # (what a visitor got, pinned)
            install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(pins),
                                      *packages],
                                     capture_output=True, text=True, timeout=900,
                                     env={k: v for k, v in os.environ.items() if not k.startswith("PIP_CONSTRAINT")})
            assert install.returncode == 0, f"pip install {' '.join(packages)} failed: {install.stderr[-2000:]}"
            made[extra] = str(venv / "bin" / "python")
        return made[extra]

    return reader


def _read_in(reader: str, tmp_path, stores: dict[str, list[str]]) -> dict:
    import os

    listing = tmp_path / f"stores-{len(list(tmp_path.glob('stores-*')))}.json"
    listing.write_text(json.dumps(stores))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}  # (the repository is not its path)
    out = subprocess.run([reader, "-c", READ_EACH, str(listing)], capture_output=True, text=True, timeout=600,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def _install_line(codec_name: str) -> str:
    from types import SimpleNamespace

    from zarrchive.archive.landing import extra_install

    return extra_install(SimpleNamespace(codec=SimpleNamespace(name=codec_name)))


def test_every_default_profile_candidate_opens_in_a_fresh_python_without_zarrchive(tmp_path, readers):
    """Every candidate of every default profile, on every dtype it takes, chunks of several planes in shards: a
    visitor's zarr-python with only what the landing page names for the codec reads the pixels zarrchive wrote."""
    from zarrchive.pixels.codecs import supports

    specs = {json.dumps(spec.model_dump(), sort_keys=True): spec for profile in ("compat", "max")
             for spec in load_settings(overrides={"compress": {"profile": profile}}).compress.candidates()}
    expected: dict[str, dict[str, list]] = {}  # install line: store: what it holds
    for n, spec in enumerate(specs.values()):
        for dtype in ("uint8", "uint16", "int16", "uint32", "float32"):
            if supports(spec, np.dtype(dtype)) is not None:
                continue
            data = microscopy((4, 64, 48), "uint16", seed=n).astype(dtype)
            if dtype == "int16":
                data = (data.astype(np.int32) - 400).astype(dtype)
            if dtype == "float32":
                data = data / np.float32(7)
            path = str(tmp_path / f"{n}-{spec.codec}-{dtype}")
            codec = make_codec(spec)
            array = zarr.create_array(path, shape=data.shape, chunks=(2, 32, 16), shards=(4, 64, 48), dtype=dtype,
                                      zarr_format=3, **array_codec_kwargs(codec))
            array[...] = data
            seen = _seen([zarr.open_array(path, mode="r")])
            assert seen[0][0] == hashlib.sha256(data.tobytes()).hexdigest()
            expected.setdefault(_install_line(codec.to_dict()["name"]), {})[path] = seen
    assert set(expected) == {"", " 'numcodecs[pcodec]'", " imagecodecs-zarr"}
    names = {name for stores in expected.values() for seen in stores.values() for name in _codec_names(seen)}
    assert {"imagecodecs_jpegls", "imagecodecs_jpegxl", "numcodecs.pcodec", "blosc", "zstd"} <= names
    # every dtype each image codec takes (uint8, uint16), not one of them
    jpegxl = [spec for spec in specs.values() if spec.codec == "jpegxl"]
    assert len(jpegxl) >= 2 and len([p for p in expected[" imagecodecs-zarr"] if "-jpegxl-" in p]) == 2 * len(jpegxl)
    for extra, stores in expected.items():
        assert _read_in(readers(extra), tmp_path, {path: [] for path in stores}) == stores, extra


def test_a_max_store_with_an_image_codec_opens_in_a_fresh_python_without_zarrchive(tmp_path, settings, scheduler,
                                                                                  readers):
    """A whole image archived with ``max`` where an image codec wins (8-bit: pcodec does not take it), every
    level read by the visitor's zarr-python as zarrchive reads it; without imagecodecs-zarr it does not open."""
    data = microscopy((3, 96, 80), "uint8")
    path = ome_tiff(tmp_path / "byte.ome.tif", data, "ZYX", {"x": 0.2, "y": 0.2, "z": 1.0})
    [(image, report)] = archive_images(path, tmp_path / "m", settings, scheduler, convert={"chunk_xy": 32},
                                       compress={"profile": "max", "min_encode_mbps": 0.0})
    assert report.codec.name.startswith("imagecodecs_") and report.codec.readable_by == WITH_IMAGECODECS
    levels = [level.path for level in image.levels]
    group = zarr.open_group(report.store, mode="r")
    expected = {report.store: _seen([group[p] for p in levels])}
    assert len(levels) >= 2 and expected[report.store][0][0] == hashlib.sha256(data[None].tobytes()).hexdigest()
    assert _install_line(report.codec.name) == " imagecodecs-zarr"
    assert _read_in(readers(" imagecodecs-zarr"), tmp_path, {report.store: levels}) == expected
    without = _read_in(readers(""), tmp_path, {report.store: levels})[report.store]
    assert "UnknownCodecError" in without or report.codec.name in without  # the check can fail


def test_max_profile_stores_less_than_compat_with_a_codec_readable_without_zarrchive(tmp_path, settings, scheduler):
    data = microscopy((2, 200, 260))
    path = ome_tiff(tmp_path / "m.ome.tif", data, "ZYX", {"x": 0.2, "y": 0.2, "z": 1.0})
    [(_, compat)] = archive_images(path, tmp_path / "c", settings, scheduler, convert={"chunk_xy": 64},
                                   compress={"profile": "compat"})
    [(image, best)] = archive_images(path, tmp_path / "m", settings, scheduler, convert={"chunk_xy": 64},
                                     compress={"profile": "max", "min_encode_mbps": 0.0})
    assert best.selection.candidates[best.selection.chosen].codec == best.codec
    assert best.codec.name in ("numcodecs.pcodec", "imagecodecs_jpegls", "imagecodecs_jpegxl")
    assert best.codec.readable_by == (WITH_PCODEC if best.codec.name == "numcodecs.pcodec" else WITH_IMAGECODECS)
    assert compat.codec.readable_by == "any Zarr v3 reader"
    assert best.bytes_out < 0.9 * compat.bytes_out
    np.testing.assert_array_equal(zarr.open_array(f"{best.store}/0", mode="r")[...], data[None])
    assert best.chunks_verified == compat.chunks_verified  # every chunk of every level read back and compared


def test_profiles_are_configuration_with_clear_errors():
    assert [c.codec for c in load_settings().compress.candidates()][:1] == ["blosc"]
    default = {profile: {c.codec for c in load_settings(overrides={"compress": {"profile": profile}}).compress.candidates()}
               for profile in ("compat", "max")}
    # readable without zarrchive (the fresh-Python tests above)
    assert default == {"compat": {"blosc", "zstd"}, "max": {"blosc", "zstd", "pcodec", "jpegls", "jpegxl"}}
    floors = {p: load_settings(overrides={"compress": {"profile": p}}).compress.floor() for p in ("compat", "max")}
    assert floors == {"compat": 40.0, "max": 20.0}
    assert load_settings(overrides={"compress": {"profile": "max", "min_encode_mbps": 5}}).compress.floor() == 5.0
    from zarrchive.config import CompressSettings

    with pytest.raises(ValueError, match="no floor for the profile 'max'"):
        CompressSettings(profile="max", profiles={"max": [CodecSpec(codec="zstd")]}, min_encode_mbps={"compat": 40})
    with pytest.raises(ConfigError, match="must be a number of MB/s, 0 or more"):
        load_settings(overrides={"compress": {"min_encode_mbps": {"compat": -1}}})
    with pytest.raises(ConfigError, match="must be a number of MB/s, 0 or more"):
        load_settings(overrides={"compress": {"min_encode_mbps": float("nan")}})
    # the identity of what a profile writes: its own candidates and floor, not another profile's
    compat = load_settings().compress.identity()
    assert load_settings(overrides={"compress": {"min_encode_mbps": {"max": 5}}}).compress.identity() == compat
    assert load_settings(overrides={"compress": {"min_encode_mbps": 40}}).compress.identity() == compat
    assert load_settings(overrides={"compress": {"min_encode_mbps": {"compat": 5}}}).compress.identity() != compat
    other_max = {"compress": {"profiles": {"max": [{"codec": "zstd", "clevel": 9}]}}}
    assert load_settings(overrides=other_max).compress.identity() == compat
    assert load_settings(overrides={"compress": {"profile": "max"}}).compress.identity() != compat
    with pytest.raises(ConfigError, match="OME-NGFF 0.4 .* blosc or zstd"):
        load_settings(overrides={"compress": {"profile": "max", "ngff": "0.4"}})
    with pytest.raises(ConfigError, match="compress.profiles.max.0.codec"):
        load_settings(overrides={"compress": {"profiles": {"max": [{"codec": "webp"}]}}})


def test_a_single_candidate_that_cannot_keep_the_image_is_refused_naming_it(tmp_path, settings, scheduler):
    from zarrchive.errors import InputError

    path = ome_tiff(tmp_path / "byte.ome.tif", microscopy((1, 64, 48)).astype("uint8"), "ZYX", {"x": 0.2, "y": 0.2})
    with pytest.raises(InputError, match=r"byte.ome.tif: the codec profile's one candidate cannot store it "
                                         r"losslessly: pcodec does not encode uint8"):
        archive_images(path, tmp_path / "w", settings, scheduler,
                       compress={"profile": "max", "profiles": {"max": [CodecSpec(codec="pcodec", level=8)]}})


def test_speeds_are_timed_again_only_where_they_decide_and_a_codec_failing_then_is_skipped(monkeypatch):
    """Every candidate encodes the sample once; the speeds that decide the choice (a candidate too slow on its
    first run but small enough, the candidates of equal size) are timed again, and one that fails then is skipped
    like one failing at first, the choice made among the others."""
    from zarrchive.pixels import codecs

    samples = [microscopy((1, 64, 64), seed=s)[0] for s in range(2)]
    candidates = [CodecSpec(codec="blosc", cname="lz4", clevel=1, shuffle="noshuffle"),
                  CodecSpec(codec="zstd", clevel=3), CodecSpec(codec="zstd", clevel=5)]
    runs: dict[str, list[int]] = {}
    failing: set[str] = set()
    original = codecs._encoded

    def counted(codec, chunks, repeats=1, within=float("inf")):
        name = json.dumps(codec.to_dict(), sort_keys=True)
        runs.setdefault(name, []).append(repeats)
        if name in failing and len(runs[name]) > 1:
            raise RuntimeError("the encoder gave up")
        return original(codec, chunks, repeats, within)

    monkeypatch.setattr(codecs, "_encoded", counted)
    def named(i):
        return json.dumps(make_codec(candidates[i]).to_dict(), sort_keys=True)

    plain = choose_codec(samples, candidates, min_encode_mbps=0, size_tolerance=0)
    assert runs == {named(i): [1] for i in range(3)}  # sizes differ, all fast enough: nothing timed again

    runs.clear()
    equal = choose_codec(samples, candidates, min_encode_mbps=0, size_tolerance=10.0)  # all the same size
    assert runs == {named(i): [1, 2] for i in range(3)}
    assert equal.chosen == max(range(3), key=lambda i: (equal.candidates[i].encode_mbps, -i))

    runs.clear()
    failing.add(json.dumps(make_codec(candidates[equal.chosen]).to_dict(), sort_keys=True))
    without = choose_codec(samples, candidates, min_encode_mbps=0, size_tolerance=10.0)
    assert without.candidates[equal.chosen].skipped == "RuntimeError: the encoder gave up"
    assert without.chosen != equal.chosen and without.candidates[without.chosen].skipped is None

    runs.clear()
    failing.clear()
    everything = choose_codec(samples, candidates, min_encode_mbps=0, time_all=True)  # a benchmark's table
    assert all(r == [1, 2] for r in runs.values()) and everything.chosen == plain.chosen
    assert all(t.decode_mbps for t in everything.candidates)  # every candidate decoded: the table's speeds

    # a sample too large to keep its encodings: the chosen candidate is encoded once more, to be decoded
    runs.clear()
    monkeypatch.setattr(codecs, "KEPT_BYTES", 0)
    again = choose_codec(samples, candidates, min_encode_mbps=0, size_tolerance=0)
    assert again.chosen == plain.chosen and runs == {named(i): [1, 1] if i == plain.chosen else [1] for i in range(3)}
    assert [i for i, t in enumerate(again.candidates) if t.decode_mbps] == [again.chosen]


def test_only_the_chosen_candidate_is_decoded_and_one_that_does_not_give_the_sample_back_is_skipped(monkeypatch):
    """The candidates' sizes and speeds come from encoding alone; the one chosen is decoded and compared bit for
    bit. A candidate whose decoding differs from the sample (a lossy codec, a broken one) or fails is skipped,
    with why, and the choice is made again among the others; one never chosen is never decoded."""
    from zarrchive.pixels import codecs

    samples = [microscopy((1, 64, 64), seed=s)[0] for s in range(2)]
    candidates = [CodecSpec(codec="blosc", cname="lz4", clevel=1, shuffle="noshuffle"),
                  CodecSpec(codec="zstd", clevel=3), CodecSpec(codec="blosc", cname="zstd", clevel=5,
                                                              shuffle="bitshuffle")]
    honest = choose_codec(samples, candidates, min_encode_mbps=0)
    order = sorted(range(3), key=lambda i: honest.candidates[i].stored_bytes)
    assert len({t.stored_bytes for t in honest.candidates}) == 3  # (so the order does not hang on their speeds)
    assert honest.chosen == order[0]
    decodes: list[str] = []
    original = codecs._coder
    spoiled: dict[str, str] = {}  # codec name -> how its decoding goes wrong

    def coder(codec, sample):
        encode, decode = original(codec, sample)
        name = json.dumps(codec.to_dict(), sort_keys=True)

        def watched(data):
            decodes.append(name)
            if spoiled.get(name) == "raises":
                raise RuntimeError("the decoder gave up")
            back = decode(data).copy()
            if spoiled.get(name) == "lossy":
                back.flat[0] ^= 1
            return back

        return encode, watched

    monkeypatch.setattr(codecs, "_coder", coder)
    name = [json.dumps(make_codec(c).to_dict(), sort_keys=True) for c in candidates]
    spoiled[name[order[0]]] = "lossy"
    spoiled[name[order[2]]] = "raises"  # the largest: never chosen, so never decoded, so never found out
    chosen = choose_codec(samples, candidates, min_encode_mbps=0)
    assert chosen.chosen == order[1] and chosen.candidates[order[1]].decode_mbps
    assert chosen.candidates[order[0]].skipped == (
        f"ValueError: {make_codec(candidates[order[0]]).to_dict()['name']} did not round-trip the sample losslessly")
    assert chosen.candidates[order[2]].skipped is None and chosen.candidates[order[2]].decode_mbps is None
    assert name[order[2]] not in decodes and set(decodes) == {name[order[0]], name[order[1]]}

    spoiled[name[order[1]]] = "raises"
    del spoiled[name[order[2]]]
    last = choose_codec(samples, candidates, min_encode_mbps=0)
    assert last.chosen == order[2] and last.candidates[order[1]].skipped == "RuntimeError: the decoder gave up"
    spoiled[name[order[2]]] = "lossy"
    with pytest.raises(ValueError, match="no codec candidate can encode this image"):
        choose_codec(samples, candidates, min_encode_mbps=0)


def test_the_landing_page_names_the_exact_install_line_for_each_codec():
    """What the fresh-Python tests above install is what the landing page tells a visitor."""
    from types import SimpleNamespace

    from zarrchive.archive.landing import _codec_note

    def report(name):
        return SimpleNamespace(codec=SimpleNamespace(name=name))

    assert _codec_note([report("blosc")]) == ""
    image_codec = _codec_note([report("imagecodecs_jpegxl"), report("imagecodecs_jpegls")])
    assert "<code>pip install zarr imagecodecs-zarr</code>" in image_codec and "Python 3.12" in image_codec
    assert "<code>pip install zarr 'numcodecs[pcodec]'</code>" in _codec_note([report("numcodecs.pcodec")])
    assert [_install_line(n) for n in ("blosc", "zstd", "numcodecs.pcodec", "imagecodecs_jpegls")] == [
        "", "", " 'numcodecs[pcodec]'", " imagecodecs-zarr"]


def test_pcodec_made_in_many_threads_warns_nothing_and_leaves_the_process_warnings_as_they_were():
    """numcodecs' warning that pcodec is not in the Zarr v3 specification is filtered once for the process when
    zarrchive's codecs are imported, not around each codec made (which swaps the process's filters: a worker's
    threads make codecs at once). In a fresh process, as a worker is (pytest keeps the filters of its collection
    to itself)."""
    script = """
import sys, warnings
sys.setswitchinterval(1e-6)  # threads switch often: interleaved catch_warnings blocks would show
from concurrent.futures import ThreadPoolExecutor
from zarrchive.config import CodecSpec
from zarrchive.pixels.codecs import make_codec
filters, shown = list(warnings.filters), warnings.showwarning
with ThreadPoolExecutor(8) as pool:
    list(pool.map(lambda _: make_codec(CodecSpec(codec="pcodec", level=8)), range(5000)))
assert warnings.showwarning is shown and warnings.filters == filters, "the process's warnings changed"
warnings.warn("a warning still shown")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "a warning still shown" in done.stderr and "Numcodecs" not in done.stderr


class FakeCodecs:
    """Candidates whose sizes and speeds are set, not measured (``codecs._encoded`` and ``_decoded`` replaced):
    each encode is counted, by codec, with the runs it was asked for."""

    def __init__(self, monkeypatch, candidates, figures):
        from zarrchive.pixels import codecs

        self.names = [json.dumps(make_codec(c).to_dict(), sort_keys=True) for c in candidates]
        self.figures = dict(zip(self.names, figures))  # name: (bytes, MB/s)
        self.runs: dict[str, list[int]] = {}

        def encoded(codec, chunks, repeats=1, within=float("inf")):
            name = json.dumps(codec.to_dict(), sort_keys=True)
            self.runs.setdefault(name, []).append(repeats)
            size, speed = self.figures[name]
            seconds = sum(c.nbytes for c in chunks) / 1e6 / speed
            if seconds > within:
                mbps = sum(c.nbytes for c in chunks) / 1e6 / within
                raise codecs.TooSlow(f"(under {mbps:.3g} MB/s): given up after {seconds:g} s")
            return [b"x" * size], seconds

        monkeypatch.setattr(codecs, "_encoded", encoded)
        monkeypatch.setattr(codecs, "_decoded", lambda codec, chunks, data: 1e-3)

    def tried(self, i):
        return self.runs.get(self.names[i], [])


SLOW_LADDER = [CodecSpec(codec="blosc", cname="zstd", clevel=5, shuffle="shuffle", baseline=True),
               CodecSpec(codec="zstd", clevel=5), CodecSpec(codec="zstd", clevel=19, slow=True),
               CodecSpec(codec="jpegxl", level=3), CodecSpec(codec="jpegxl", level=7, slow=True),
               CodecSpec(codec="jpegxl", level=9, slow=True)]


def test_a_slow_candidate_is_tried_only_while_its_family_leads_and_chosen_only_within_the_image_s_time(monkeypatch):
    """A family's slow levels are climbed while the family leads and each level gains; they are chosen at the speed
    that encodes this image within the profile's time; never timed twice; a tie goes to a candidate not slow."""
    samples = [np.zeros((64, 64), np.uint8)]

    def choose(figures, floor=20.0, slow_mbps=0.01, **kwargs):
        fake = FakeCodecs(monkeypatch, SLOW_LADDER, figures)
        return choose_codec(samples, SLOW_LADDER, floor, 0.01, slow_mbps=slow_mbps, **kwargs), fake

    def skipped(selection):
        return {i: t.skipped for i, t in enumerate(selection.candidates) if t.skipped}

    # JPEG-XL leads and each level gains: both slow levels tried, once each, and the smallest chosen
    cell = [(1000, 50), (900, 100), (800, 3), (600, 30), (450, 4), (420, 0.7)]
    chosen, fake = choose(cell)
    assert chosen.chosen == 5 and chosen.slow_mbps == 0.01
    assert skipped(chosen) == {2: "not tried: zstd 5 stores 1.500x the smallest so far"}
    assert [fake.tried(i) for i in range(6)] == [[1], [1], [], [1], [1], [1]]
    assert chosen.candidates[5].decode_mbps and chosen.candidates[4].decode_mbps is None
    # effort 7 gains less than the tolerance: effort 9 is not tried, and the tie goes to effort 3, not slow
    flat = [(1000, 50), (900, 100), (800, 3), (600, 30), (597, 4), (420, 0.7)]
    chosen, fake = choose(flat)
    assert chosen.chosen == 3 and fake.tried(5) == [] and fake.tried(3) == [1] and fake.tried(4) == [1]
    assert skipped(chosen)[5] == "not tried: jpegxl 7 stored no more than 1% less than jpegxl 3"
    # plain zstd leads (compat on 8-bit pictures): zstd 19 tried and chosen, smaller than the baseline
    picture = [(1000, 50), (600, 100), (500, 3), (700, 30), (680, 4), (420, 0.7)]
    chosen, fake = choose(picture)
    assert chosen.chosen == 2 and fake.tried(4) == [] and fake.tried(5) == []
    assert skipped(chosen)[4] == "not tried: jpegxl 3 stores 1.400x the smallest so far"
    assert skipped(chosen)[5] == "not tried: jpegxl 7 was not tried, or not to the end"
    # a family leads while its last level is within slow_within (5 %) of the smallest so far
    near = [(1000, 50), (624, 100), (500, 3), (600, 30), (597, 4), (420, 0.7)]
    assert choose(near)[0].chosen == 2
    chosen, fake = choose(near, slow_within=0.01)
    assert chosen.chosen == 3 and fake.tried(2) == [] and chosen.slow_within == 0.01
    assert skipped(chosen)[2] == "not tried: zstd 5 stores 1.040x the smallest so far"
    # a larger image: effort 7 is tried (effort 3 is fast enough that it might be), given up as soon as it is
    # slower than this image allows, and effort 9 is not tried at all
    chosen, fake = choose(cell, slow_mbps=10.0)
    assert chosen.chosen == 3 and fake.tried(4) == [1] and fake.tried(5) == [] and chosen.slow_mbps == 10.0
    assert skipped(chosen)[4].startswith("too slow for this image (under 10 MB/s): given up after")
    assert skipped(chosen)[5] == "not tried: jpegxl 7 was not tried, or not to the end"
    # a smaller one: effort 7 is fast enough for it and chosen; effort 9, tried, is given up
    chosen, fake = choose(cell, slow_mbps=3.0)
    assert chosen.chosen == 4 and fake.tried(5) == [1]
    assert skipped(chosen)[5].startswith("too slow for this image (under 3 MB/s): given up after")
    # the leader is itself too slow for this image: nothing of its family is tried
    chosen, fake = choose(cell, slow_mbps=31.0, floor=40.0)
    assert fake.tried(4) == [] and skipped(chosen)[4].startswith("not tried: jpegxl 3 encodes at 30 MB/s")
    # an image too large for slow_seconds to give more than the floor: no slow candidate is tried
    chosen, fake = choose(cell, slow_mbps=20.0)
    assert [fake.tried(i) for i in (2, 4, 5)] == [[], [], []] and chosen.chosen == 3 and chosen.slow_mbps == 20.0
    assert set(skipped(chosen)) == {2, 4, 5}
    assert all("too large to take 20 MB/s" in why for why in skipped(chosen).values())
    # no slow_seconds: the same (the floor holds for every candidate)
    chosen, fake = choose(cell, slow_mbps=float("inf"))
    assert chosen.chosen == 3 and fake.tried(5) == [] and chosen.slow_mbps == 20.0
    # no floor at all: every candidate is eligible whatever its speed, slow ones too (while their family leads)
    chosen, fake = choose(cell, floor=0.0, slow_mbps=float("inf"))
    assert chosen.chosen == 5 and fake.tried(5) == [1] and fake.tried(2) == []
    # sizes equal among slow levels only: the fastest of them on its one run, none timed again
    tie = [(1000, 50), (900, 100), (800, 3), (600, 30), (450, 4), (448, 0.7)]
    chosen, fake = choose(tie)
    assert chosen.chosen == 4 and fake.tried(4) == [1] and fake.tried(5) == [1]
    # a slow level ties with one not slow and is faster: the one not slow still wins
    faster_slow = [(1000, 50), (600, 45), (597, 60), (700, 30), (680, 4), (420, 0.7)]
    chosen, fake = choose(faster_slow)
    assert chosen.chosen == 1 and fake.tried(2) == [1] and fake.tried(1) == [1]
    # a benchmark's table tries every candidate, slow or not
    chosen, fake = choose(cell, slow_mbps=float("inf"), time_all=True)
    assert all(fake.tried(i) for i in range(6)) and chosen.chosen == 3
    # a slow candidate with no family before it is never tried
    alone = [CodecSpec(codec="zstd", clevel=3), CodecSpec(codec="pcodec", level=12, slow=True)]
    FakeCodecs(monkeypatch, alone, [(100, 100), (10, 1)])
    lonely = choose_codec([np.zeros((64, 64), np.uint16)], alone, 20.0, 0.01, slow_mbps=0.01)
    assert lonely.chosen == 0
    assert lonely.candidates[1].skipped == "not tried: no candidate of its family is listed before it"
    assert lonely.candidates[1].ratio is None
    # a profile without slow candidates records no slow_mbps
    assert choose_codec(samples, alone[:1], 20.0, slow_mbps=0.01).slow_mbps is None


def test_real_pictures_take_the_slow_levels_of_the_leading_family_where_they_pay(monkeypatch):
    """scikit-image's cell (8-bit, 660 x 550): compat takes zstd 19 (zstd 5 leads: 16 % smaller) and max JPEG-XL
    effort 9 (effort 3 leads, effort 7 gains 29 %, 9 another 5 %), as on moon, where effort 3 does not lead; on a
    16-bit tile of cell, as many-image runs have, compat tries blosc's slow level (blosc leads) but not zstd 19
    (zstd 5 does not lead): a many-image run pays for the one trial (about 3 ms a 256 x 256 tile) only."""
    from skimage import data

    cell = data.cell()
    chosen = {}
    for profile in ("compat", "max"):
        settings = load_settings(overrides={"compress": {"profile": profile}}).compress
        candidates = settings.candidates()
        selection = choose_codec([cell], candidates, **settings.choice(cell.nbytes))
        spec = candidates[selection.chosen]
        chosen[profile] = (spec.codec, spec.clevel if spec.codec == "zstd" else spec.level)
        quick = choose_codec([cell], [c for c in candidates if not c.slow], settings.floor(), settings.size_tolerance)
        assert selection.candidates[selection.chosen].stored_bytes < 0.95 * quick.candidates[quick.chosen].stored_bytes
        assert selection.slow_mbps == round(cell.nbytes / 1e6 / settings.slow_budget(), 3)
        assert selection.slow_within == settings.slow_reach()
    assert chosen == {"compat": ("zstd", 19), "max": ("jpegxl", 9)}
    # moon (8-bit): JPEG-XL's effort 3 stores 1.7x the smallest there, effort 7 0.38x of effort 3: max reaches it
    moon = data.moon()
    settings = load_settings(overrides={"compress": {"profile": "max"}}).compress
    selection = choose_codec([moon], settings.candidates(), **settings.choice(moon.nbytes))
    chosen_spec = settings.candidates()[selection.chosen]
    assert (chosen_spec.codec, chosen_spec.level) == ("jpegxl", 9)
    settings = load_settings().compress
    tile = (cell[:256, :256].astype(np.uint16) * 40 + np.random.default_rng(0).poisson(20, (256, 256)))
    tile = tile.astype(np.uint16)
    fake_free = choose_codec([tile], settings.candidates(), **settings.choice(tile.nbytes))
    slow = {c.label(): t for t, c in zip(fake_free.candidates, settings.candidates()) if c.slow}
    assert set(slow) == {"blosc zstd 7 bitshuffle", "zstd 19"}
    assert slow["zstd 19"].skipped.startswith("not tried: zstd 5 stores")
    assert slow["blosc zstd 7 bitshuffle"].skipped is None and slow["blosc zstd 7 bitshuffle"].stored_bytes


def test_slow_seconds_is_configuration_and_part_of_the_identity():
    from zarrchive.config import CompressSettings

    budgets = {p: load_settings(overrides={"compress": {"profile": p}}).compress.slow_budget()
               for p in ("compat", "max")}
    assert budgets == {"compat": 2.0, "max": 20.0}
    reaches = {p: load_settings(overrides={"compress": {"profile": p}}).compress.slow_reach()
               for p in ("compat", "max")}
    assert reaches == {"compat": 0.05, "max": 1.0}
    assert load_settings(overrides={"compress": {"slow_within": 0.2}}).compress.slow_reach() == 0.2
    with pytest.raises(ConfigError, match="slow_within must be a fraction, 0 or more"):
        load_settings(overrides={"compress": {"slow_within": {"max": -0.5}}})
    compat = load_settings().compress
    assert compat.slow_floor(4_000_000) == 2.0 and compat.identity()["slow_seconds"] == 2.0
    assert [c.get("slow") for c in compat.identity()["profiles"]["compat"]].count(True) == 2
    # a profile with no slow candidate: its identity is what it was before slow candidates existed
    plain = CompressSettings(profile="compat", profiles={"compat": [CodecSpec(codec="zstd")]}, slow_seconds=5)
    assert "slow_seconds" not in plain.identity() and "slow_within" not in plain.identity()
    assert "slow" not in plain.identity()["profiles"]["compat"][0]
    assert "slow_seconds" not in CompressSettings(profile="fixed", slow_seconds=5).identity()
    # a profile left out of a per-profile slow_within has the default
    assert CompressSettings(profile="max", profiles={"max": [CodecSpec(codec="zstd")]}, min_encode_mbps=1,
                            slow_within={"compat": 0.3}).slow_reach() == 0.05
    assert compat.identity() != compat.model_copy(update={"slow_seconds": 3.0}).identity()
    none = load_settings(overrides={"compress": {"slow_seconds": 0}}).compress
    assert none.slow_budget() == 0 and none.slow_floor(10) == float("inf")
    with pytest.raises(ConfigError, match="must be a number of seconds, 0 or more"):
        load_settings(overrides={"compress": {"slow_seconds": {"compat": -1}}})
    with pytest.raises(ValueError, match="its baseline cannot be slow"):
        CompressSettings(profile="compat", profiles={"compat": [CodecSpec(codec="zstd", baseline=True, slow=True)]})
    with pytest.raises(ValueError, match="slow_seconds must be a number of seconds"):
        CompressSettings(profile="compat", profiles={"compat": [CodecSpec(codec="zstd")]}, slow_seconds=float("nan"))


@pytest.mark.parametrize("path", ["whole_image", "stream_region"])
def test_an_archived_picture_is_stored_with_the_slow_level_its_size_allows(tmp_path, settings, scheduler, monkeypatch,
                                                                           path):
    """Through the compress task, a small image's whole pass and a streamed one alike: the image's own time for slow
    candidates (for the bytes its chunks encode: padded where the image's end cuts them) is recorded, and cell is
    stored with zstd 19 by compat, read back bit for bit."""
    from skimage import data

    from builders import plain_tiff
    from zarrchive.tasks import compress

    if path == "stream_region":
        monkeypatch.setattr(compress, "region_budget", lambda client: 0)
    cell = data.cell()
    source = plain_tiff(tmp_path / "cell.tif", cell)
    [(_image, report)] = archive_images(source, tmp_path / "w", settings, scheduler)
    padded = int(np.prod([-(-n // c) * c for n, c in zip(_image.levels[0].shape, _image.levels[0].chunks)]))
    assert padded >= cell.size and report.selection.slow_mbps == round(padded / 1e6 / 2.0, 3)  # its chunks, encoded
    assert (report.codec.name, report.codec.configuration.get("level")) == ("zstd", 19)
    np.testing.assert_array_equal(zarr.open_array(f"{report.store}/0", mode="r")[...].squeeze(), cell)


def test_a_slow_trial_is_given_up_as_soon_as_it_is_too_slow_and_the_time_counts_padded_chunks():
    from types import SimpleNamespace

    from zarrchive.pixels import codecs
    from zarrchive.tasks.compress import _encoded_bytes

    samples = [microscopy((1, 64, 64), seed=s)[0] for s in range(3)]
    with pytest.raises(codecs.TooSlow, match="given up after 1 of 3 sample chunks"):
        codecs._encoded(make_codec(CodecSpec(codec="zstd", clevel=19)), samples, within=0.0)
    encoded, seconds = codecs._encoded(make_codec(CodecSpec(codec="zstd", clevel=3)), samples, within=60.0)
    assert len(encoded) == 3 and 0 < seconds < 60
    image = SimpleNamespace(levels=[SimpleNamespace(shape=(1, 600, 1100), chunks=(1, 512, 512))], dtype="uint16")
    assert _encoded_bytes(image) == 2 * 3 * 512 * 512 * 2  # the chunks the image's end cuts, encoded whole


def test_the_levels_codec_is_the_fastest_storing_no_more_than_level_0_s_and_is_proven():
    """``choose_levels_codec``: candidate 0 (level 0's codec) bounds the bytes; a faster candidate that stores more
    (blosc with no compression) is never chosen, a smaller and faster one is; the one chosen was decoded and
    compared; a candidate that cannot store the pixels is skipped with why; level 0's alone is level 0's."""
    from zarrchive.pixels.codecs import LEVELS_OBJECTIVE, choose_levels_codec

    samples = [microscopy((256, 256), seed=s) for s in range(4)]
    level0 = CodecSpec(codec="zstd", clevel=12)  # slow on noise, and larger than a bit shuffle's
    copy = CodecSpec(codec="blosc", cname="lz4", clevel=0, shuffle="noshuffle")  # no compression: fastest, largest
    quick = CodecSpec(codec="blosc", cname="zstd", clevel=1, shuffle="bitshuffle")
    image = CodecSpec(codec="jpegls")  # not a levels candidate in a profile, but any that cannot store is skipped
    chosen = choose_levels_codec([s.astype("float32") for s in samples], [CodecSpec(codec="zstd"), image])
    assert chosen.chosen == 0 and chosen.candidates[1].skipped
    selection = choose_levels_codec(samples, [level0, copy, quick])
    figures = selection.candidates
    assert selection.objective == LEVELS_OBJECTIVE and selection.sample_chunks == 4
    assert figures[1].stored_bytes > figures[0].stored_bytes > figures[2].stored_bytes
    assert figures[1].encode_mbps > figures[2].encode_mbps > figures[0].encode_mbps
    assert selection.chosen == 2 and figures[2].decode_mbps and figures[0].decode_mbps is None
    assert choose_levels_codec(samples, [level0]).chosen == 0


def test_levels_only_candidates_and_levels_codec_are_configuration_and_part_of_the_identity():
    from zarrchive.config import CompressSettings

    compat = load_settings().compress
    assert compat.levels_codec == "fastest" and not any(spec.levels for spec in compat.candidates())
    levels = compat.levels_candidates()
    assert [s.label() for s in levels if s.levels] == ["blosc zstd 1 bitshuffle"]
    assert all(s.codec in ("blosc", "zstd") and not s.slow for s in levels)
    assert compat.identity()["levels_codec"] == "fastest"
    assert [c.get("levels") for c in compat.identity()["profiles"]["compat"]].count(True) == 1
    same = compat.model_copy(update={"levels_codec": "same"}).identity()
    assert same != compat.identity() and "levels_codec" not in same  # levels-only candidates then change nothing:
    assert not any(c.get("levels") for c in same["profiles"]["compat"])  # the identity stores had before them
    assert len(same["profiles"]["compat"]) == len(compat.candidates())
    assert load_settings(overrides={"compress": {"levels_codec": "same"}}).compress.levels_candidates() == []
    fixed = CompressSettings(profile="fixed")
    assert fixed.levels_candidates() == [] and "levels_codec" not in fixed.identity()
    for bad in (CodecSpec(codec="jpegxl", level=3, levels=True),
                CodecSpec(codec="zstd", levels=True, slow=True), CodecSpec(codec="zstd", levels=True, baseline=True)):
        with pytest.raises(ValueError, match="is for the levels below level 0 only"):
            CompressSettings(profile="compat", profiles={"compat": [CodecSpec(codec="zstd"), bad]})
    with pytest.raises(ValueError, match="has no candidate for level 0"):
        CompressSettings(profile="compat", profiles={"compat": [CodecSpec(codec="zstd", levels=True)]})
    with pytest.raises(ConfigError, match="levels_codec"):
        load_settings(overrides={"compress": {"levels_codec": "smallest"}})
