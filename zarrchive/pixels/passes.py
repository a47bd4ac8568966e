"""Passes: the functions Dask workers run over regions of an image, importing neither Prefect nor bioio.

The compress stage's streaming pass (``stream_region``: read a region of the
source once, write it and every level it makes, proven), the small levels made
from the level above (``downsample_regions``), the codec trial on a sample of
chunks (``select_codec``), all of it in one task for an image no larger than
a streaming region (``whole_image``; several small images in one task:
``whole_images``), and QC's per-chunk facts (``chunk_stats``, with the validator's
findings for small stores: ``facts_of_store``, ``facts_of_stores``). Workers
import this module when they start (``cluster.WORKER_MODULES``), so a light
import keeps the cluster's start short.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import pickle
import shutil
import time
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple

import numpy as np
import zarr

from zarrchive.archive.storage import remove_unfinished_writes, sha256_stream, tree_digest, walk_files
from zarrchive.archive.thumbnails import thumbnail_png
from zarrchive.config import CodecSpec
from zarrchive.errors import InputError, is_file_fault
from zarrchive.ngff import ZARR_FORMAT, group_attributes, group_documents, validate_image, validate_label
from zarrchive.pixels.blocks import chunk_slices, downsample
from zarrchive.pixels.codecs import (
    array_codec_kwargs, choose_codec, choose_levels_codec, levels_trial, make_codec, v2_codec,
)
from zarrchive.pixels.shards import ArrayWriter, Stored
from zarrchive.pixels.sources import read_region, read_unit
from zarrchive.records import CodecSelection, ImageRecord, Level

BATCH = 32  # chunks per Dask task for the small levels made from the level above, and for QC's reads
ZARR_CONFIG = {"codec_pipeline.batch_size": 64}  # zarr reads a shard's chunks together, not one by one


@dataclass(frozen=True)
class LevelPlan:
    """How one level is written: its array layout and the unit of work that owns whole shards of it."""

    level: Level
    shards: tuple[int, ...] | None  # None: one object per chunk
    unit: tuple[int, ...]  # the region one task writes (whole shards; the array's end may cut it)
    halved: tuple[int, ...]  # axes halved from the level above
    streamed: bool  # written in the streaming pass (else from the level above, in the output)


def scaled(region: tuple[slice, ...], plans: list[LevelPlan]) -> list[tuple[slice, ...]]:
    """The region of each streamed level that a level-0 region makes."""
    out = [region]
    for plan in plans[1:]:
        previous = out[-1]
        out.append(tuple(
            slice(r.start // 2, min(-(-r.stop // 2), n)) if i in plan.halved else r
            for i, (r, n) in enumerate(zip(previous, plan.level.shape))))
    return out


def _chunk_digests(block: np.ndarray, region: tuple[slice, ...], chunks: tuple[int, ...]) -> list[tuple]:
    digests = []
    for sub in chunk_slices(block.shape, chunks):
        start = tuple(r.start + s.start for r, s in zip(region, sub))
        pixels = np.ascontiguousarray(block[sub])
        digests.append((start, hashlib.sha256(pixels.view(np.uint8).data).hexdigest()))  # hashed in place
    return digests


def stream_region(source: str, image: ImageRecord, store: str, region: tuple[slice, ...],
                  plans: list[LevelPlan], digests: bool = True) -> tuple[Stored, list[tuple]]:
    """Read ``region`` of the source once and write it, and each streamed level below it, proven; return what
    was stored and the digests of the level-0 chunks (their start and the sha256 of their pixels; none unless
    ``digests``). The region is read a slab at a time (``slabs``: a plane of a z-stack), each slab written into
    the objects of every level it makes and proven at once, so a task holds a slab, not the region."""
    least = read_unit(source, image.layout)
    cuts = slabs(region, [p for p in plans if p.streamed], tuple(least.get(name, 1) for name in image.axis_names))
    stored, level0, _last = _write_slabs(((slab, _read(source, image, slab)) for slab in cuts), store, region, plans,
                                         digests)
    return stored, level0


def slabs(region: tuple[slice, ...], streamed: list[LevelPlan], least: tuple[int, ...] | None = None
          ) -> list[tuple[slice, ...]]:
    """``region`` cut into the thinnest slabs that still make whole chunks of every streamed level: along an outer
    axis, the least multiple of each level's chunk times 2 for every halving of that axis down to it (a z-stack's
    plane when only y and x are halved and chunks are one plane deep; two planes where z is halved once), and a
    multiple of ``least`` (the source's own chunks, ``sources.read_unit``; else the whole region along that axis).
    Once a slab holds more than one chunk of some level along an axis, the outer axes inside it are not cut. The
    last axis is cut only at the edges of the region's units (``LevelPlan.unit``: whole objects of every level).
    So every object receives its chunks in C order, as one write of the region stores them (a 2-D image's region
    is cut along y only where every level's chunk row stays whole)."""
    thick, whole, last = [], False, len(region) - 1
    least = least or (1,) * len(region)
    for axis, r in enumerate(region):
        n = r.stop - r.start
        if axis == last:
            unit = math.lcm(streamed[0].unit[axis], least[axis]) if streamed else n
            thick.append(unit if unit <= n else n)
            continue
        if whole:
            thick.append(n)
            continue
        step, halvings, layers = 1, 0, []
        for plan in streamed:
            halvings += axis in plan.halved
            step = math.lcm(step, plan.level.chunks[axis] << halvings)
            layers.append((halvings, plan.level.chunks[axis]))
        deep = math.lcm(step, least[axis])  # whole chunks of the levels and of the source
        thick.append(deep if deep <= n else n)
        whole = any(-(-thick[-1] // (1 << h)) > c for h, c in layers)  # more than one chunk of a level
    return [tuple(slice(r.start + s.start, r.start + s.stop) for r, s in zip(region, sub))
            for sub in chunk_slices(tuple(r.stop - r.start for r in region), tuple(thick))]


def _read(source: str, image: ImageRecord, region: tuple[slice, ...]) -> np.ndarray:
    """``region`` of the source, as the image's type and shape say it must be."""
    shown_as = image.shown_as
    try:
        block = read_region(source, image.layout, region)
    except Exception as exc:
        if (named := _named(exc, shown_as, f"pixels {[(s.start, s.stop) for s in region]}")) is exc:
            raise
        raise named from exc
    expected = tuple(s.stop - s.start for s in region)
    if block.shape != expected or block.dtype != np.dtype(image.dtype):
        raise InputError(shown_as, f"the reader gave {block.shape} {block.dtype} pixels for a region of "
                                   f"{expected} {image.dtype}")
    return block


def _write_slabs(read: Iterable[tuple[tuple[slice, ...], np.ndarray]], store: str, region: tuple[slice, ...],
                 plans: list[LevelPlan], digests: bool, arrays: dict[str, Any] | None = None,
                 ready: dict[tuple[int, ...], bytes] | None = None) -> tuple[Stored, list[tuple], np.ndarray]:
    """Write ``region`` of level 0 from ``read`` (its slabs and their pixels, in order: ``slabs``) and each
    streamed level it makes, every slab's chunks proven as they are appended to the objects they belong to
    (``shards.RegionWrite``); return what was stored, the digests of level 0's chunks (``digests``) and the last
    slab's block of the last streamed level."""
    streamed = [p for p in plans if p.streamed]
    level0: list[tuple] = []
    with contextlib.ExitStack() as stack:  # an error leaves nothing of the objects not finished
        parts = [stack.enter_context(
            ArrayWriter.open(f"{store}/{plan.level.path}", (arrays or {}).get(plan.level.path)).region(
                level_region, f"{plan.level.path}/", ready if plan is plans[0] else None))
            for plan, level_region in zip(streamed, scaled(region, streamed))]
        for slab, block in read:
            if digests:
                level0 += _chunk_digests(block, slab, plans[0].level.chunks)
            for plan, part, level_slab in zip(streamed, parts, scaled(slab, streamed)):
                if plan.halved:
                    block = downsample(block, plan.halved, plan.level.downsampling)
                part.add(level_slab, block)
        stored = Stored()
        for part in parts:
            stored.add(part.finish())
    return stored, level0, block


def _named(exc: Exception, shown_as: str, what: str) -> Exception:
    """A failure to read a source's pixels as the image's: the file's fault (``errors.is_file_fault``) named by
    the image, an ``InputError`` of its own kind (a truncated file) given the image's name; anything else (the
    machine's, the cluster's) as it is: the caller re-raises that one, never making it its own cause (distributed
    walks an exception's causes and would never stop)."""
    if isinstance(exc, InputError):
        return type(exc)(shown_as, exc.reason)
    if not is_file_fault(exc):
        return exc
    return InputError(shown_as, f"{what} cannot be read: {type(exc).__name__}: {exc}")


@dataclass(frozen=True)
class WholePass:
    """What ``whole_image`` did: the codec choice, the chunks proven, the digests of level 0's chunks, and the
    finished store's size and tree digest."""

    selection: CodecSelection | None
    chunks: int
    level0: list[tuple]
    bytes_out: int
    sha256: str
    seconds: float  # the task's own time
    thumbnail: bool = False  # its picture was written where asked
    levels: CodecSelection | None = None  # how the levels' codec was chosen (None: level 0's)
    levels_spec: CodecSpec | None = None  # the levels' codec (None: level 0's)


def whole_image(source: str, image: ImageRecord, store: str, plans: list[LevelPlan], candidates: list[CodecSpec],
                samples: list[tuple[slice, ...]], choice: dict[str, float], ngff: str, digests: bool = True,
                thumbnail: str | None = None, levels: list[CodecSpec] | None = None) -> WholePass:
    """The whole compress pass of an image no larger than a streaming region may be, in one task: read it once,
    choose its codec among ``candidates`` on the ``samples`` chunks of that read by ``choice`` (``choose_codec``'s
    arguments, ``CompressSettings.choice``; as ``select_codec`` would from the file) and, with ``levels``
    (``CompressSettings.levels_candidates``), the levels' codec (``choose_levels_codec``), create its arrays (``ngff``
    0.5: sharded Zarr v3; 0.4: Zarr v2), write every level (the streamed ones from the block, the others from the
    level above; level 0's sampled chunks as the trial encoded them, ``_ready``), each write proven, and finish
    the store (``finish_store``); with ``thumbnail``, write the image's picture there (``archive.thumbnails``)
    from the pixels in hand. A small image costs one round trip to the cluster instead of a codec trial, a write
    and a task per small level, and the process running the flow does nothing with its pixels."""
    started = time.perf_counter()
    region = tuple(slice(0, n) for n in plans[0].level.shape)
    block = _read(source, image, region)
    selection, levels_selection, levels_spec, kept = None, None, None, {}
    if len(candidates) > 1:
        chunks = [np.ascontiguousarray(block[r]) for r in samples]
        selection = choose_codec(chunks, candidates, **choice, kept=kept)
        paired = [block[paired_region(r, plans)] for r in samples] if levels and len(plans) > 1 else []
        levels_selection, levels_spec = _levels_choice(paired, candidates, selection, levels, plans)
    codec = make_codec(candidates[selection.chosen if selection else 0])
    level_codec = make_codec(levels_spec) if levels_spec is not None else codec
    ready = _ready(samples, kept.get("encoded", []), plans[0].level.chunks) if ngff == "0.5" else {}
    if os.path.lexists(store):  # what an attempt killed with its worker left: the pass starts afresh
        shutil.rmtree(store)
    arrays = {plan.level.path: zarr.create_array(  # (the groups' metadata is written whole by finish_store)
        f"{store}/{plan.level.path}", shape=plan.level.shape, chunks=plan.level.chunks, dtype=image.dtype,
        fill_value=0, zarr_format=ZARR_FORMAT[ngff],
        **array_layout(plan, codec if plan is plans[0] else level_codec, image.axis_names, ngff))
        for plan in plans}
    stored, level0, last = _write_slabs([(region, block)], store, region, plans, digests, arrays, ready)
    kept.clear()  # stored: not held through the levels below
    ready.clear()
    for above, plan in zip(plans, plans[1:]):
        if not plan.streamed:
            stored.add(downsample_regions(store, above.level.path, plan, chunk_slices(plan.level.shape, plan.unit)))
    smallest = last if plans[-1].streamed else None  # the smallest level's pixels, when still in hand
    finished = finish_store(store, image, ngff, stored, smallest)
    in_hand = {plans[0].level.path: block, **({plans[-1].level.path: smallest} if smallest is not None else {})}
    pictured = thumbnail is not None and _picture(thumbnail, store, finished.attributes, {**arrays, **in_hand})
    return WholePass(selection, stored.chunks, level0, finished.bytes_out, finished.sha256,
                     time.perf_counter() - started, pictured, levels_selection, levels_spec)


def paired_region(region: tuple[slice, ...], plans: list[LevelPlan]) -> tuple[slice, ...]:
    """A level-0 region widened to the whole 2-blocks level 1 is made of (along the axes it halves): a sample chunk
    one plane deep, where level 1 halves z, becomes two planes (at the image's end the block is cut, as the level's
    own pixels are)."""
    return tuple(slice(r.start - r.start % 2, min(n, r.stop + r.stop % 2)) if i in plans[1].halved else r
                 for i, (r, n) in enumerate(zip(region, plans[0].level.shape)))


def _levels_choice(paired: list[np.ndarray], candidates: list[CodecSpec], selection: CodecSelection,
                   levels: list[CodecSpec] | None, plans: list[LevelPlan]
                   ) -> tuple[CodecSelection | None, CodecSpec | None]:
    """How the codec of the levels below level 0 was chosen, on the pixels of level 1 that ``paired`` make (level
    0's sample chunks widened by ``paired_region``; level 0's codec chosen by ``selection``), and that codec;
    (None, None) where the levels take level 0's codec: no ``levels`` (``CompressSettings.levels_candidates``), no
    level below 0."""
    if not levels or len(plans) < 2:
        return None, None
    trial = levels_trial(candidates, selection, levels)
    below = [downsample(block, plans[1].halved, plans[1].level.downsampling) for block in paired]
    levels_selection = choose_levels_codec(below, trial)
    return levels_selection, trial[levels_selection.chosen]


_AT: dict[Any, int] = {}  # each running ``whole_images`` task (its key): the image it is on (``images_at``)


def whole_images(calls: Any) -> list[WholePass | Exception]:
    """``whole_image`` for each of several small images in one task, one after another (``calls``: each image's
    arguments, sealed, ``cluster.Sealed``). An image's failure is its own: returned in its place (without its
    traceback, which holds its pixels), not raised, and the images after it are still done. The list ends early
    when the task was cancelled (it stops before its next image) or an image ran out of memory: the caller does
    the images left again, each alone."""
    key = _task_key()
    done: list[WholePass | Exception] = []
    try:
        for i, args in enumerate(calls.value):
            if key is not None:
                if _cancelled(key):
                    break
                _AT[key] = i
            try:
                done.append(whole_image(*args))
            except Exception as exc:
                done.append(_portable(exc))
                if isinstance(exc, MemoryError):
                    break
    finally:
        _AT.pop(key, None)
    return done


def images_at(keys: list[Any]) -> dict[Any, int]:
    """On a worker (``Client.run``): the image each of the ``whole_images`` tasks ``keys`` still running is on."""
    return {key: _AT[key] for key in keys if key in _AT}


def _task_key() -> Any:
    """The key of the Dask task running this code; None outside a worker's task."""
    try:
        from distributed import get_worker

        return get_worker().get_current_task()
    except (ImportError, ValueError, AttributeError):
        return None


def _cancelled(key: Any) -> bool:
    """Whether this worker's task ``key`` is no longer wanted (cancelled, or a timed-out batch's)."""
    from distributed import get_worker

    task = get_worker().state.tasks.get(key)
    return task is None or task.state in ("cancelled", "released")


def _portable(exc: Exception) -> Exception:
    """``exc`` as it can travel back in a task's result: without its traceback and chained errors (their frames
    hold the image's pixels while the task goes on), or, when it cannot be pickled, a ``RuntimeError`` saying it."""
    exc = exc.with_traceback(None)
    exc.__context__ = exc.__cause__ = None
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


def _picture(path: str, store: str, attrs: dict[str, Any], levels: dict[str, Any]) -> bool:
    """The thumbnail of the store just finished, written at ``path`` (a temporary name: what a killed worker left
    there is swept as the store's is); False when none could be made (a picture is a courtesy: publish then makes
    it, and an image is published without one it cannot make)."""
    try:
        png = thumbnail_png(store, attrs=attrs, levels=levels)
        with open(path, "wb") as fh:
            fh.write(png)
    except Exception as exc:
        logging.getLogger("zarrchive").warning("%s: no thumbnail made by the pass (%s: %s)", store,
                                               type(exc).__name__, exc)
        try:
            os.unlink(path)  # (a picture half-written)
        except OSError:
            pass
        return False
    return True


class Finished(NamedTuple):
    """A finished store: its total size, its tree digest and its image group's attributes."""

    bytes_out: int
    sha256: str
    attributes: dict[str, Any]


def finish_store(store: str, image: ImageRecord, ngff: str, stored: Stored,
                 smallest: np.ndarray | None = None) -> Finished:
    """Complete a local store whose levels are written: sweep what a killed worker left unfinished, write the image
    group with its OME-NGFF attributes (with each channel's display window, from the ``smallest`` level's pixels
    or read from the store) and the source's OME-XML and other metadata beside it (``OME/``); return the store's
    total size and tree digest (the objects ``stored`` hashed on their read-back are not read again).

    The groups' metadata objects are written as zarr-python writes them (``ngff.group_documents``), directly:
    each of zarr's own writes is a round trip to its event-loop thread, 1-2 ms on a busy worker, and a small
    image's pass made four of them."""
    remove_unfinished_writes(store)  # left by a worker killed mid-write (its task was redone)
    windows = list(image.channel_windows) if image.channel_windows else display_windows(store, image, smallest)
    attributes = group_attributes(image, windows, ngff)
    _write_group(store, attributes, ngff)
    _keep_ome_xml(store, image, ngff)
    return Finished(*store_digest(store, stored.objects), attributes)


def _write_group(folder: str, attributes: dict[str, Any], ngff: str) -> None:
    """The metadata objects of a Zarr group with ``attributes`` at ``folder`` (replacing any there: the store is
    still under its temporary name)."""
    os.makedirs(folder, exist_ok=True)
    for name, data in group_documents(attributes, ngff).items():
        with open(os.path.join(folder, name), "wb") as fh:
            fh.write(data)


def store_digest(store: str, known: dict[str, tuple[int, str]] | None = None) -> tuple[int, str]:
    """Total size and tree digest of every object of a local Zarr store; ``known`` objects (relative path: size
    and sha256, as the writer read them back) are not read again."""
    from fsspec.implementations.local import LocalFileSystem

    local = LocalFileSystem()
    entries, total = [], 0
    for rel in walk_files(store):
        size, sha256 = (known or {}).get(rel) or sha256_stream(local, os.path.join(store, rel))
        total += size
        entries.append((rel, sha256))
    return total, tree_digest(entries)


def display_windows(store: str, image: ImageRecord, smallest: np.ndarray | None = None) -> list[tuple[float, float]]:
    """Per channel, the 0.1 and 99.9 percentiles of the smallest level (its pixels ``smallest``, or read from
    the store): the display window viewers start with (the whole range stays available as min/max)."""
    axes = image.axis_names
    level = image.levels[-1]
    # every plane of the smallest level fits a chunk; of a long z or t series, 8 evenly spaced planes will do
    sample = tuple(slice(None, None, -(-n // 8)) if name in "tz" else slice(None)
                   for name, n in zip(axes, level.shape))
    if smallest is None or smallest.shape != tuple(level.shape):
        smallest = zarr.open_array(f"{store}/{level.path}", mode="r")
    smallest = np.asarray(smallest[sample])
    planes = np.moveaxis(smallest, axes.index("c"), 0) if "c" in axes else smallest[None]  # a label: no channels
    return [window(plane) for plane in planes]


def window(plane: np.ndarray) -> tuple[float, float]:
    """The 0.1 and 99.9 percentiles of ``plane``'s finite values ((0, 1) when it has none). Unsigned integers up to
    32 bits are taken as they are: the same percentiles as of their float64 copy (numpy interpolates in float64,
    from a difference that cannot wrap: the larger value minus the smaller), in a quarter of the memory (a 16-bit
    stack's 8 planes of 512 x 512 cost 45 MiB at the end of the pass). Signed integers are copied: their
    difference wraps in their own type (-32768 and 199 in int16)."""
    values = plane[np.isfinite(plane)] if np.issubdtype(plane.dtype, np.floating) else plane
    exact = values.dtype.kind == "u" and values.dtype.itemsize <= 4
    values = (values if exact else values.astype(np.float64)).ravel()
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [0.1, 99.9])
    return float(lo), float(hi if hi > lo else lo + 1)


def _keep_ome_xml(store: str, image: ImageRecord, ngff: str) -> None:
    """The source's OME-XML beside the image, as in the bioformats2raw layout: ``OME/METADATA.ome.xml``."""
    _write_group(f"{store}/OME", {"ome": {"version": ngff}} if ngff == "0.5" else {}, ngff)
    shutil.copyfile(image.metadata_xml, f"{store}/OME/METADATA.ome.xml")
    for name, kept in image.documents:  # other original metadata (an MRC header, Imaris' DataSetInfo)
        os.makedirs(os.path.dirname(f"{store}/{name}"), exist_ok=True)
        shutil.copyfile(kept, f"{store}/{name}")


def array_layout(plan: LevelPlan, codec: Any, axes: list[str], ngff: str) -> dict[str, Any]:
    """``create_array`` arguments for a level: sharded Zarr v3 with named dimensions (NGFF 0.5), or Zarr v2
    with '/'-separated chunk keys (NGFF 0.4)."""
    if ngff == "0.5":
        return {"shards": plan.shards, "dimension_names": axes, **array_codec_kwargs(codec)}
    return {"compressors": v2_codec(codec), "chunk_key_encoding": {"name": "v2", "separator": "/"}}


def downsample_regions(store: str, above: str, plan: LevelPlan, regions: list[tuple[slice, ...]]) -> Stored:
    """Make ``regions`` (whole shards) of a level from the level above it in the output, proven."""
    source = zarr.open_array(f"{store}/{above}", mode="r")
    target = ArrayWriter.open(f"{store}/{plan.level.path}")
    stored = Stored()
    with zarr.config.set(ZARR_CONFIG):
        for region in regions:
            wide = tuple(slice(r.start * 2, min(r.stop * 2, n)) if i in plan.halved else r
                         for i, (r, n) in enumerate(zip(region, source.shape)))
            block = downsample(np.ascontiguousarray(source[wide]), plan.halved, plan.level.downsampling)
            stored.add(target.write(region, block, f"{plan.level.path}/"))
    return stored


def _ready(samples: list[tuple[slice, ...]], encoded: list[bytes], chunks: tuple[int, ...]
           ) -> dict[tuple[int, ...], bytes]:
    """The codec trial's encodings of whole level-0 chunks (``encoded``, one per sample region), by the chunk's
    origin: in Zarr v3 the trial encodes with the writer's own chunk coder, so they are those chunks as stored."""
    return {tuple(r.start for r in region): data for region, data in zip(samples, encoded)
            if tuple(r.stop - r.start for r in region) == tuple(chunks)}


def select_codec(source: str, image: ImageRecord, regions: list[tuple[slice, ...]], candidates: list[CodecSpec],
                 choice: dict[str, float], levels: list[CodecSpec] | None = None, plans: list[LevelPlan] | None = None
                 ) -> tuple[CodecSelection, CodecSelection | None, CodecSpec | None]:
    """On a worker: read the sample chunks from the source and choose among the candidates; with ``levels`` and
    the image's ``plans``, the levels' codec too (``whole_image``'s choices, made on the same pixels): how each was
    chosen, and the levels' codec (None: level 0's)."""
    shown_as = image.shown_as
    plans = plans or []
    wide = [paired_region(region, plans) if levels and len(plans) > 1 else region for region in regions]
    try:
        paired = [read_region(source, image.layout, region) for region in wide]
    except Exception as exc:
        if (named := _named(exc, shown_as, "pixels")) is exc:
            raise
        raise named from exc
    samples = [np.ascontiguousarray(block[tuple(slice(r.start - w.start, r.stop - w.start)
                                                for r, w in zip(region, at))])
               for block, region, at in zip(paired, regions, wide)]
    selection = choose_codec(samples, candidates, **choice)
    return (selection, *_levels_choice(paired, candidates, selection, levels, plans))


def facts_of_store(store: str, level0: str, regions: list[tuple[slice, ...]], channel_axis: int | None,
                   kind: str) -> tuple[list[str], list[list[dict[str, Any]]]]:
    """QC's facts of a store whose level 0 is one batch of chunks, in one task: what the independent OME-NGFF
    validator finds in it (``ngff.validate_image``, or ``validate_label``), and ``chunk_stats`` of ``regions``."""
    problems = (validate_label if kind == "label" else validate_image)(store)
    stats = chunk_stats_or_fault(f"{store}/{level0}", regions, channel_axis)
    return (problems, [stats]) if isinstance(stats, list) else (problems + [stats], [])


class Undecodable(Exception):
    """A store's chunks cannot be read back: the store's fault (damaged since its pass proved it)."""


PROGRAM_ERRORS = (TypeError, AttributeError, NameError, ImportError, AssertionError, NotImplementedError)


def chunk_stats_or_fault(array_path: str, regions: list[tuple[slice, ...]],
                         channel_axis: int | None) -> list[dict[str, Any]] | str:
    """``chunk_stats``, or why the chunks cannot be read when that is the store's fault (a chunk damaged since the
    pass proved it): its image then fails its checks, and every other image of the run is still checked."""
    try:
        return chunk_stats(array_path, regions, channel_axis)
    except Undecodable as exc:
        return f"level 0 cannot be read: {exc}"


def facts_of_stores(stores: list[tuple[str, str, list[tuple[slice, ...]], int | None, str]]
                    ) -> list[tuple[list[str], list[list[dict[str, Any]]]]]:
    """``facts_of_store`` of several small stores in one task, in order."""
    return [facts_of_store(*store) for store in stores]


def _undecodable_named(read: Any) -> Any:
    """``read()``; a failure that is the store's (``errors.is_file_fault``, not a program's error) as
    ``Undecodable``."""
    try:
        return read()
    except PROGRAM_ERRORS:
        raise
    except Exception as exc:
        if not is_file_fault(exc):
            raise
        raise Undecodable(f"{type(exc).__name__}: {exc}") from exc


def chunk_stats(array_path: str, regions: list[tuple[slice, ...]], channel_axis: int | None) -> list[dict[str, Any]]:
    """Per chunk and channel: min, max, sum, count, saturated and zero pixel counts; sha256 of each chunk."""
    array = _undecodable_named(lambda: zarr.open_array(array_path, mode="r"))
    dtype = array.dtype
    top = float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else None
    out = []
    for region in regions:
        block = np.ascontiguousarray(_undecodable_named(lambda: array[region]))
        digest = hashlib.sha256(block.tobytes()).hexdigest()
        start = region[channel_axis].start if channel_axis is not None else 0
        planes = np.moveaxis(block, channel_axis, 0) if channel_axis is not None else block[None]
        for offset, plane in enumerate(planes):
            values = plane.astype(np.float64) if dtype == np.bool_ else plane
            finite = values[np.isfinite(values)] if np.issubdtype(values.dtype, np.floating) else values
            out.append({
                "channel": start + offset, "sha256": digest if offset == 0 else None,
                "min": float(finite.min()) if finite.size else None,
                "max": float(finite.max()) if finite.size else None,
                "sum": float(finite.sum(dtype=np.float64)), "count": int(finite.size),
                "saturated": int(np.count_nonzero(plane == top)) if top is not None else 0,
                "zero": int(np.count_nonzero(plane == 0)),
            })
    return out


