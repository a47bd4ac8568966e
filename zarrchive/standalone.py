"""``zarrchive convert``: one file to OME-Zarr outside of an archive run, with the archive's own stages.

The same convert, pyramid and compress functions as an ingestion (so the result
is what the archive would publish), on a Dask cluster started for the call,
without Prefect. A file with one series becomes one image group; a file with
several becomes a bioformats2raw-layout group with one image per series
(``0``, ``1``, …). The output appears only when complete.

Start-up is overlapped: the source is hashed and the cluster's workers start
in threads while this process imports the readers, so a call costs little
more than its pixel work.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import fsspec

from zarrchive.config import ClusterSettings, Settings
from zarrchive.errors import InputError
from zarrchive.records import FileRecord
from zarrchive.storage import is_zarr_store, resolve, sha256_stream, store_tree_digest

Progress = Callable[..., None]  # progress(message) at each step; progress(message, done, total) in bytes


def convert_to_ome_zarr(source: str, output: str, settings: Settings, progress: Progress = lambda *_: None,
                        overwrite: bool = False) -> list[str]:
    """Convert ``source`` into ``output`` (a local ``.ome.zarr`` folder); return the image groups written."""
    target = Path(output)
    if target.exists() and not overwrite:
        raise InputError(output, "exists already (use --overwrite to replace it)")
    path = Path(source)
    if not path.is_file() and not is_zarr_store(fsspec.filesystem("file"), str(path)):
        raise InputError(source, "not found, or neither a file nor a Zarr store")
    target.resolve().parent.mkdir(parents=True, exist_ok=True)  # the work folder sits beside the output
    with tempfile.TemporaryDirectory(prefix="zarrchive-convert-", dir=target.resolve().parent) as work, \
            contextlib.ExitStack() as stack, ThreadPoolExecutor(2) as pool:
        progress(f"reading {path.name}")
        fs, local = resolve(str(path))
        hashing = pool.submit(sha256_stream if path.is_file() else store_tree_digest, fs, local)
        starting = pool.submit(_start_cluster, stack, settings.cluster)
        import zarr  # the heavy imports, while the source is hashed and the workers start

        from zarrchive.ngff import ZARR_FORMAT, validate_image
        from zarrchive.tasks.compress import compress_image
        from zarrchive.tasks.convert import convert_file
        from zarrchive.tasks.pyramid import build_pyramid

        size, sha256 = hashing.result()
        record = FileRecord(path=path.name, source_uri=str(path.resolve()), staged_path=str(path.resolve()),
                            size=size, sha256=sha256, kind="image")  # read in place: the source is only ever read
        images = convert_file(record, None, work, settings.convert)
        scheduler = starting.result()
        staged = Path(work) / "result.ome.zarr"
        if len(images) > 1:
            staged.mkdir()
        groups = []
        for index, image in enumerate(images):
            image = build_pyramid(image, settings.pyramid)
            progress(f"convert, pyramid, compress and verify {image.image_id}")
            report = compress_image(image, record, work, settings.compress, scheduler,
                                    lambda done, total, step=f"write {image.image_id}": progress(step, done, total))
            if problems := validate_image(report.store):
                raise InputError(source, f"the output does not validate as OME-NGFF: {'; '.join(problems)}")
            if len(images) == 1:
                shutil.move(report.store, staged)
                groups.append(".")
            else:
                shutil.move(report.store, staged / str(index))
                groups.append(str(index))
        if len(images) > 1:
            ngff = settings.compress.ngff
            zarr.open_group(str(staged), mode="a", zarr_format=ZARR_FORMAT[ngff]).update_attributes(
                {"ome": {"version": ngff, "bioformats2raw.layout": 3}} if ngff == "0.5"
                else {"bioformats2raw.layout": 3})
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    progress(f"wrote {target}")
    return groups


def _start_cluster(stack: contextlib.ExitStack, settings: ClusterSettings) -> str:
    from zarrchive.cluster import cluster_for_run  # distributed: imported in this thread, beside the readers

    return stack.enter_context(cluster_for_run(settings))
