"""Compress: one streaming pass from the source file to every level of a compressed, sharded OME-Zarr.

The output is sharded (Zarr v3 sharding: many chunks per stored object) so a
large image is not hundreds of thousands of files. The pass is cut into
regions of level 0 made of whole shards; a cluster task (``passes.stream_region``)
reads its region of the source once (``sources.read_region``), writes it, then
halves it in memory for the next level (``blocks.downsample``: mean, or mode
for labels) and writes that too, for as many levels as its region still holds
whole shards of. The few small levels left are then made the same way from
the level above them in the output (``passes.downsample_regions``).

Every write is proven (``shards.ArrayWriter``): each shard is read back from
the disk and every chunk of it decoded and compared bit for bit with the
pixels meant; any difference fails the image. The sha256 of every level-0
chunk's pixels gives level 0 a digest in chunk order, and the sha256 of every
stored object (taken on the read-back) the store's tree digest. Regions never
share a shard, so a task that is re-run (a worker died) rewrites whole
shards. The store is built under a temporary name and renamed when complete.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import fsspec
import numpy as np
import zarr
from distributed import as_completed

from zarrchive import batch, faults, runlog
from zarrchive.archive.identity import compress_key, compressed_name
from zarrchive.archive.lineage import Traced, stage_task, trace, traced
from zarrchive.archive.staging import partial_name
from zarrchive.archive.storage import write_bytes_atomic
from zarrchive.cluster import Sealed, client_for, wait_until_stopped
from zarrchive.config import CodecSpec, CompressSettings
from zarrchive.errors import InputError, StageFailed, StageTimeout, ZarrchiveError, is_cluster_failure
from zarrchive.ngff import ZARR_FORMAT
from zarrchive.pixels.blocks import chunk_slices
from zarrchive.pixels.codecs import choice_of, make_codec, sample_regions, supports, v2_codec
from zarrchive.pixels.passes import (
    BATCH, LevelPlan, WholePass, array_layout, downsample_regions, finish_store, select_codec, stream_region,
    images_at, whole_image, whole_images,
)
from zarrchive.pixels.shards import Stored
from zarrchive.records import CodecChoice, CodecSelection, CompressionReport, FileRecord, ImageRecord, factors
from zarrchive.units import human_size

LOCAL = fsspec.filesystem("file")

REGION_BYTES = 128 << 20  # level-0 pixels per streaming task at most: a run of whole shards along x
# a task reads its region a slab at a time (passes.slabs: a z-stack's plane of one shard's width, or two planes
# where z is halved, or the source's own chunks when deeper, up to the whole region; a 2-D image's region is cut
# along y only where every level's chunk rows stay whole) and appends each slab's chunks to its objects as it goes
# (shards.RegionWrite): its arrays peak at about 3x a slab (the slab, its halves, a chunk encoded and read back),
# 1.8 MiB for a region of 1 MiB planes two shards wide by tracemalloc, against 2.5x the region when it held it
MEMORY_SHARE = 8
# a batch's small images go to the cluster several to a task (``Group``): a task costs about 5 ms of CPU whatever its
# work (3 in the flow's process, where a local cluster's scheduler runs, 2 on the worker; 2,000 tasks on a local
# cluster of 2 workers), a third of a 256x256 image's pass; 8 images to a task, 1 ms an image
GROUP_IMAGES = 8
GROUP_BYTES = 16 << 20  # level 0 of a group's images together at most: a larger image is worth a task of its own
STOP_SECONDS = 120  # a pass past its time is cancelled; one already running (it cannot be interrupted) is given this
#                     long to end before its store is removed (a group's task: its image then still running fails)
_STUCK: dict[str, set[str]] = {}  # by scheduler: workers a stopped pass still holds a thread of (none sent there)
TOO_LONG = ("the compress pass took longer than compress.timeout_seconds; the image failed and nothing of it was kept "
            "(raise the limit if it is that large)")

def shard_shape(axes: list[str], shape: tuple[int, ...], chunks: tuple[int, ...],
                settings: CompressSettings) -> tuple[int, ...] | None:
    """The shard of a level: ``shard_z`` x ``shard_xy`` x ``shard_xy`` chunks' worth, whole chunks, no larger
    than the level; None when sharding is off (``shard_xy: 0``)."""
    if not settings.shard_xy:
        return None
    edge = {"t": 1, "c": 1, "z": settings.shard_z, "y": settings.shard_xy, "x": settings.shard_xy}
    out = []
    for axis, n, c in zip(axes, shape, chunks):
        want = min(max(edge[axis], c), -(-n // c) * c)
        out.append(-(-want // c) * c)
    return tuple(out)


def plan_writes(image: ImageRecord, settings: CompressSettings) -> list[LevelPlan]:
    """The write plan of every level: level 0 in units of whole shards; each next level streamed while the
    halved unit still holds whole chunks of it, the rest made from the level above."""
    axes = image.axis_names
    level0 = image.levels[0]
    sharded = settings.shard_xy > 0 and settings.ngff == "0.5"  # Zarr v2 (NGFF 0.4) has no sharding
    edge_settings = settings if sharded else settings.model_copy(update={"shard_xy": 2048})
    unit = shard_shape(axes, level0.shape, level0.chunks, edge_settings) or level0.chunks
    plans = [LevelPlan(level0, unit if sharded else None, unit, (), True)]
    streaming = True
    for above, level in zip(image.levels, image.levels[1:]):
        factor = factors(above, level)
        halved = tuple(i for i, f in enumerate(factor) if f == 2)
        if streaming:
            whole = all(u % f == 0 for u, f in zip(unit, factor))
            unit = tuple(u // f for u, f in zip(unit, factor))
            streaming = whole and all(u % c == 0 or u >= n for u, c, n in zip(unit, level.chunks, level.shape))
        if streaming:
            shards = tuple(u if u < n else -(-n // c) * c for u, c, n in zip(unit, level.chunks, level.shape))
            plans.append(LevelPlan(level, shards if sharded and shards != level.chunks else None, shards, halved,
                                   True))
        else:
            shards = shard_shape(axes, level.shape, level.chunks, settings) if sharded else None
            plans.append(LevelPlan(level, shards, shards or level.chunks, halved, False))
    return plans


def stream_regions(image: ImageRecord, plans: list[LevelPlan], budget: int = REGION_BYTES) -> list[tuple[slice, ...]]:
    """Level-0 regions for the streaming tasks: whole units, grouped along x up to ``budget`` bytes."""
    level0 = plans[0].level
    unit = list(plans[0].unit)
    per_unit = int(np.prod([min(u, n) for u, n in zip(unit, level0.shape)])) * np.dtype(image.dtype).itemsize
    unit[-1] *= max(1, min(budget // max(per_unit, 1), -(-level0.shape[-1] // unit[-1])))
    return chunk_slices(level0.shape, tuple(unit))


def gather_all(client: Any, futures: list[Any], deadline: float | None = None, shown_as: str = "") -> list[Any]:
    """The results of ``futures`` once every one has finished: a failure is raised only when no task is still
    writing into the store (which is then removed). Past ``deadline`` (``time.monotonic()``) the tasks are
    cancelled, those running are let finish, and ``StageTimeout`` names the image.

    Once gathered, the tasks are forgotten by the cluster at once (``client.cancel``): dropping the futures tells it
    only later, and a worker that dies holding a result meanwhile would have its task done again, writing its part
    of the store anew under the temporary name after the store was put in place (a ``pure=False`` task's key is
    wanted by no other)."""
    if not all(f.done() for f in futures):  # (done already, begun ahead in a batch: its deadline no longer matters)
        _wait(client, futures, deadline, shown_as)
    results = client.gather(futures)
    with contextlib.suppress(Exception):
        client.cancel(futures)
    return results


def _wait(client: Any, futures: list[Any], deadline: float | None, shown_as: str) -> None:
    """Wait for ``futures`` until ``deadline``; past it, cancel them, let those running end, raise ``StageTimeout``."""
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        for _done in as_completed(futures, loop=client.loop, timeout=left):  # the client's loop: no default client
            pass
    except TimeoutError:
        client.cancel(futures)
        wait_until_stopped(client, [f.key for f in futures], STOP_SECONDS)  # one running still writes: let it end
        raise StageTimeout(shown_as, TOO_LONG)


def region_budget(client: Any) -> int:
    """Bytes of level 0 per streaming task: ``REGION_BYTES``, or less where workers have little memory, so a
    worker's memory bounds the pass whatever the image's size (one region is whole shards, at the least)."""
    limits = [w.get("memory_limit") or 0 for w in client.scheduler_info()["workers"].values()]
    smallest = min((limit for limit in limits if limit), default=0)
    return min(REGION_BYTES, smallest // MEMORY_SHARE) if smallest else REGION_BYTES


def compress_image(image: ImageRecord, source: FileRecord, work: str, settings: CompressSettings,
                   scheduler: str, progress: Callable[[int, int], None] | None = None,
                   level0_digest: bool = True, picture: bool = True) -> CompressionReport:
    """Write every level of ``image`` from its source file into a compressed OME-Zarr under ``<work>/compress/``,
    proving each write lossless; ``progress(done, total)`` hears the bytes of level 0 written so far. Without
    ``level0_digest`` the report has no digest of level 0's pixels (QC's re-check; the proof stays); without
    ``picture`` no thumbnail is made for the landing page (``zarrchive convert`` publishes none)."""
    with client_for(scheduler) as client:
        small = _level0_bytes(image) <= region_budget(client)
    if not small:
        return _streamed(image, source, work, settings, scheduler, progress, level0_digest)
    total = _level0_bytes(image)  # small: one task does it all (it holds level 0)
    if progress is not None:
        progress(0, total)
    report = end_whole(begin_whole(image, source, work, settings, scheduler, level0_digest, picture))
    if progress is not None:
        progress(total, total)
    return report


@dataclass(frozen=True)
class Begun:
    """An image's whole pass, submitted to the cluster by ``begin_whole``: what ``end_whole`` needs."""

    image: ImageRecord
    settings: CompressSettings
    scheduler: str
    store: str  # the store as it is written (a temporary name)
    final: str  # its name once complete
    plans: list[LevelPlan]
    candidates: list[CodecSpec]  # the profile's, as the pass was given them (its choice indexes them)
    future: Any  # the pass's Dask future, or its place in a ``Group``'s task (a ``Slot``)
    digests: bool
    thumbnail: str | None  # where the pass writes the image's picture, a temporary name (None: it makes none)


