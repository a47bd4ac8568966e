"""``zarrchive convert``: one file to OME-Zarr outside of an archive run, with the archive's own stages.

The same convert, pyramid and compress functions as an ingestion (so the result
is what the archive would publish), on a Dask cluster started for the call,
without Prefect. A file with one series becomes one image group; a file with
several becomes a bioformats2raw-layout group with one image per series
(``0``, ``1``, …). The output appears only when complete.

The source is only read, in place, and not hashed: nothing of the output
records its checksum (an archive run hashes every file when it fetches it),
so the run's private work folder names it by its path, size and modification
time, which are checked again at the end: a source that changed while it was
being converted fails the call rather than giving an output of two files.
The cluster's workers start in a thread while this process imports the
readers, so a call costs little more than its pixel work. They are threads
of this process (``cluster.processes``): no worker process imports the pixel
code again or holds its own copy of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import fsspec

from zarrchive.archive.storage import is_zarr_store
from zarrchive.config import Settings
from zarrchive.errors import InputError
from zarrchive.formats.ometiff import ome_tiff_set
from zarrchive.records import FileRecord

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
            contextlib.ExitStack() as stack, ThreadPoolExecutor(1) as pool:
        progress(f"reading {path.name}")
        from zarrchive.cluster import cluster_for_run  # distributed first, so the workers start soonest

        # no dashboard: there is no Prefect run to link it from; workers in this process's threads unless
        # cluster.processes says otherwise (this call reads the file's headers here anyway)
        starting = pool.submit(stack.enter_context, cluster_for_run(settings.cluster, dashboard=False,
                                                                    processes=False))
        import zarr  # noqa: F401  (the heavy imports, while the workers start)

        import zarrchive.tasks.compress  # noqa: F401
        import zarrchive.tasks.pyramid  # noqa: F401
        from zarrchive.tasks.convert import convert_file

        before = fingerprint(path)
        record = FileRecord(path=path.name, source_uri=str(path.resolve()), staged_path=str(path.resolve()),
                            size=before[0], sha256=before[1], kind="image")
        images = convert_file(record, None, work, settings.convert, _set_companions(path))
        staged = Path(work) / "result.ome.zarr"
        groups = _write_images(images, record, work, settings, starting.result(), staged, progress, source)
        if fingerprint(path) != before:
            raise InputError(source, "changed while it was being converted (its size or modification time): "
                                     "nothing was written; convert it again once it is complete")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staged, target)
    progress(f"wrote {target}")
    return groups


def _set_companions(path: Path) -> dict[str, str]:
    """The other members of the multi-file OME-TIFF set ``path`` belongs to, identified as convert identifies
    them (by the sha256 of each)."""
    members = [posixpath.normpath(name) for name in ome_tiff_set(str(path))] if path.is_file() else []
    return {name: fingerprint(path.parent / name)[1] for name in members
            if name != path.name and (path.parent / name).is_file()}


def _write_images(images: list[Any], record: FileRecord, work: str, settings: Settings, scheduler: str,
                  staged: Path, progress: Progress, source: str) -> list[str]:
    """Pyramid, compress and validate each image into ``staged``: the image itself when the file holds one, else
    a bioformats2raw-style collection of groups 0, 1, …; the groups written."""
    import zarr

    from zarrchive.ngff import ZARR_FORMAT, validate_image
    from zarrchive.tasks.compress import compress_image
    from zarrchive.tasks.pyramid import build_pyramid

    if len(images) > 1:
        staged.mkdir()
    groups = []
    for index, image in enumerate(images):
        image = build_pyramid(image, settings.pyramid)
        progress(f"convert, pyramid, compress and verify {image.image_id}")
        report = compress_image(image, record, work, settings.compress, scheduler,
                                lambda done, total, step=f"write {image.image_id}": progress(step, done, total),
                                level0_digest=False, picture=False)  # no QC here, no landing page
        if problems := validate_image(report.store):
            raise InputError(source, f"the output does not validate as OME-NGFF: {'; '.join(problems)}")
        group = "." if len(images) == 1 else str(index)
        shutil.move(report.store, staged if group == "." else staged / group)
        groups.append(group)
    if len(images) > 1:
        ngff = settings.compress.ngff
        zarr.open_group(str(staged), mode="a", zarr_format=ZARR_FORMAT[ngff]).update_attributes(
            {"ome": {"version": ngff, "bioformats2raw.layout": 3}} if ngff == "0.5" else {"bioformats2raw.layout": 3})
    return groups


def fingerprint(path: Path) -> tuple[int, str]:
    """Size and a stand-in for the sha256 of a file or Zarr store that is not hashed: the sha256 of its resolved
    path and of the size and modification time of every file it is made of."""
    path = path.resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    stats = [(str(p.relative_to(path)) if p != path else "", p.stat()) for p in files]
    text = "\n".join([str(path)] + [f"{rel}\0{st.st_size}\0{st.st_mtime_ns}" for rel, st in stats])
    return sum(st.st_size for _rel, st in stats), hashlib.sha256(text.encode()).hexdigest()

