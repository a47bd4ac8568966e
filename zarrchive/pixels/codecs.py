"""Codecs: imagecodecs' lossless image codecs as Zarr v3 codecs, the codec profiles, and choosing per image.

Zarr v3 readers all have the core codecs (``bytes``, ``blosc``, ``zstd``…);
imagecodecs' image codecs (JPEG-XL, JPEG-LS, HTJ2K) and pcodec compress
microscopy markedly better. Each class here is an *array → bytes* codec (it
replaces ``bytes``: an image codec needs the chunk's shape and dtype) named
``imagecodecs_<codec>``, encoding a chunk as one lossless image of its last two
axes (leading singleton axes dropped; other leading axes stacked along y).

Names and configurations are those of imagecodecs' own Zarr v3 codecs
(``imagecodecs.zarr``, registered by the ``imagecodecs-zarr`` package of
imagecodecs' author), which decode these chunks: a reader with Python 3.12 or
later opens the stores with ``pip install zarr imagecodecs-zarr`` and nothing
of zarrchive. zarrchive registers the same names through its own ``zarr.codecs``
entry points, for Python 3.11 (where imagecodecs-zarr does not install) and
for writing.

``choose_codec`` encodes a sample of an image's chunks with every candidate of
the profile and picks by a documented objective (``OBJECTIVE``); ``choose_levels_codec``
picks the codec of the levels below level 0 (``LEVELS_OBJECTIVE``): derived
pixels, for viewers, are written faster where that costs no byte more.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.codecs import BloscCodec, ZstdCodec
from zarr.core.common import parse_named_configuration

from zarrchive.pixels.blocks import bits
from zarrchive.config import CodecSpec
from zarrchive.records import CodecChoice, CodecSelection, CodecTrial

ANY_READER = "any Zarr v3 reader"
WITH_IMAGECODECS = ("zarr-python 3.2 or later with imagecodecs' Zarr codecs (Python 3.12 or later: pip install zarr "
                    "imagecodecs-zarr), or with zarrchive installed")
WITH_PCODEC = "zarr-python with numcodecs' pcodec (pip install zarr 'numcodecs[pcodec]')"
PCODEC_DTYPES = ("uint16", "uint32", "uint64", "int16", "int32", "int64", "float16", "float32", "float64")
OBJECTIVE = ("the smallest stored size over the sampled chunks among candidates that encode at least "
             "min_encode_mbps MB/s on one thread, the profile's baseline whatever its speed, and its slow candidates "
             "that encode at least slow_mbps (the image's level 0 within the profile's slow_seconds; tried only where "
             "that is under min_encode_mbps), sizes within "
             "size_tolerance of the smallest counting as equal (then the fastest of them, one not slow before a "
             "slow one, but none larger than the baseline); if none is that fast, the fastest. A slow candidate is "
             "tried only while its family (the codec; blosc's with its compressor and shuffle) leads: the member "
             "listed before it was tried, stores within slow_within of the smallest so far, encodes fast enough "
             "for a slower one to be eligible, and, if slow itself, stored less than the member before it by more "
             "than size_tolerance")
# numcodecs' codecs in Zarr v3 (pcodec) warn, each time one is made or read, that they are "not in the Zarr version 3
# specification": known, and said on the landing page. Filtered once for the process, not around each call:
# warnings.catch_warnings swaps the process's filters, and a worker's threads make codecs at once.
warnings.filterwarnings("ignore", message="Numcodecs codecs are not in the Zarr version 3 specification",
                        category=UserWarning)
LEVELS_SPEED_TOLERANCE = 0.1  # (so that measured speeds a few per cent apart do not decide between runs)
LEVELS_OBJECTIVE = ("the levels below level 0: among level 0's codec (candidate 0) and the profile's blosc and zstd "
                    "candidates that are not slow (those slower than level 0's codec on its sample left out), those "
                    "storing level 1's pixels over that sample (each sampled chunk of level 0 widened to the 2-blocks "
                    "its level-1 pixels are made of, then halved) in no more bytes than level 0's codec; the fastest "
                    "to encode them, speeds within "
                    f"{LEVELS_SPEED_TOLERANCE:.0%} of the fastest counting as equal (then the smallest of them)")
TIMED_RUNS = 3  # a speed that decides the choice: the best of this many runs
KEPT_BYTES = 1 << 20  # a sample up to this size keeps its encodings, for the chosen one to be decoded


@dataclass(frozen=True)
class ImageCodec(ArrayBytesCodec):
    """A lossless imagecodecs image codec as a Zarr v3 array -> bytes codec.

    ``level`` is the one setting zarrchive varies; its configuration is written in imagecodecs.zarr's words
    (``level_key``, with the settings that make the codec lossless, ``lossless``), so that imagecodecs' own codec
    of the same name reads it as the same codec."""

    codec_name: ClassVar[str]
    dtypes: ClassVar[tuple[str, ...]]
    level_key: ClassVar[str | None] = None  # imagecodecs.zarr's name for ``level``
    default_level: ClassVar[int | None] = None  # the level the encoder uses when none is given
    lossless: ClassVar[dict[str, Any]] = {}  # imagecodecs.zarr's settings for a lossless encoding
    level: int | None = None

    is_fixed_size = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageCodec:
        _, configuration = parse_named_configuration(data, cls.codec_name, require_configuration=False)
        configuration = configuration or {}
        # (imagecodecs.zarr's key, or zarrchive's own earlier configuration: {"level": ...})
        level = configuration.get(cls.level_key, configuration.get("level")) if cls.level_key else None
        return cls(level=None if level is None else int(level))

    def setting(self) -> int | None:
        """The level the encoder uses."""
        return self.default_level if self.level is None else self.level

    def to_dict(self) -> dict[str, Any]:
        level = self.setting()
        configuration = {self.level_key: level} if self.level_key and level is not None else {}
        return {"name": self.codec_name, "configuration": {**configuration, **self.lossless}}

    def validate(self, *, shape: Any, dtype: Any, chunk_grid: Any) -> None:
        native = str(np.dtype(dtype.to_native_dtype()))
        if native not in self.dtypes:
            raise ValueError(f"{self.codec_name} encodes {', '.join(self.dtypes)}, not {native}")

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: Any) -> int:
        raise NotImplementedError  # variable size

    def _encode_sync(self, chunk_array: Any, chunk_spec: Any) -> Any:
        array = np.ascontiguousarray(chunk_array.as_numpy_array())
        plane = array.reshape(-1, array.shape[-1]) if array.ndim != 2 else array
        return chunk_spec.prototype.buffer.from_bytes(self.encode_plane(plane))

    def _decode_sync(self, chunk_bytes: Any, chunk_spec: Any) -> Any:
        dtype = chunk_spec.dtype.to_native_dtype()
        shape = tuple(chunk_spec.shape)
        plane = (int(np.prod(shape[:-1])), shape[-1])
        decoded = np.asarray(self.decode_plane(chunk_bytes.to_bytes(), plane, dtype))
        return chunk_spec.prototype.nd_buffer.from_numpy_array(decoded.reshape(shape).astype(dtype, copy=False))

    async def _encode_single(self, chunk_array: Any, chunk_spec: Any) -> Any:
        return self._encode_sync(chunk_array, chunk_spec)

    async def _decode_single(self, chunk_bytes: Any, chunk_spec: Any) -> Any:
        return self._decode_sync(chunk_bytes, chunk_spec)

    def encode_plane(self, plane: np.ndarray) -> bytes:
        raise NotImplementedError

    def decode_plane(self, data: bytes, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        raise NotImplementedError


@dataclass(frozen=True)
class JpegXLCodec(ImageCodec):
    """JPEG-XL, lossless (``distance 0``); ``level`` is the encoder's effort (1 fastest … 9 smallest)."""

    codec_name: ClassVar[str] = "imagecodecs_jpegxl"
    dtypes: ClassVar[tuple[str, ...]] = ("uint8", "uint16")
    level_key: ClassVar[str | None] = "effort"
    default_level: ClassVar[int | None] = 1
    lossless: ClassVar[dict[str, Any]] = {"lossless": True}

    def setting(self) -> int | None:
        return self.level or 1  # (libjxl's efforts start at 1)

    def encode_plane(self, plane: np.ndarray) -> bytes:
        import imagecodecs

        return imagecodecs.jpegxl_encode(plane, lossless=True, effort=self.setting(), numthreads=1)

    def decode_plane(self, data: bytes, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        import imagecodecs

        return imagecodecs.jpegxl_decode(data, numthreads=1)


@dataclass(frozen=True)
class JpegLSCodec(ImageCodec):
    """JPEG-LS, lossless (near-lossless distance 0)."""

    codec_name: ClassVar[str] = "imagecodecs_jpegls"
    dtypes: ClassVar[tuple[str, ...]] = ("uint8", "uint16")
    lossless: ClassVar[dict[str, Any]] = {"level": 0}  # JPEG-LS's near-lossless distance

    def encode_plane(self, plane: np.ndarray) -> bytes:
        import imagecodecs

        return imagecodecs.jpegls_encode(plane, level=0)

    def decode_plane(self, data: bytes, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        import imagecodecs

        return imagecodecs.jpegls_decode(data)


@dataclass(frozen=True)
class HTJ2KCodec(ImageCodec):
    """High-throughput JPEG 2000, reversible (lossless) wavelet."""

    codec_name: ClassVar[str] = "imagecodecs_htj2k"
    dtypes: ClassVar[tuple[str, ...]] = ("uint8", "uint16", "int8", "int16")
    lossless: ClassVar[dict[str, Any]] = {"reversible": True}

    def encode_plane(self, plane: np.ndarray) -> bytes:
        import imagecodecs

        return imagecodecs.htj2k_encode(plane, reversible=True)

    def decode_plane(self, data: bytes, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        import imagecodecs

        return imagecodecs.htj2k_decode(data)


@dataclass(frozen=True)
class PcodecCodec(ImageCodec):
    """pcodec: lossless compression of numerical sequences; ``level`` 0 fastest … 12 smallest (8 default)."""

    codec_name: ClassVar[str] = "imagecodecs_pcodec"
    dtypes: ClassVar[tuple[str, ...]] = ("uint16", "uint32", "uint64", "int16", "int32", "int64", "float32",
                                         "float64")
    level_key: ClassVar[str | None] = "level"
    default_level: ClassVar[int | None] = 8

    def encode_plane(self, plane: np.ndarray) -> bytes:
        import imagecodecs

        return imagecodecs.pcodec_encode(plane, level=self.setting())

    def decode_plane(self, data: bytes, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        import imagecodecs

        return imagecodecs.pcodec_decode(data, shape=shape, dtype=dtype)


IMAGE_CODECS: dict[str, type[ImageCodec]] = {
    "jpegxl": JpegXLCodec, "jpegls": JpegLSCodec, "htj2k": HTJ2KCodec, "pcodec": PcodecCodec,
}


def register() -> None:
    """Register the image codecs with zarr (the ``zarr.codecs`` entry points do the same for readers that have
    zarrchive; imagecodecs-zarr's entry points name imagecodecs' own codecs, which read the same chunks)."""
    from zarr.registry import register_codec

    for cls in IMAGE_CODECS.values():
        register_codec(cls.codec_name, cls)


register()


# ---------------------------------------------------------------- profiles and choice


def make_codec(spec: CodecSpec) -> Any:
    """The Zarr v3 codec object of a candidate."""
    if spec.codec == "blosc":
        return BloscCodec(cname=spec.cname, clevel=spec.clevel, shuffle=spec.shuffle)
    if spec.codec == "zstd":
        return ZstdCodec(level=spec.clevel)
    if spec.codec == "pcodec":  # numcodecs' (zarr.codecs.numcodecs.PCodec): read by zarr-python without zarrchive
        from zarr.codecs.numcodecs import PCodec

        return PCodec(level=8 if spec.level is None else spec.level)
    return IMAGE_CODECS[spec.codec](level=spec.level)


def array_codec_kwargs(codec: Any) -> dict[str, Any]:
    """``create_array`` arguments placing a codec: image codecs serialize (array -> bytes); blosc and zstd
    compress the ``bytes`` serializer's output."""
    if isinstance(codec, ArrayBytesCodec):
        return {"serializer": codec, "compressors": None}
    return {"compressors": [codec]}


def v2_codec(codec: Any) -> Any:
    """The numcodecs compressor a Zarr v2 array stores for a core Zarr v3 codec."""
    import numcodecs

    if isinstance(codec, BloscCodec):
        shuffle = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
                   "bitshuffle": numcodecs.Blosc.BITSHUFFLE}[str(getattr(codec.shuffle, "value", codec.shuffle))]
        return numcodecs.Blosc(cname=str(getattr(codec.cname, "value", codec.cname)), clevel=codec.clevel,
                               shuffle=shuffle)
    if isinstance(codec, ZstdCodec):
        return numcodecs.Zstd(level=codec.level)
    raise ValueError(f"{type(codec).__name__} has no Zarr v2 form: OME-NGFF 0.4 output takes blosc or zstd")


def choice_of(codec: Any) -> CodecChoice:
    config = codec.to_dict()
    return CodecChoice(name=config["name"], configuration=config.get("configuration", {}),
                       readable_by=WITH_IMAGECODECS if isinstance(codec, ImageCodec) else
                       WITH_PCODEC if config["name"] == "numcodecs.pcodec" else ANY_READER)


def supports(spec: CodecSpec, dtype: np.dtype) -> str | None:
    """Why the candidate cannot encode ``dtype`` losslessly (None when it can)."""
    if spec.codec == "pcodec":
        return None if str(np.dtype(dtype)) in PCODEC_DTYPES else f"pcodec does not encode {np.dtype(dtype)}"
    cls = IMAGE_CODECS.get(spec.codec)
    if cls is not None and str(np.dtype(dtype)) not in cls.dtypes:
        return f"{cls.codec_name} does not encode {np.dtype(dtype)}"
    return None


_CODERS: dict[tuple, tuple[Any, Any]] = {}  # (codec, chunk shape, dtype) -> its chunk encoder and decoder


def _coder(codec: Any, sample: np.ndarray) -> tuple[Any, Any]:
    """The chunk encoder and decoder of ``codec`` for chunks of ``sample``'s shape and type, as the shard writer
    makes them (cached: a worker tries the same candidates on image after image)."""
    import zarr

    from zarrchive.pixels.shards import chunk_coder

    key = (type(codec).__name__, json.dumps(codec.to_dict(), sort_keys=True, default=str),
           str(getattr(codec, "typesize", None)), str(getattr(codec, "shuffle", None)), sample.shape, sample.dtype.str)
    if (coder := _CODERS.get(key)) is None:
        array = zarr.create_array(store=zarr.storage.MemoryStore(), shape=sample.shape, chunks=sample.shape,
                                  dtype=sample.dtype, fill_value=0, zarr_format=3, **array_codec_kwargs(codec))
        if len(_CODERS) >= 256:
            _CODERS.clear()
        coder = _CODERS[key] = chunk_coder(array.metadata, sample.shape)
    return coder


class TooSlow(Exception):
    """A trial given up: the candidate took longer than it may on the sample (``_encoded``'s ``within``)."""


def _encoded(codec: Any, samples: list[np.ndarray], repeats: int = 1,
             within: float = float("inf")) -> tuple[list[bytes], float]:
    """The sample chunks encoded through ``codec``, one after another on this thread, and the best encode time of
    ``repeats`` runs (the first run also pays for warming caches up); ``TooSlow`` as soon as a run has taken more
    than ``within`` seconds (then at most one chunk's encode more than that was spent)."""
    encode, _decode = _coder(codec, samples[0])
    encoded, seconds = [], float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        encoded = []
        for chunk in samples:
            encoded.append(encode(chunk))
            if time.perf_counter() - started > within:
                mbps = sum(sample.nbytes for sample in samples) / 1e6 / max(within, 1e-9)
                raise TooSlow(f"(under {mbps:.3g} MB/s): given up after {len(encoded)} of {len(samples)} sample "
                              f"chunks, {time.perf_counter() - started:.2f} s")
        seconds = min(seconds, time.perf_counter() - started)
    return encoded, seconds


def _decoded(codec: Any, samples: list[np.ndarray], encoded: list[bytes]) -> float:
    """Decode ``encoded`` (the samples through ``codec``) and check it gives the samples' bits back; the seconds
    it took (raises when it does not round-trip losslessly)."""
    _encode, decode = _coder(codec, samples[0])
    started = time.perf_counter()
    decoded = [decode(data) for data in encoded]
    seconds = time.perf_counter() - started
    for chunk, back in zip(samples, decoded):
        if back.shape != chunk.shape or not np.array_equal(bits(back), bits(chunk)):
            raise ValueError(f"{codec.to_dict()['name']} did not round-trip the sample losslessly")
    return seconds


def choose_codec(samples: list[np.ndarray], candidates: list[CodecSpec], min_encode_mbps: float,
                 size_tolerance: float = 0.0, time_all: bool = False, slow_mbps: float = float("inf"),
                 slow_within: float = 0.05, kept: dict[str, Any] | None = None) -> CodecSelection:
    """Encode the sample chunks (of one shape) with each candidate and choose by ``OBJECTIVE``.

    Every candidate encodes the sample once, which gives its size. A speed is the best of ``TIMED_RUNS`` runs
    where it decides the choice (or everywhere, ``time_all``: a benchmark's table): a first run is never
    faster than the best of more runs (it also warms caches up), so a candidate fast enough on it is fast
    enough, and only one too slow on it that would otherwise be small enough to be chosen, and the candidates
    whose sizes count as equal (the fastest of them is chosen), are timed again. Other speeds reported are of
    one run. The candidate chosen is then decoded and compared bit for bit with the sample (its encoding kept
    from its last run when the sample is at most ``KEPT_BYTES``, else encoded once more), its decode speed that
    of this one run; with ``time_all``, every candidate is, its decode timed as its encode is (the best of
    ``TIMED_RUNS``). The others are not decoded (their chunks are never stored) and have no decode speed. A
    candidate that fails on this content, on any run, or does not give the sample back is skipped (with why),
    and the choice is made again among the others.

    Slow candidates (``CodecSpec.slow``: a family's higher levels) are tried after the others, and only on an
    image small enough that ``slow_mbps`` (the speed that encodes its level 0 within the profile's time for them)
    is under the floor (or where there is no floor), each only while its family leads (``_climbs``;
    ``time_all``: every one); they are eligible at ``slow_mbps``, and a trial slower than that on the sample is
    given up as soon as it is (it could not be chosen). Their speed is that of their one run (a first run is the
    slowest): they are never timed again, and in a tie on size a candidate that is not slow wins (among slow
    ones only, the fastest).

    With ``kept``, the chosen candidate's encoding of the samples, when it was kept (a sample up to
    ``KEPT_BYTES``), is left there under ``"encoded"`` (one ``bytes`` per sample chunk), for a writer to store
    instead of encoding those chunks again."""
    samples = [np.ascontiguousarray(sample) for sample in samples]
    raw = sum(sample.nbytes for sample in samples)
    trials: list[CodecTrial] = []
    timed: dict[int, Timed] = {}
    decoded: dict[int, float] = {}  # candidate: decode seconds, once it gave the sample back
    slow_floor = min(min_encode_mbps, slow_mbps)
    has_slow = any(spec.slow for spec in candidates)
    codecs = [make_codec(spec) for spec in candidates]
    for i, spec in enumerate(candidates):
        trials.append(CodecTrial(codec=choice_of(codecs[i])))
        if (reason := supports(spec, samples[0].dtype)) is not None:
            trials[i] = CodecTrial(codec=trials[i].codec, skipped=reason)
        elif not spec.slow:
            _timed(timed, trials, i, codecs[i], samples, 1, raw <= KEPT_BYTES)

    def mbps(seconds: float) -> float:
        return round(raw / 1e6 / max(seconds, 1e-9), 1)

    for i, spec in enumerate(candidates):
        if spec.slow and trials[i].skipped is None:
            why = None if time_all else (
                f"the image is too large to take {slow_mbps:.3g} MB/s (the profile's slow_seconds)"
                if slow_mbps >= min_encode_mbps > 0 else
                _climbs(candidates, timed, i, size_tolerance, slow_within, slow_floor, mbps))
            if why is None:
                within = float("inf") if time_all else raw / 1e6 / max(slow_floor, 1e-9)
                _timed(timed, trials, i, codecs[i], samples, 1, raw <= KEPT_BYTES, within)
            else:
                trials[i] = CodecTrial(codec=trials[i].codec, skipped=f"not tried: {why}")

    def choice() -> tuple[list[int], list[int]]:
        """The candidates the choice is made among, and those whose speed decides it that were timed once."""
        if not timed:
            raise ValueError("no codec candidate can encode this image: "
                             + "; ".join(f"{t.codec.name}: {t.skipped}" for t in trials))
        baseline = next((i for i in timed if candidates[i].baseline), None)
        usual = [i for i in timed if not candidates[i].slow]  # slow candidates are never timed again
        fast = [i for i in timed if i == baseline
                or mbps(timed[i].seconds) >= (slow_floor if candidates[i].slow else min_encode_mbps)]
        if not fast:
            return list(timed), usual  # then the fastest
        smallest = min(timed[i].stored for i in fast)
        near = [i for i in usual if i not in fast and timed[i].stored <= smallest * (1 + size_tolerance)]
        small = [i for i in fast if timed[i].stored <= smallest * (1 + size_tolerance)]
        if baseline is not None:  # never more bytes than the baseline, whatever the tolerance
            small = [i for i in small if timed[i].stored <= timed[baseline].stored]
        if any(i in usual for i in small):  # sizes equal: one not slow before a slow one
            small = [i for i in small if i in usual]
        timed_again = [i for i in small if i in usual]  # (a tie among slow ones goes to the fastest, one run each)
        return small, near + (timed_again if len(timed_again) > 1 else [])

    again: set[int] = set()
    while True:
        small, deciding = choice()
        deciding = [i for i in (list(timed) if time_all else deciding) if i not in again]
        for i in deciding:  # the best of TIMED_RUNS: this run and the one already made
            again.add(i)
            _timed(timed, trials, i, timed[i].codec, samples, TIMED_RUNS - 1, raw <= KEPT_BYTES)
        if deciding:
            continue
        chosen = max(small, key=lambda i: (mbps(timed[i].seconds), -i))
        for i in list(timed) if time_all else [chosen]:
            if i not in decoded:
                _checked(timed, decoded, trials, i, samples, TIMED_RUNS if time_all else 1)
        if chosen in timed:
            break
    if kept is not None and timed[chosen].encoded is not None:
        kept["encoded"] = timed[chosen].encoded
    _with_figures(trials, timed, decoded, raw, mbps)
    return CodecSelection(objective=OBJECTIVE, min_encode_mbps=min_encode_mbps, size_tolerance=size_tolerance,
                          slow_mbps=round(slow_floor, 3) if has_slow else None,
                          slow_within=slow_within if has_slow else None,
                          sample_chunks=len(samples), sample_bytes=raw, candidates=trials, chosen=chosen)


def levels_trial(candidates: list[CodecSpec], selection: CodecSelection, others: list[CodecSpec]) -> list[CodecSpec]:
    """The candidates of the levels' codec: level 0's (first, chosen among ``candidates`` by ``selection``), then
    those of ``others`` (``levels_candidates``) that could be chosen: each that encoded level 0's sample at least
    about as fast as level 0's codec (within ``LEVELS_SPEED_TOLERANCE``), and each not in that trial (a levels-only
    candidate). One slower on level 0's pixels is slower on level 1's too: trying it would cost time for nothing."""
    key = lambda spec: json.dumps(spec.model_dump(), sort_keys=True)  # noqa: E731
    speeds = {key(spec): trial.encode_mbps for spec, trial in zip(candidates, selection.candidates)}
    chosen = candidates[selection.chosen]
    floor = (speeds[key(chosen)] or 0.0) * (1 - LEVELS_SPEED_TOLERANCE)
    return [chosen, *(spec for spec in others if key(spec) != key(chosen)
                      and (speeds.get(key(spec)) is None or speeds[key(spec)] >= floor))]


def choose_levels_codec(samples: list[np.ndarray], candidates: list[CodecSpec]) -> CodecSelection:
    """The codec of the levels below level 0 by ``LEVELS_OBJECTIVE``: ``candidates[0]`` is level 0's codec (the
    bound on bytes, and eligible whatever the others do), ``samples`` pixels of level 1. Every candidate encodes
    the sample once; those no larger than level 0's codec, and at least 2/3 as fast as the fastest of them, are
    timed again (the best of ``TIMED_RUNS``); the one chosen is decoded and compared bit for bit (one that fails
    on this content, or does not give it back, is skipped, and the choice made again). When level 0's codec
    itself fails here, the smallest of the others."""
    samples = [np.ascontiguousarray(sample) for sample in samples]
    raw = sum(sample.nbytes for sample in samples)
    codecs = [make_codec(spec) for spec in candidates]
    trials = [CodecTrial(codec=choice_of(codec)) for codec in codecs]
    timed: dict[int, Timed] = {}
    decoded: dict[int, float] = {}
    for i, spec in enumerate(candidates):
        if (reason := supports(spec, samples[0].dtype)) is not None:
            trials[i] = CodecTrial(codec=trials[i].codec, skipped=reason)
        else:
            _timed(timed, trials, i, codecs[i], samples, 1, raw <= KEPT_BYTES)

    def mbps(seconds: float) -> float:
        return round(raw / 1e6 / max(seconds, 1e-9), 1)

    again: set[int] = set()
    while True:
        if not timed:
            raise ValueError("no codec candidate can encode this image's levels: "
                             + "; ".join(f"{t.codec.name}: {t.skipped}" for t in trials))
        bound = timed[0].stored if 0 in timed else min(t.stored for t in timed.values())
        eligible = [i for i in timed if timed[i].stored <= bound]
        first = max(mbps(timed[i].seconds) for i in eligible)  # a first run is the slowest: one under 2/3 of the
        contenders = [i for i in eligible if mbps(timed[i].seconds) >= first / 1.5]  # fastest's is not timed again
        for i in (i for i in contenders if i not in again and len(contenders) > 1):
            again.add(i)
            _timed(timed, trials, i, timed[i].codec, samples, TIMED_RUNS - 1, raw <= KEPT_BYTES)
        eligible = [i for i in eligible if i in timed]
        if not eligible:
            continue
        fastest = max(mbps(timed[i].seconds) for i in eligible)
        chosen = min((i for i in eligible if mbps(timed[i].seconds) >= fastest * (1 - LEVELS_SPEED_TOLERANCE)),
                     key=lambda i: (timed[i].stored, i))
        if chosen not in decoded:
            _checked(timed, decoded, trials, chosen, samples, 1)
        if chosen in timed:
            break
    _with_figures(trials, timed, decoded, raw, mbps)
    return CodecSelection(objective=LEVELS_OBJECTIVE, min_encode_mbps=0.0, sample_chunks=len(samples),
                          sample_bytes=raw, candidates=trials, chosen=chosen)


def _with_figures(trials: list[CodecTrial], timed: dict[int, Timed], decoded: dict[int, float], raw: int,
                  mbps: Callable[[float], float]) -> None:
    """Each candidate tried (``timed``) recorded with its ratio (of the sample's ``raw`` bytes), stored bytes,
    encode and, where decoded, decode speed (``mbps``: seconds over the sample as MB/s)."""
    for i, done in timed.items():
        trials[i] = CodecTrial(codec=trials[i].codec, ratio=round(raw / max(done.stored, 1), 4),
                               stored_bytes=done.stored, encode_mbps=mbps(done.seconds),
                               decode_mbps=mbps(decoded[i]) if i in decoded else None)


def _family(spec: CodecSpec) -> tuple:
    return (spec.codec, spec.cname, spec.shuffle) if spec.codec == "blosc" else (spec.codec,)


def _climbs(candidates: list[CodecSpec], timed: dict[int, Timed], i: int, size_tolerance: float, slow_within: float,
            slow_floor: float, mbps: Callable[[float], float]) -> str | None:
    """Why slow candidate ``i`` is not worth trying (None when it is): its family does not lead. The member listed
    before it must have been tried, store within ``slow_within`` of the smallest so far, encode at least
    ``slow_floor`` (a higher level is slower: under it, it could not be eligible), and, when it is slow itself,
    have stored less than the member before it by more than ``size_tolerance`` (a level that gained nothing ends
    the climb)."""
    family = [j for j in range(i) if _family(candidates[j]) == _family(candidates[i])]
    if not family:
        return "no candidate of its family is listed before it"
    before = family[-1]
    name = candidates[before].label()
    if before not in timed:
        return f"{name} was not tried, or not to the end"
    smallest = min(t.stored for t in timed.values())
    if timed[before].stored > smallest * (1 + slow_within):
        return f"{name} stores {timed[before].stored / smallest:.3f}x the smallest so far"
    if mbps(timed[before].seconds) < slow_floor:
        return (f"{name} encodes at {mbps(timed[before].seconds):g} MB/s, under the {slow_floor:.3g} MB/s this "
                "image allows")
    if candidates[before].slow and len(family) > 1 and family[-2] in timed \
            and timed[before].stored >= timed[family[-2]].stored * (1 - size_tolerance):
        return f"{name} stored no more than {size_tolerance:.0%} less than {candidates[family[-2]].label()}"
    return None


class Timed(NamedTuple):
    """A candidate's trial so far: its codec, the bytes it stores the sample in, its best encode time, and the
    sample's encoding (kept for a small sample, else None)."""

    codec: Any
    stored: int
    seconds: float
    encoded: list[bytes] | None


def _timed(timed: dict[int, Timed], trials: list[CodecTrial], i: int, codec: Any, samples: list[np.ndarray],
           runs: int, keep: bool, within: float = float("inf")) -> None:
    """Candidate ``i``'s size and best encode time so far after ``runs`` more runs (with ``keep``, its encoding);
    a failure, or a run longer than ``within`` seconds, skips it, with why."""
    try:
        encoded, seconds = _encoded(codec, samples, runs, within)
    except TooSlow as exc:
        timed.pop(i, None)
        trials[i] = CodecTrial(codec=trials[i].codec, skipped=f"too slow for this image {exc}")
        return
    except Exception as exc:  # a codec that fails on this content is not a candidate for it
        _skip(timed, trials, i, exc)
        return
    if i in timed:
        seconds = min(seconds, timed[i].seconds)
    timed[i] = Timed(codec, sum(len(data) for data in encoded), seconds, encoded if keep else None)


def _checked(timed: dict[int, Timed], decoded: dict[int, float], trials: list[CodecTrial], i: int,
             samples: list[np.ndarray], runs: int) -> None:
    """Candidate ``i``'s encoding (kept, or made once more) decoded ``runs`` times, compared bit for bit each time:
    its best decode time, or, when it fails or does not give the sample back, skipped with why."""
    codec, _stored, _seconds, encoded = timed[i]
    try:
        if encoded is None:
            encoded, _seconds = _encoded(codec, samples)
        decoded[i] = min(_decoded(codec, samples, encoded) for _ in range(runs))
    except Exception as exc:
        decoded.pop(i, None)
        _skip(timed, trials, i, exc)


def _skip(timed: dict[int, Timed], trials: list[CodecTrial], i: int, exc: Exception) -> None:
    timed.pop(i, None)
    trials[i] = CodecTrial(codec=trials[i].codec, skipped=f"{type(exc).__name__}: {exc}")


def sample_regions(shape: tuple[int, ...], chunks: tuple[int, ...], n: int) -> list[tuple[slice, ...]]:
    """``n`` whole-chunk regions spread evenly over the chunk grid (in C order), deterministic; chunks cut by
    the array's end are left out unless there are no others (then the sample is the first chunk's shape)."""
    import itertools

    whole = [range(0, size - c + 1, c) if size >= c else range(0, 1) for size, c in zip(shape, chunks)]
    chunks = tuple(min(c, size) for c, size in zip(chunks, shape))
    starts = list(itertools.product(*whole))
    m = min(n, len(starts))  # (fewer chunks than n: every one)
    picks = sorted({round(i * (len(starts) - 1) / max(m - 1, 1)) for i in range(m)})
    return [tuple(slice(s, min(s + c, size)) for s, c, size in zip(starts[p], chunks, shape)) for p in picks]