class Group:
    """The whole passes of several small images, sent to the cluster in one task (``passes.whole_images``) once
    ``size`` images are in it (or no more fit in ``GROUP_BYTES``), or when one of its images is waited for.

    An image's failure stays its own: the task returns it in the image's place. When the task fails as a whole (its
    worker died more often than the cluster allows, it ran past the time of one image, ``compress.timeout_seconds``,
    or anything else), it is stopped before its next image and, once no worker runs it, each of its images is sent
    again one by one as it is ended, in a task of its own ahead of the work queued (under the same temporary names,
    which nothing else writes any more) and waited for with a time of its own; after an image out of memory, the
    images left are. So an image that kills its worker fails alone, and the others are stored. An image the task is
    still on ``STOP_SECONDS`` after it was stopped (a reader that never ends) fails there and then, not sent again:
    it would take a second thread. When a worker cannot say whether it runs the task, its images fail instead."""

    def __init__(self, scheduler: str, size: int = GROUP_IMAGES) -> None:
        self.scheduler, self.size = scheduler, size
        self.calls: list[tuple] = []
        self.held = 0
        self.future: Any = None
        self.outcome: list[WholePass | Exception] | Exception | None = None  # its results, or why it was not sent
        self.stuck: int | None = None  # the image the task was still on when it should have stopped
        self.unsure = False  # the task could not be stopped, and the image it is on could not be told

    def has_room(self, nbytes: int) -> bool:
        return (self.future is None and self.outcome is None and len(self.calls) < self.size
                and self.held + nbytes <= GROUP_BYTES)

    def add(self, call: tuple, nbytes: int) -> Slot:
        self.calls.append(call)
        self.held += nbytes
        if len(self.calls) >= self.size:
            self.submit()
        return Slot(self, len(self.calls) - 1)

    def submit(self) -> None:
        """Send the task, once; when it cannot be sent, that is each of its images' failure (as each is ended)."""
        if self.future is None and self.outcome is None and self.calls:
            try:
                with client_for(self.scheduler) as client:
                    self.future = client.submit(whole_images, Sealed(self.calls), pure=False,
                                                **_elsewhere(client, self.scheduler))
            except Exception as exc:
                self.outcome = exc

    def cancel(self) -> None:
        if self.future is not None:
            self.future.cancel()

    def result(self, index: int, deadline: float, shown_as: str, seconds: float) -> WholePass:
        """Image ``index``'s pass: the task waited for until ``deadline`` (by the first image asking), or the
        image's own task, waited for ``seconds`` from now; the image's own failure raised."""
        self.submit()
        if self.outcome is None:
            self._gather(deadline, shown_as)
        if isinstance(self.outcome, Exception):
            raise self.outcome
        if index < len(self.outcome):
            if isinstance(done := self.outcome[index], Exception):
                raise done
            return done
        if index == self.stuck:
            raise StageTimeout(shown_as, TOO_LONG)
        if self.unsure:
            raise StageFailed(f"{shown_as}: the compress task it shared with {len(self.calls) - 1} other image(s) could "
                              "not be stopped, and the image it is on could not be told: not done again (two passes "
                              "would write one store)")
        # one at a time, ahead of the work queued (an image that kills its worker takes no other redone one with it)
        with client_for(self.scheduler) as client:
            future = client.submit(whole_image, *self.calls[index], pure=False, priority=1,
                                   **_elsewhere(client, self.scheduler))
            [done] = gather_all(client, [future], time.monotonic() + seconds, shown_as)
        return done

    def _gather(self, deadline: float, shown_as: str) -> None:
        """The task's results (those of the images it did; each other one is done again alone as it is ended)."""
        try:
            with client_for(self.scheduler) as client:
                [self.outcome] = gather_all(client, [self.future], deadline, shown_as)
        except Exception as exc:
            if len(self.calls) == 1:
                self.outcome = exc  # the one image's own failure
                return
            self.outcome = []
            waited = isinstance(exc, StageTimeout)  # (past its time: gather_all stopped it and waited for it)
            if not self._stopped(0 if waited else STOP_SECONDS):
                self.stuck = self._still_on()
                self.unsure = self.stuck is None
            then = ("none is done again: it could not be stopped, and the image it is on could not be told"
                    if self.unsure else "each is done again alone" + (
                        "" if self.stuck is None else f" but image {self.stuck + 1}, still running (it fails)"))
            runlog.logger().warning("compress: the task of %d images failed as a whole (%s: %s); %s",
                                    len(self.calls), type(exc).__name__, exc, then)
        finally:
            self.future = None
        if 0 < len(self.outcome) < len(self.calls):
            runlog.logger().warning("compress: the task of %d images stopped after image %d (%s); the others are "
                                    "done again alone", len(self.calls), len(self.outcome), self.outcome[-1])

    def _stopped(self, seconds: float) -> bool:
        """Whether the task has ended (cancelled, then given ``seconds`` to end; False when a worker could not say):
        only then may its images be written again under the same names."""
        try:
            with client_for(self.scheduler) as client:
                client.cancel([self.future])
                return wait_until_stopped(client, [self.future.key], seconds)
        except Exception:
            return False

    def _still_on(self) -> int | None:
        """The image the task is still on, when it has not ended; its worker gets no more of this process's passes
        (its thread stays taken, and what is sent there waits behind it). None when it cannot be told."""
        try:
            with client_for(self.scheduler) as client:
                found = client.run(images_at, [self.future.key], on_error="ignore")
        except Exception:
            return None
        for worker, at in found.items():
            if isinstance(at, dict) and self.future.key in at:
                _STUCK.setdefault(self.scheduler, set()).add(worker)
                return at[self.future.key]
        return None


