"""Compress: encode every level with the configured lossless codec on the Dask cluster, and prove it.

The output is sharded (Zarr v3 sharding: many chunks per stored object) so a
large image is not hundreds of thousands of files. Each cluster task takes a
batch of whole shards: it reads the source region, writes it through the codec,
reads it back (decoding), and compares the decoded bytes with the source. Any
difference fails the image. The sha256 of every source chunk is returned, so
level 0 gets a digest of its decoded pixels in chunk order.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from typing import Any

import fsspec
import numpy as np
import zarr
from prefect import task
from zarr.codecs import BloscCodec, ZstdCodec

from zarrchive.cluster import client_for
from zarrchive.config import CompressSettings
from zarrchive.errors import VerificationError
from zarrchive.identity import compress_key, compressed_name
from zarrchive.lineage import Traced, traced
from zarrchive.ngff import multiscales_attrs
from zarrchive.records import CodecChoice, CompressionReport, ImageRecord
from zarrchive.storage import remove_unfinished_writes, sha256_stream, tree_digest, walk_files

LOCAL = fsspec.filesystem("file")

BATCH = 32  # chunks per cluster task


def make_codec(settings: CompressSettings) -> Any:
    """The zarr v3 codec object for the settings (both are core codecs every Zarr v3 reader has)."""
    if settings.codec == "blosc":
        return BloscCodec(cname=settings.cname, clevel=settings.clevel, shuffle=settings.shuffle)
    return ZstdCodec(level=settings.clevel)


def chunk_slices(shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[tuple[slice, ...]]:
    """The region of every chunk, in C order of chunk indices."""
    ranges = [range(0, n, c) for n, c in zip(shape, chunks)]
    return [tuple(slice(s, min(s + c, n)) for s, c, n in zip(start, chunks, shape))
            for start in itertools.product(*ranges)]


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


def encode_verify(source: str, target: str, regions: list[tuple[slice, ...]],
                  chunks: tuple[int, ...]) -> list[tuple[tuple[int, ...], str]]:
    """Copy ``regions`` (whole shards, or whole chunks) from ``source`` to ``target``, decode them back and
    compare; return the sha256 of every chunk of each region with the chunk's start."""
    src = zarr.open_array(source, mode="r")
    dst = zarr.open_array(target, mode="r+")
    digests = []
    for region in regions:
        block = np.ascontiguousarray(src[region])
        dst[region] = block
        decoded = np.ascontiguousarray(dst[region])
        if decoded.dtype != block.dtype or decoded.tobytes() != block.tobytes():
            raise VerificationError(f"{target} region {[(s.start, s.stop) for s in region]}: "
                                    "decoded pixels differ from the source")
        for sub in chunk_slices(block.shape, chunks):
            start = tuple(r.start + s.start for r, s in zip(region, sub))
            digests.append((start, hashlib.sha256(np.ascontiguousarray(block[sub]).tobytes()).hexdigest()))
    return digests


def store_digest(store: str) -> tuple[int, str]:
    """Total size and tree digest of every object of a local Zarr store."""
    entries, total = [], 0
    for rel in walk_files(store):
        size, sha256 = sha256_stream(LOCAL, os.path.join(store, rel))
        total += size
        entries.append((rel, sha256))
    return total, tree_digest(entries)


def compress_image(image: ImageRecord, work: str, settings: CompressSettings, scheduler: str) -> CompressionReport:
    """Write the compressed OME-Zarr of ``image`` under ``<work>/compress/`` and verify every chunk."""
    started = time.perf_counter()
    codec = make_codec(settings)
    store = f"{work.rstrip('/')}/compress/{compressed_name(image, settings)}.ome.zarr"
    root = zarr.open_group(store, mode="w", zarr_format=3)
    axes = [a.name for a in image.axes]
    bytes_in = 0
    level0_digests: list[str] = []
    verified = 0
    with client_for(scheduler) as client:
        for level in image.levels:
            shards = shard_shape(axes, level.shape, level.chunks, settings)
            root.create_array(level.path, shape=level.shape, chunks=level.chunks, shards=shards,
                              dtype=image.dtype, compressors=[codec], fill_value=0, dimension_names=axes)
            # a task writes whole shards (never two tasks in one shard), about BATCH chunks at a time
            regions = chunk_slices(level.shape, shards or level.chunks)
            per_task = max(1, BATCH // int(np.prod([s // c for s, c in zip(shards or level.chunks, level.chunks)])))
            batches = [regions[i:i + per_task] for i in range(0, len(regions), per_task)]
            futures = client.map(encode_verify, [f"{image.store}/{level.path}"] * len(batches),
                                 [f"{store}/{level.path}"] * len(batches), batches, [level.chunks] * len(batches),
                                 pure=False)
            digests = [d for _start, d in sorted(d for batch in client.gather(futures) for d in batch)]
            verified += len(digests)
            bytes_in += int(np.prod(level.shape)) * np.dtype(image.dtype).itemsize
            if level.path == "0":
                level0_digests = digests
    root.update_attributes({"ome": multiscales_attrs(image)})
    remove_unfinished_writes(store)  # left by a worker killed mid-write (its task was redone)
    bytes_out, digest = store_digest(store)
    config = codec.to_dict()
    return CompressionReport(
        image_id=image.image_id, store=store,
        codec=CodecChoice(name=config["name"], configuration=config.get("configuration", {})),
        bytes_in=bytes_in, bytes_out=bytes_out, ratio=round(bytes_in / bytes_out, 4) if bytes_out else 0.0,
        seconds=round(time.perf_counter() - started, 3), chunks_verified=verified,
        level0_sha256=hashlib.sha256("".join(level0_digests).encode()).hexdigest(), store_sha256=digest,
    )


@task(name="compress", task_run_name="compress: {image.image_id}", tags=["pixels"], cache_key_fn=compress_key,
      persist_result=True)
def compress(image: ImageRecord, work: str, settings: CompressSettings, scheduler: str) -> Traced[CompressionReport]:
    return traced("compress", compress_image, image, work, settings, scheduler, image_id=image.image_id)
