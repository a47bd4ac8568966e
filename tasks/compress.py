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

import hashlib
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import fsspec
import numpy as np
import zarr
from distributed import as_completed

from zarrchive import batch, faults, runlog
from zarrchive.archive.identity import compress_key, compressed_name
from zarrchive.archive.lineage import Traced, stage_task, traced
from zarrchive.archive.staging import partial_name
from zarrchive.archive.storage import (
    remove_unfinished_writes,
    sha256_stream,
    tree_digest,
    walk_files,
    write_bytes_atomic,
)
from zarrchive.cluster import client_for
from zarrchive.config import CompressSettings
from zarrchive.errors import InputError, StageFailed, StageTimeout, ZarrchiveError, is_cluster_failure
from zarrchive.ngff import ZARR_FORMAT, group_attributes
from zarrchive.pixels.blocks import chunk_slices
from zarrchive.pixels.codecs import choice_of, make_codec, sample_regions, supports, v2_codec
from zarrchive.pixels.passes import (
    BATCH, LevelPlan, array_layout, downsample_regions, select_codec, stream_region, whole_image,
)
from zarrchive.pixels.shards import Stored
from zarrchive.records import CodecChoice, CodecSelection, CompressionReport, FileRecord, ImageRecord, factors
from zarrchive.units import human_size

LOCAL = fsspec.filesystem("file")

REGION_BYTES = 128 << 20  # level-0 pixels per streaming task at most: a run of whole shards along x
MEMORY_SHARE = 8  # a task holds up to ~6.5x its region (source, halved, encoded, read back, the mean's sums)

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