def _elsewhere(client: Any, scheduler: str) -> dict[str, Any]:
    """``submit`` arguments that keep a task off the workers whose thread a stopped pass still holds (it would wait
    behind it), when other workers can take it."""
    stuck = _STUCK.get(scheduler)
    if not stuck:
        return {}
    others = [w for w in client.scheduler_info()["workers"] if w not in stuck]
    return {"workers": others, "allow_other_workers": True} if others else {}


@dataclass(frozen=True)
class Slot:
    """An image's place in a ``Group``'s task."""

    group: Group
    index: int

    def cancel(self) -> None:
        self.group.cancel()


def begin_whole(image: ImageRecord, source: FileRecord, work: str, settings: CompressSettings, scheduler: str,
                level0_digest: bool = True, picture: bool = True, group: Group | None = None) -> Begun:
    """Submit the whole pass of an image no larger than a streaming region may be (``passes.whole_image``: the
    codec trial, every level, the proofs, the store's metadata and, with ``picture``, the thumbnail of an image
    that is not a label, on a worker) — in a task of its own, or in ``group``'s; ``end_whole`` waits for it.
    Many can be begun before the first is ended: the cluster's workers do them meanwhile."""
    _check_source(image, source)
    faults.point("compress.start")
    final, store = _names(image, work, settings)
    candidates = settings.candidates()
    if len(candidates) == 1 and (why := supports(candidates[0], np.dtype(image.dtype))):
        raise InputError(image.shown_as, f"the codec profile's one candidate cannot store it losslessly: {why}")
    level0 = image.levels[0]
    samples = sample_regions(level0.shape, level0.chunks, settings.sample_chunks) if len(candidates) > 1 else []
    plans = plan_writes(image, settings)
    thumbnail = partial_name(f"{final}.png") if picture and image.kind == "image" else None
    call = (source.staged_path, image, store, plans, candidates, samples, settings.choice(_encoded_bytes(image)),
            settings.ngff, level0_digest, thumbnail, settings.levels_candidates())
    if group is not None:
        future = group.add(call, _level0_bytes(image))
    else:
        with client_for(scheduler) as client:
            future = client.submit(whole_image, *call, pure=False, **_elsewhere(client, scheduler))
    return Begun(image, settings, scheduler, store, final, plans, candidates, future, level0_digest, thumbnail)


