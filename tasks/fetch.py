"""Fetch: stream every submitted file into staging, hashing as it copies.

A file is copied to a temporary name, hashed on the way, checked against the
submitter's sha256 and only then moved into place. A Zarr store (an OME-Zarr
input) is one entry: each of its objects is copied so, and its sha256 is the
tree digest of its objects (``storage.tree_digest``). Transient I/O errors are
retried per file with backoff; a checksum mismatch is never retried.
"""

from __future__ import annotations

import time

from zarrchive import faults
from zarrchive.archive.lineage import Traced, stage_task, traced
from zarrchive.archive.storage import SMALL_COPY, copy_stream_hashing, join, resolve, tree_digest
from zarrchive.config import FetchSettings
from zarrchive.errors import ChecksumMismatch, InputError, StageTimeout, TransientError, ZarrchiveError, is_transient
from zarrchive.landingzone import SubmissionFiles
from zarrchive.records import Failure, FetchResult, FileEntry, FileRecord, Submission


def fetch_file(submission: Submission, entry: FileEntry, staging: str, settings: FetchSettings,
               files: SubmissionFiles | None = None) -> FileRecord:
    """Copy one submitted file (or Zarr store) into ``<staging>/originals/``; verify its declared sha256.

    Nothing reached through a link, nor a device, pipe or socket, is read (``UnsafeEntry``, naming it)."""
    files = files or SubmissionFiles(submission.source)
    dst_fs, dst_root = resolve(staging)
    dst = join(dst_root, "originals", entry.path)
    delays = list(settings.retry_delay_seconds) or [0.0]
    for attempt in range(settings.retries + 1):
        try:
            kind = files.kind(entry.path)
            if kind == "folder":
                raise InputError(entry.path, "a folder that is not a Zarr store: list the files in it instead")
            if kind == "store":  # every object copied and hashed; its sha256 is the tree digest
                copied = [(rel, _copy(files, f"{entry.path}/{rel}", dst_fs, join(dst, rel), settings.block_size))
                          for rel in files.store_objects(entry.path)]
                size, sha256 = sum(n for _rel, (n, _sha) in copied), tree_digest(
                    (rel, sha) for rel, (_n, sha) in copied)
            else:
                size, sha256 = _copy(files, entry.path, dst_fs, dst, settings.block_size)
            break
        except FileNotFoundError:
            raise InputError(entry.path, "listed in submission.yaml but not found") from None
        except Exception as exc:
            if not is_transient(exc) or attempt == settings.retries:
                if is_transient(exc):
                    raise TransientError(f"{entry.path}: {exc} (after {attempt + 1} attempts)") from exc
                raise
            time.sleep(delays[min(attempt, len(delays) - 1)])
    if entry.sha256 and entry.sha256 != sha256:
        dst_fs.rm(dst, recursive=kind == "store")
        raise ChecksumMismatch(entry.path, f"sha256 is {sha256}, submission.yaml says {entry.sha256}")
    return FileRecord(path=entry.path, source_uri=files.fs.unstrip_protocol(join(files.root, entry.path)),
                      staged_path=dst, size=size, sha256=sha256, kind=entry.kind)


def _copy(files: SubmissionFiles, rel: str, dst_fs, dst: str, block: int) -> tuple[int, str]:
    """Copy one regular file of the submission, hashing it; a file written to while it was copied is a
    ``TransientError`` (retried: the next attempt copies what is there then)."""
    with files.open(rel) as fin:
        faults.point("fetch.copy")
        before = files.stamp(rel, fin)
        copied = copy_stream_hashing(fin, dst_fs, dst, block)
        if files.stamp(rel, fin) != before:
            raise TransientError(f"{rel}: changed while it was being copied")
    return copied


def fetch_files(submission: Submission, staging: str, settings: FetchSettings) -> FetchResult:
    """Stage every file of the submission: the large ones, Zarr stores and any from an object store
    ``settings.threads`` at a time, the small local files one after another in this thread meanwhile
    (``storage.SMALL_COPY``). A file that fails is reported and the others go on; records and failures keep the
    order of ``submission.yaml``."""
    from concurrent.futures import ThreadPoolExecutor

    from prefect.utilities.timeout import timeout

    files = SubmissionFiles(submission.source)

    def staged(entry: FileEntry) -> FileRecord | Failure:
        try:
            try:
                with timeout(settings.timeout_seconds):
                    return fetch_file(submission, entry, staging, settings, files)
            except TimeoutError:
                raise StageTimeout(entry.path, f"copying it took longer than fetch.timeout_seconds "
                                               f"({settings.timeout_seconds:.0f} s): not archived") from None
        except ZarrchiveError as exc:
            return Failure(stage="fetch", source_path=entry.path, error=str(exc))
        except OSError as exc:  # unreadable, a folder, no permission: this file fails, the others go on
            return Failure(stage="fetch", source_path=entry.path,
                           error=f"{entry.path}: cannot be read: {type(exc).__name__}: {exc}")

    entries = submission.doc.files
    small = [files.is_small_file(e.path, SMALL_COPY) for e in entries]
    with ThreadPoolExecutor(min(settings.threads, max(len(entries), 1)), thread_name_prefix="fetch") as pool:
        large = {i: pool.submit(staged, e) for i, e in enumerate(entries) if not small[i]}
        made = {i: staged(e) for i, e in enumerate(entries) if small[i]}  # here, while the threads copy
        made.update((i, copy.result()) for i, copy in large.items())
    done = [made[i] for i in range(len(entries))]
    return FetchResult(files=[d for d in done if isinstance(d, FileRecord)],
                       failures=[d for d in done if isinstance(d, Failure)])


@stage_task(name="fetch", cache_policy="none")
def fetch(submission: Submission, staging: str, settings: FetchSettings) -> Traced[FetchResult]:
    from zarrchive import runlog
    from zarrchive.units import human_size

    result = traced("fetch", fetch_files, submission, staging, settings)
    staged = result.output
    runlog.logger().info("fetched %d file(s), %s, each hashed (sha256) as it was copied%s", len(staged.files),
                         human_size(sum(f.size for f in staged.files)),
                         "".join(f"; {f.source_path} failed: {f.error}" for f in staged.failures))
    return result