def store_digest(store: str, known: dict[str, tuple[int, str]] | None = None) -> tuple[int, str]:
    """Total size and tree digest of every object of a local Zarr store; ``known`` objects (relative path: size
    and sha256, as the writer read them back) are not read again."""
    entries, total = [], 0
    for rel in walk_files(store):
        size, sha256 = (known or {}).get(rel) or sha256_stream(LOCAL, os.path.join(store, rel))
        total += size
        entries.append((rel, sha256))
    return total, tree_digest(entries)


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
    cancelled, those running are let finish, and ``StageTimeout`` names the image."""
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        for _done in as_completed(futures, loop=client.loop, timeout=left):  # the client's loop: no default client
            pass
    except TimeoutError:
        client.cancel(futures)
        for _done in as_completed([f for f in futures if f.status == "pending"], loop=client.loop, timeout=120,
                                  raise_errors=False):
            pass  # a task already running still writes its shards: let it end before the store is removed
        raise StageTimeout(shown_as, "the compress pass took longer than compress.timeout_seconds; the image "
                                     "failed and nothing of it was kept (raise the limit if it is that large)")
    return client.gather(futures)


def region_budget(client: Any) -> int:
    """Bytes of level 0 per streaming task: ``REGION_BYTES``, or less where workers have little memory, so a
    worker's memory bounds the pass whatever the image's size (one region is whole shards, at the least)."""
    limits = [w.get("memory_limit") or 0 for w in client.scheduler_info()["workers"].values()]
    smallest = min((limit for limit in limits if limit), default=0)
    return min(REGION_BYTES, smallest // MEMORY_SHARE) if smallest else REGION_BYTES


def display_windows(store: str, image: ImageRecord) -> list[tuple[float, float]]:
    """Per channel, the 0.1 and 99.9 percentiles of the smallest level: the display window viewers start with
    (the whole range stays available as min/max)."""
    axes = image.axis_names
    level = image.levels[-1]
    # every plane of the smallest level fits a chunk; of a long z or t series, 8 evenly spaced planes will do
    sample = tuple(slice(None, None, -(-n // 8)) if name in "tz" else slice(None)
                   for name, n in zip(axes, level.shape))
    smallest = zarr.open_array(f"{store}/{level.path}", mode="r")[sample]
    planes = np.moveaxis(smallest, axes.index("c"), 0) if "c" in axes else smallest[None]  # a label: no channels
    windows = []
    for plane in planes:
        values = plane[np.isfinite(plane)] if np.issubdtype(plane.dtype, np.floating) else plane
        values = values.astype(np.float64).ravel()
        if values.size == 0:
            windows.append((0.0, 1.0))
            continue
        lo, hi = np.percentile(values, [0.1, 99.9])
        windows.append((float(lo), float(hi if hi > lo else lo + 1)))
    return windows


def compress_image(image: ImageRecord, source: FileRecord, work: str, settings: CompressSettings,
                   scheduler: str, progress: Callable[[int, int], None] | None = None,
                   level0_digest: bool = True) -> CompressionReport:
    """Write every level of ``image`` from its source file into a compressed OME-Zarr under ``<work>/compress/``,
    proving each write lossless; ``progress(done, total)`` hears the bytes of level 0 written so far. Without
    ``level0_digest`` the report has no digest of level 0's pixels (QC's re-check; the proof stays)."""
    if source.sha256 != image.source_sha256:
        raise InputError(source.path, "the staged file is not the one the image was converted from "
                                      f"(sha256 {source.sha256[:12]}…, expected {image.source_sha256[:12]}…)")
    faults.point("compress.start")
    started = time.perf_counter()
    deadline = time.monotonic() + settings.timeout_seconds
    # each attempt writes its own store (runs compressing the same image at once never touch each other's), under
    # a temporary name holding this process's id (``staging.clean_stale`` removes those of killed processes)
    final = f"{work.rstrip('/')}/compress/{compressed_name(image, settings)}-{uuid.uuid4().hex[:8]}.ome.zarr"
    store = partial_name(final)
    axes = image.axis_names
    plans = plan_writes(image, settings)
    stored = Stored()
    try:
        with client_for(scheduler) as client:
            if _level0_bytes(image) <= region_budget(client):  # small: one task does it all (it holds level 0)
                total = _level0_bytes(image)
                if progress is not None:
                    progress(0, total)
                codec, selection, level0 = _whole(client, image, source, store, plans, settings, stored, deadline,
                                                  level0_digest)
                if progress is not None:
                    progress(total, total)
                root = zarr.open_group(store, mode="r+")
            else:
                codec, selection = _codec_for(image, source, settings, client)
                root = zarr.open_group(store, mode="w", zarr_format=ZARR_FORMAT[settings.ngff])
                for plan in plans:
                    root.create_array(plan.level.path, shape=plan.level.shape, chunks=plan.level.chunks,
                                      dtype=image.dtype, fill_value=0,
                                      **array_layout(plan, codec, axes, settings.ngff))
                level0 = _stream(client, image, source, store, plans, stored, deadline, progress, level0_digest)
                _small_levels(client, image, store, plans, stored, deadline)
        remove_unfinished_writes(store)  # left by a worker killed mid-write (its task was redone)
        windows = list(image.channel_windows) if image.channel_windows else display_windows(store, image)
        root.update_attributes(group_attributes(image, windows, settings.ngff))
        _keep_ome_xml(store, image, settings.ngff)
        os.replace(store, final)
    except Exception as exc:
        shutil.rmtree(store, ignore_errors=True)
        if isinstance(exc, (ZarrchiveError, OSError, MemoryError)) or is_cluster_failure(exc):
            raise  # what it is: the data's, a check's, the machine's or the cluster's
        raise StageFailed(f"{image.image_id}: the compress pass failed: {type(exc).__name__}: {exc}") from exc
    bytes_in = sum(int(np.prod(p.level.shape)) * np.dtype(image.dtype).itemsize for p in plans)
    bytes_out, digest = store_digest(final, stored.objects)
    if settings.ngff == "0.5":
        choice = choice_of(codec)
    else:  # a Zarr v2 compressor: {"id": ..., options}
        config = v2_codec(codec).get_config()
        choice = CodecChoice(name=config.pop("id"), configuration=config)
    return CompressionReport(
        image_id=image.image_id, store=final, codec=choice, selection=selection,
        bytes_in=bytes_in, bytes_out=bytes_out, ratio=round(bytes_in / bytes_out, 4) if bytes_out else 0.0,
        seconds=round(time.perf_counter() - started, 3), chunks_verified=stored.chunks,
        level0_sha256=hashlib.sha256("".join(d for _s, d in sorted(level0)).encode()).hexdigest()
        if level0_digest else None,
        store_sha256=digest,
    )


def _level0_bytes(image: ImageRecord) -> int:
    return int(np.prod(image.levels[0].shape)) * np.dtype(image.dtype).itemsize


def _whole(client: Any, image: ImageRecord, source: FileRecord, store: str, plans: list[LevelPlan],
           settings: CompressSettings, stored: Stored, deadline: float, digests: bool
           ) -> tuple[Any, CodecSelection | None, list[tuple]]:
    """An image no larger than a streaming region may be: its whole pass in one task on a worker
    (``passes.whole_image``)."""
    candidates = settings.candidates()
    if len(candidates) == 1 and (why := supports(candidates[0], np.dtype(image.dtype))):
        raise InputError(image.shown_as, f"the codec profile's one candidate cannot store it losslessly: {why}")
    level0 = image.levels[0]
    samples = sample_regions(level0.shape, level0.chunks, settings.sample_chunks) if len(candidates) > 1 else []
    future = client.submit(whole_image, source.staged_path, image, store, plans, candidates, samples,
                           settings.min_encode_mbps, settings.size_tolerance, settings.ngff, digests, pure=False)
    [(selection, image_stored, digests_)] = gather_all(client, [future], deadline, image.source_path)
    stored.add(image_stored)
    return make_codec(candidates[selection.chosen if selection else 0]), selection, digests_


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


def _codec_for(image: ImageRecord, source: FileRecord, settings: CompressSettings,
               client: Any) -> tuple[Any, CodecSelection | None]:
    """The image's codec: the fixed one, or the profile's candidate chosen on a sample of its chunks."""
    candidates = settings.candidates()
    if len(candidates) == 1:
        if why := supports(candidates[0], np.dtype(image.dtype)):
            raise InputError(image.shown_as, f"the codec profile's one candidate cannot store it losslessly: {why}")
        return make_codec(candidates[0]), None
    level0 = image.levels[0]
    regions = sample_regions(level0.shape, level0.chunks, settings.sample_chunks)
    selection = client.submit(select_codec, source.staged_path, image, regions, candidates,
                              settings.min_encode_mbps, settings.size_tolerance, pure=False).result()
    return make_codec(candidates[selection.chosen]), selection


def _keep_ome_xml(store: str, image: ImageRecord, ngff: str) -> None:
    """The source's OME-XML beside the image, as in the bioformats2raw layout: ``OME/METADATA.ome.xml``."""
    group = zarr.open_group(f"{store}/OME", mode="w", zarr_format=ZARR_FORMAT[ngff])
    group.update_attributes({"ome": {"version": ngff}} if ngff == "0.5" else {})
    shutil.copyfile(image.metadata_xml, f"{store}/OME/METADATA.ome.xml")
    for name, kept in image.documents:  # other original metadata (an MRC header, Imaris' DataSetInfo)
        os.makedirs(os.path.dirname(f"{store}/{name}"), exist_ok=True)
        shutil.copyfile(kept, f"{store}/{name}")