def end_whole(begun: Begun) -> CompressionReport:
    """Wait for a pass ``begin_whole`` submitted and put its store in place; its report. ``compress.timeout_seconds``
    counts from now: an image begun ahead in a batch is not charged the wait for the images before it (a group's
    task, waited for by its first image, is given one image's time; an image done again alone, its own)."""
    image, settings = begun.image, begun.settings
    deadline = time.monotonic() + settings.timeout_seconds
    try:
        if isinstance(begun.future, Slot):
            done = begun.future.group.result(begun.future.index, deadline, image.source_path,
                                             settings.timeout_seconds)
        else:
            with client_for(begun.scheduler) as client:
                [done] = gather_all(client, [begun.future], deadline, image.source_path)
        _put_in_place(begun.store, begun.final)
    except Exception as exc:
        if begun.thumbnail:
            with contextlib.suppress(OSError):
                os.unlink(begun.thumbnail)
        if (failed := _discarded(exc, image, begun.store)) is exc:
            raise
        raise failed from exc
    chosen = begun.candidates[done.selection.chosen if done.selection else 0]
    return _report(image, begun.final, make_codec(chosen), done.selection, begun.plans, settings.ngff,
                   done.chunks, done.level0 if begun.digests else None, done.bytes_out, done.sha256, done.seconds,
                   _picture_beside(begun) if done.thumbnail else None,
                   make_codec(done.levels_spec or chosen), done.levels)


