"""Fetch: stream every submitted file into staging, hashing as it copies.

A file is copied to a temporary name, hashed on the way, checked against the
submitter's sha256 and only then moved into place. A Zarr store (an OME-Zarr
input) is one entry: each of its objects is copied so, and its sha256 is the
tree digest of its objects (``storage.tree_digest``). Transient I/O errors are
retried per file with backoff; a checksum mismatch is never retried.
"""

from __future__ import annotations

import time

from prefect import task
from prefect.cache_policies import NO_CACHE

from zarrchive.config import FetchSettings
from zarrchive.errors import ChecksumMismatch, InputError, TransientError, ZarrchiveError, is_transient
from zarrchive.lineage import Traced, traced
from zarrchive.records import Failure, FetchResult, FileEntry, FileRecord, Submission
from zarrchive.storage import copy_hashing, copy_store_hashing, is_zarr_store, join, resolve


def fetch_file(submission: Submission, entry: FileEntry, staging: str, settings: FetchSettings) -> FileRecord:
    """Copy one submitted file into ``<staging>/originals/``; verify its declared sha256."""
    src_fs, src_root = resolve(submission.source)
    dst_fs, dst_root = resolve(staging)
    src = join(src_root, entry.path)
    dst = join(dst_root, "originals", entry.path)
    delays = list(settings.retry_delay_seconds) or [0.0]
    store = is_zarr_store(src_fs, src)  # a Zarr store: every object copied and hashed; its sha256 is the tree digest
    for attempt in range(settings.retries + 1):
        try:
            copy = copy_store_hashing if store else copy_hashing
            size, sha256 = copy(src_fs, src, dst_fs, dst, settings.block_size)
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
        dst_fs.rm(dst, recursive=store)
        raise ChecksumMismatch(entry.path, f"sha256 is {sha256}, submission.yaml says {entry.sha256}")
    return FileRecord(path=entry.path, source_uri=src_fs.unstrip_protocol(src), staged_path=dst, size=size,
                      sha256=sha256, kind=entry.kind)


def fetch_files(submission: Submission, staging: str, settings: FetchSettings) -> FetchResult:
    """Stage every file of the submission; a file that fails is reported and the others go on."""
    records, failures = [], []
    for entry in submission.doc.files:
        try:
            records.append(fetch_file(submission, entry, staging, settings))
        except ZarrchiveError as exc:
            failures.append(Failure(stage="fetch", source_path=entry.path, error=str(exc)))
        except OSError as exc:  # unreadable, a folder, no permission: this file fails, the others go on
            failures.append(Failure(stage="fetch", source_path=entry.path,
                                    error=f"{entry.path}: cannot be read: {type(exc).__name__}: {exc}"))
    return FetchResult(files=records, failures=failures)


@task(name="fetch", cache_policy=NO_CACHE)
def fetch(submission: Submission, staging: str, settings: FetchSettings) -> Traced[FetchResult]:
    return traced("fetch", fetch_files, submission, staging, settings)