@stage_task(name="compress", task_run_name="compress: {image.image_id}", tags=["pixels"],
            cache_key_fn=compress_key, persist_result=True)
def compress(image: ImageRecord, source: FileRecord, work: str, settings: CompressSettings,
             scheduler: str) -> Traced[CompressionReport]:
    log = runlog.logger()
    level0 = int(np.prod(image.shape)) * np.dtype(image.dtype).itemsize
    log.info("compress %s: %s %s (%s), %d level(s)", image.image_id, " × ".join(
        f"{a.name}={n}" for a, n in zip(image.axes, image.shape)), image.dtype, human_size(level0), len(image.levels))
    result = traced("compress", compress_image, image, source, work, settings, scheduler,
                    runlog.progress_reporter(f"compress {image.image_id}", log), image_id=image.image_id)
    report = result.output
    log.info("compress %s: %s stored as %s (ratio %.2f, %s), %d chunks decoded back and compared, %.1f s",
             image.image_id, human_size(report.bytes_in), human_size(report.bytes_out), report.ratio,
             " ".join([report.codec.name, *(f"{k}={v}" for k, v in sorted(report.codec.configuration.items())
                                           if k in ("cname", "clevel", "shuffle", "level"))]),
             report.chunks_verified, report.seconds)
    return result


@stage_task(name="compress", task_run_name="compress: {name}", tags=["pixels", "batch"],
            cache_policy="none")  # (its inputs can be large; its items are small: redone on a rerun)
def compress_batch(items: list[tuple[ImageRecord, FileRecord]], work: str, settings: CompressSettings,
                   scheduler: str, name: str) -> list[Traced[CompressionReport] | batch.ItemFailed]:
    """``compress`` for many small images (image, its staged source) in one task run (``zarrchive.batch``). Each
    image's result is kept in the work area under its ``compress_key`` (as Prefect's cache keeps a task run's):
    a rerun reuses what is still there, so an unchanged image keeps its stored bytes — and its codec choice,
    which depends on measured speed — and a later version shares it."""
    def one(image: ImageRecord, source: FileRecord) -> Traced[CompressionReport]:
        key = compress_key(None, {"image": image, "settings": settings, "work": work})
        kept = f"{work.rstrip('/')}/compress/results/{key}.json"
        if os.path.exists(kept):
            try:
                earlier = Traced[CompressionReport].model_validate_json(Path(kept).read_bytes())
                if os.path.isdir(earlier.output.store):
                    runlog.logger().info("compress %s: reused from an earlier run (%s)", image.image_id,
                                         earlier.output.store)
                    return earlier
            except ValueError:  # damaged: made again
                pass
        result = compress.__wrapped__(image, source, work, settings, scheduler)
        os.makedirs(os.path.dirname(kept), exist_ok=True)
        write_bytes_atomic(LOCAL, kept, result.model_dump_json().encode())
        return result

    return batch.run("compress", items, one, lambda item: item[0].image_id)