def _picture_beside(begun: Begun) -> str | None:
    """The picture the pass made, moved beside its store (now in place); None when it cannot be (publish then makes
    it: a picture is a courtesy, never a reason for the image to fail)."""
    try:
        os.replace(begun.thumbnail, f"{begun.final}.png")
    except OSError:
        return None
    return f"{begun.final}.png"


def _streamed(image: ImageRecord, source: FileRecord, work: str, settings: CompressSettings, scheduler: str,
              progress: Callable[[int, int], None] | None, level0_digest: bool) -> CompressionReport:
    """The compress pass of an image larger than a streaming region: streamed region by region."""
    _check_source(image, source)
    faults.point("compress.start")
    started, deadline = time.perf_counter(), time.monotonic() + settings.timeout_seconds
    final, store = _names(image, work, settings)
    plans = plan_writes(image, settings)
    stored = Stored()
    try:
        with client_for(scheduler) as client:
            codec, selection, level_codec, levels = _codec_for(image, source, settings, client, plans)
            root = zarr.open_group(store, mode="w", zarr_format=ZARR_FORMAT[settings.ngff])
            for plan in plans:
                root.create_array(plan.level.path, shape=plan.level.shape, chunks=plan.level.chunks,
                                  dtype=image.dtype, fill_value=0, **array_layout(
                                      plan, codec if plan is plans[0] else level_codec, image.axis_names,
                                      settings.ngff))
            level0 = _stream(client, image, source, store, plans, stored, deadline, progress, level0_digest)
            _small_levels(client, image, store, plans, stored, deadline)
        bytes_out, digest, _attributes = finish_store(store, image, settings.ngff, stored)
        _put_in_place(store, final)
    except Exception as exc:
        if (failed := _discarded(exc, image, store)) is exc:
            raise
        raise failed from exc
    return _report(image, final, codec, selection, plans, settings.ngff, stored.chunks,
                   level0 if level0_digest else None, bytes_out, digest, time.perf_counter() - started,
                   levels_codec=level_codec, levels=levels)


def _check_source(image: ImageRecord, source: FileRecord) -> None:
    if source.sha256 != image.source_sha256:
        raise InputError(source.path, "the staged file is not the one the image was converted from "
                                      f"(sha256 {source.sha256[:12]}…, expected {image.source_sha256[:12]}…)")


def _names(image: ImageRecord, work: str, settings: CompressSettings) -> tuple[str, str]:
    """The store's name once complete, and the temporary name it is written under. Each attempt writes its own
    store (runs compressing the same image at once never touch each other's); the temporary name holds this
    process's id (``staging.clean_stale`` removes those of killed processes)."""
    final = f"{work.rstrip('/')}/compress/{compressed_name(image, settings)}-{uuid.uuid4().hex[:8]}.ome.zarr"
    return final, partial_name(final)


def _put_in_place(store: str, final: str) -> None:
    os.replace(store, final)


def _discarded(exc: Exception, image: ImageRecord, store: str) -> Exception:
    """A failed pass: its store removed; the failure to raise, told as what it is (``exc`` itself, or a
    ``StageFailed`` naming the image that ``exc`` caused)."""
    shutil.rmtree(store, ignore_errors=True)
    if isinstance(exc, (ZarrchiveError, OSError, MemoryError)) or is_cluster_failure(exc):
        return exc  # what it is: the data's, a check's, the machine's or the cluster's
    return StageFailed(f"{image.image_id}: the compress pass failed: {type(exc).__name__}: {exc}")


def _report(image: ImageRecord, store: str, codec: Any, selection: CodecSelection | None, plans: list[LevelPlan],
            ngff: str, chunks: int, level0: list[tuple] | None, bytes_out: int, digest: str,
            seconds: float, thumbnail: str | None = None, levels_codec: Any = None,
            levels: CodecSelection | None = None) -> CompressionReport:
    bytes_in = sum(int(np.prod(p.level.shape)) * np.dtype(image.dtype).itemsize for p in plans)
    first = _choice(codec, ngff)
    below = _choice(levels_codec, ngff) if levels_codec is not None and len(plans) > 1 else None
    return CompressionReport(
        image_id=image.image_id, store=store, codec=first, selection=selection,
        levels_codec=below if below != first else None, levels_selection=levels,
        bytes_in=bytes_in, bytes_out=bytes_out, ratio=round(bytes_in / bytes_out, 4) if bytes_out else 0.0,
        seconds=round(seconds, 3), chunks_verified=chunks,
        level0_sha256=hashlib.sha256("".join(d for _s, d in sorted(level0)).encode()).hexdigest()
        if level0 is not None else None,
        store_sha256=digest, thumbnail=thumbnail,
    )


def _choice(codec: Any, ngff: str) -> CodecChoice:
    """A codec as its arrays' metadata names it."""
    if ngff == "0.5":
        return choice_of(codec)
    config = v2_codec(codec).get_config()  # a Zarr v2 compressor: {"id": ..., options}
    return CodecChoice(name=config.pop("id"), configuration=config)


def _level0_bytes(image: ImageRecord) -> int:
    return int(np.prod(image.levels[0].shape)) * np.dtype(image.dtype).itemsize


def _encoded_bytes(image: ImageRecord) -> int:
    """The bytes level 0's chunks encode (what a slow candidate's time is for): a chunk cut by the image's end is
    encoded whole, padded with the fill value (a small image's chunks are cut to it: no padding)."""
    level = image.levels[0]
    return int(np.prod([-(-n // c) * c for n, c in zip(level.shape, level.chunks)])) * np.dtype(image.dtype).itemsize


def _stream(client: Any, image: ImageRecord, source: FileRecord, store: str, plans: list[LevelPlan], stored: Stored,
            deadline: float, progress: Callable[[int, int], None] | None, digests: bool) -> list[tuple]:
    """The single streaming pass: each region of the source read once on a worker and written to level 0 and
    every streamed level below it; the digests of level 0's chunks (none unless ``digests``)."""
    regions = stream_regions(image, plans, region_budget(client))
    futures = client.map(stream_region, [source.staged_path] * len(regions), [image] * len(regions),
                         [store] * len(regions), regions, [plans] * len(regions), [digests] * len(regions),
                         pure=False)
    if progress is not None:
        _report_progress(client, futures, regions, np.dtype(image.dtype).itemsize, progress, deadline)
    level0: list[tuple] = []
    for region_stored, region_digests in gather_all(client, futures, deadline, image.source_path):
        stored.add(region_stored)
        level0 += region_digests
    return level0


def _small_levels(client: Any, image: ImageRecord, store: str, plans: list[LevelPlan], stored: Stored,
                  deadline: float) -> None:
    """The levels too small to stream, each made from the one above it in the output, whole shards per task."""
    for above, plan in zip(plans, plans[1:]):
        if plan.streamed:
            continue
        shards = chunk_slices(plan.level.shape, plan.unit)
        per_task = max(1, BATCH // int(np.prod([-(-u // c) for u, c in zip(plan.unit, plan.level.chunks)])))
        batches = [shards[i:i + per_task] for i in range(0, len(shards), per_task)]
        futures = client.map(downsample_regions, [store] * len(batches), [above.level.path] * len(batches),
                             [plan] * len(batches), batches, pure=False)
        for batch_stored in gather_all(client, futures, deadline, image.source_path):
            stored.add(batch_stored)


def _report_progress(client: Any, futures: list[Any], regions: list[tuple[slice, ...]], itemsize: int,
                     progress: Callable[[int, int], None], deadline: float | None = None) -> None:
    """Call ``progress(done, total)`` in bytes of level 0 as the streaming tasks finish (failed ones too)."""
    sizes = {f.key: int(np.prod([r.stop - r.start for r in region])) * itemsize for f, region in zip(futures, regions)}
    total, done = sum(sizes.values()), 0
    progress(0, total)
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        for future in as_completed(futures, loop=client.loop, timeout=left):
            done += sizes[future.key]
            progress(done, total)
    except TimeoutError:
        return  # gather_all reports it


def _codec_for(image: ImageRecord, source: FileRecord, settings: CompressSettings, client: Any,
               plans: list[LevelPlan]) -> tuple[Any, CodecSelection | None, Any, CodecSelection | None]:
    """The image's codec: the fixed one, or the profile's candidate chosen on a sample of its chunks; how it was
    chosen; the codec of the levels below level 0 and how it was chosen (None: level 0's)."""
    candidates = settings.candidates()
    if len(candidates) == 1:
        if why := supports(candidates[0], np.dtype(image.dtype)):
            raise InputError(image.shown_as, f"the codec profile's one candidate cannot store it losslessly: {why}")
        return make_codec(candidates[0]), None, make_codec(candidates[0]), None
    level0 = image.levels[0]
    regions = sample_regions(level0.shape, level0.chunks, settings.sample_chunks)
    selection, levels, levels_spec = client.submit(
        select_codec, source.staged_path, image, regions, candidates, settings.choice(_encoded_bytes(image)),
        settings.levels_candidates(), plans, pure=False).result()
    chosen = candidates[selection.chosen]
    return make_codec(chosen), selection, make_codec(levels_spec or chosen), levels


@stage_task(name="compress", task_run_name="compress: {image.image_id}",
            cache_key_fn=compress_key, persist_result=True)
def compress(image: ImageRecord, source: FileRecord, work: str, settings: CompressSettings,
             scheduler: str) -> Traced[CompressionReport]:
    log = runlog.logger()
    _log_begun(log, image)
    result = traced("compress", compress_image, image, source, work, settings, scheduler,
                    runlog.progress_reporter(f"compress {image.image_id}", log), image_id=image.image_id)
    _log_ended(log, result.output)
    return result


def _log_begun(log: Any, image: ImageRecord) -> None:
    log.info("compress %s: %s, %d level(s)", image.image_id, _described(image), len(image.levels))


def _log_ended(log: Any, report: CompressionReport, image: ImageRecord | None = None) -> None:
    """What an image's pass stored (with what the image is, when ``image`` is given: a batch says it in one line)."""
    log.info("compress %s: %s%s stored as %s (ratio %.2f, %s%s), %d chunks decoded back and compared, %.1f s",
             report.image_id, f"{_described(image)} in {len(image.levels)} level(s), " if image else "",
             human_size(report.bytes_in), human_size(report.bytes_out), report.ratio, _named_codec(report.codec),
             f"; the levels below: {_named_codec(report.levels_codec)}" if report.levels_codec else "",
             report.chunks_verified, report.seconds)


def _named_codec(codec: CodecChoice) -> str:
    return " ".join([codec.name, *(f"{k}={v}" for k, v in sorted(codec.configuration.items())
                                   if k in ("cname", "clevel", "shuffle", "level"))])


def _described(image: ImageRecord) -> str:
    return (f"{' × '.join(f'{a.name}={n}' for a, n in zip(image.axes, image.shape))} {image.dtype} "
            f"({human_size(_level0_bytes(image))})")


@stage_task(name="compress", task_run_name="compress: {name}",
            cache_policy="none")  # (its inputs can be large; its items are small: redone on a rerun)
def compress_batch(items: list[tuple[ImageRecord, FileRecord]], work: str, settings: CompressSettings,
                   scheduler: str, name: str) -> list[Traced[CompressionReport] | batch.ItemFailed]:
    """``compress`` for many small images (image, its staged source) in one task run (``zarrchive.batch``).

    The images' passes are submitted to the cluster ahead of the one waited for (as many tasks as the cluster has
    threads, and one more), so its workers go on with the next images while this task finishes one; small images
    go several to a task (``Group``: up to ``GROUP_IMAGES``, fewer when the batch would otherwise leave a thread
    without one). A batch stopped (cancelled, interrupted) cancels what has not started; a pass already running
    finishes under its temporary name, which ``staging.clean_stale`` removes once this process has ended.

    Each image's result is kept in the work area under its ``compress_key`` (as Prefect's cache keeps a task
    run's): a rerun reuses what is still there, so an unchanged image keeps its stored bytes — and its codec
    choice, which depends on measured speed — and a later version shares it."""
    log = runlog.logger()
    with client_for(scheduler) as client:
        budget, threads = region_budget(client), sum(client.nthreads().values())
    groupable = sum(1 for image, _source in items if _level0_bytes(image) <= GROUP_BYTES)
    per_group = max(1, min(GROUP_IMAGES, groupable // (threads + 1)))
    group = Group(scheduler, per_group)

    def begin(image: ImageRecord, source: FileRecord) -> Callable[[], Traced[CompressionReport]]:
        key = compress_key(None, {"image": image, "settings": settings, "work": work})
        kept = f"{work.rstrip('/')}/compress/results/{key}.json"
        if (earlier := _kept(kept)) is not None:
            log.info("compress %s: reused from an earlier run (%s)", image.image_id, earlier.output.store)
            return lambda: earlier
        if _level0_bytes(image) > budget:  # larger than the workers' memory lets one task hold: streamed
            result = compress.__wrapped__(image, source, work, settings, scheduler)
            _keep(kept, result)
            return lambda: result
        nonlocal group
        grouped = per_group > 1 and _level0_bytes(image) <= GROUP_BYTES
        if grouped and not group.has_room(_level0_bytes(image)):
            group.submit()
            group = Group(scheduler, per_group)
        started = dt.datetime.now(dt.timezone.utc)
        begun = begin_whole(image, source, work, settings, scheduler, group=group if grouped else None)

        def end() -> Traced[CompressionReport]:
            result = trace("compress", end_whole(begun), started, image, source, work, settings, scheduler,
                           image_id=image.image_id)
            _log_ended(log, result.output, image)  # one line an image: each is rendered and sent to the Prefect API
            _keep(kept, result)
            return result

        end.abandon = lambda: begun.future.cancel()  # the batch was stopped: what has not started never will
        return end

    return batch.run("compress", items, begin, lambda item: item[0].image_id, ahead=(threads + 1) * per_group)


def _kept(kept: str) -> Traced[CompressionReport] | None:
    """An image's result kept by an earlier run, when its store is still there."""
    if not os.path.exists(kept):
        return None
    try:
        earlier = Traced[CompressionReport].model_validate_json(Path(kept).read_bytes())
    except ValueError:  # damaged: made again
        return None
    return earlier if os.path.isdir(earlier.output.store) else None


def _keep(kept: str, result: Traced[CompressionReport]) -> None:
    write_bytes_atomic(LOCAL, kept, result.model_dump_json().encode())  # (its folder made the first time)
