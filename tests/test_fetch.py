"""Fetch, without Prefect: byte-exact staging, checksum checks, retries of transient errors only."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from pathlib import Path
from typing import Any

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from zarrchive.tasks.fetch import fetch_file, fetch_files

from zarrchive.config import FetchSettings
from zarrchive.errors import ChecksumMismatch, InputError, TransientError
from zarrchive.records import FileEntry, Submission, SubmissionDoc

FAST = FetchSettings(block_size=7, retries=3, retry_delay_seconds=[0])  # tiny blocks: many read steps


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_submission(source: str, files: list[dict[str, Any]]) -> Submission:
    doc = SubmissionDoc(
        title="A test submission of microscopy images", description="Fetch tests.", license="CC-BY-4.0",
        release_date=dt.date(2026, 1, 1), authors=[{"name": "Jane Doe"}], files=files,
    )
    return Submission(source=source, doc=doc, doc_sha256="0" * 64, accession="ZA000001")


def write_files(folder: Path, contents: dict[str, bytes]) -> Path:
    for rel, data in contents.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


CONTENTS = {
    "images/a.tif": bytes(range(256)) * 40 + b"tail",
    "b.bin": b"",
    "docs/readme.txt": b"hello\nworld\n",
}


# ---------------------------------------------------------------- local copies


def test_files_are_staged_byte_for_byte(tmp_path):
    src = write_files(tmp_path / "sub", CONTENTS)
    before = snapshot(src)
    staging = tmp_path / "staging"
    sub = make_submission(str(src), [
        {"path": "images/a.tif", "sha256": sha(CONTENTS["images/a.tif"])},
        {"path": "b.bin", "kind": "attachment"},
        {"path": "docs/readme.txt", "kind": "attachment"},
    ])

    result = fetch_files(sub, str(staging), FAST)

    assert result.failures == []
    assert [r.path for r in result.files] == ["images/a.tif", "b.bin", "docs/readme.txt"]
    for rec in result.files:
        data = CONTENTS[rec.path]
        staged = staging / "originals" / rec.path
        assert rec.staged_path == str(staged)
        assert staged.read_bytes() == data
        assert rec.size == len(data) and rec.sha256 == sha(data)
        assert rec.source_uri.endswith(f"sub/{rec.path}")
    assert [r.kind for r in result.files] == ["image", "attachment", "attachment"]
    # nothing but the staged files was left behind (no temporary .part files)
    staged_files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
    assert staged_files == sorted(f"originals/{p}" for p in CONTENTS)
    assert snapshot(src) == before
    # the lineage entities are the staged copies with their checksums
    assert {(e.uri, e.sha256) for e in result.entities()} == {(r.staged_path, r.sha256) for r in result.files}


def test_fetch_file_stages_one_file(tmp_path):
    src = write_files(tmp_path / "sub", CONTENTS)
    sub = make_submission(str(src), [{"path": "images/a.tif"}])
    rec = fetch_file(sub, sub.doc.files[0], str(tmp_path / "staging"), FAST)
    assert Path(rec.staged_path).read_bytes() == CONTENTS["images/a.tif"]
    assert (rec.size, rec.sha256) == (len(CONTENTS["images/a.tif"]), sha(CONTENTS["images/a.tif"]))


def test_refetch_overwrites_a_stale_staged_copy(tmp_path):
    src = write_files(tmp_path / "sub", CONTENTS)
    staging = tmp_path / "staging"
    write_files(staging / "originals", {"docs/readme.txt": b"stale and longer than the real file" * 3})
    sub = make_submission(str(src), [{"path": "docs/readme.txt"}])
    [rec] = fetch_files(sub, str(staging), FAST).files
    assert Path(rec.staged_path).read_bytes() == CONTENTS["docs/readme.txt"]


def test_checksum_mismatch_is_a_failure_and_the_others_go_on(tmp_path):
    src = write_files(tmp_path / "sub", CONTENTS)
    before = snapshot(src)
    staging = tmp_path / "staging"
    wrong = sha(b"something else")
    sub = make_submission(str(src), [
        {"path": "b.bin"},
        {"path": "images/a.tif", "sha256": wrong},
        {"path": "docs/readme.txt", "sha256": sha(CONTENTS["docs/readme.txt"])},
    ])

    result = fetch_files(sub, str(staging), FAST)

    [failure] = result.failures
    assert failure.stage == "fetch" and failure.source_path == "images/a.tif"
    assert "images/a.tif" in failure.error and wrong in failure.error
    assert sha(CONTENTS["images/a.tif"]) in failure.error
    assert [r.path for r in result.files] == ["b.bin", "docs/readme.txt"]
    assert not (staging / "originals" / "images" / "a.tif").exists()
    assert not [p for p in staging.rglob("*a.tif*")]  # no staged copy, no temporary file
    assert (staging / "originals" / "docs" / "readme.txt").read_bytes() == CONTENTS["docs/readme.txt"]
    assert snapshot(src) == before


def test_checksum_mismatch_raises_from_fetch_file(tmp_path):
    src = write_files(tmp_path / "sub", CONTENTS)
    sub = make_submission(str(src), [{"path": "b.bin", "sha256": sha(b"x")}])
    with pytest.raises(ChecksumMismatch) as info:
        fetch_file(sub, sub.doc.files[0], str(tmp_path / "staging"), FAST)
    assert info.value.file == "b.bin"


def test_a_zarr_store_is_staged_whole_and_checked_by_its_tree_digest(tmp_path):
    from zarrchive.archive.storage import tree_digest

    store = {"cells.ome.zarr/zarr.json": b'{"zarr_format": 3, "node_type": "group"}',
             "cells.ome.zarr/0/zarr.json": b"{}", "cells.ome.zarr/0/c/0/0": bytes(range(200))}
    src = write_files(tmp_path / "sub", store)
    digest = tree_digest((rel.removeprefix("cells.ome.zarr/"), sha(data)) for rel, data in store.items())
    staging = tmp_path / "staging"
    record = fetch_file(make_submission(str(src), [{"path": "cells.ome.zarr", "sha256": digest}]),
                        FileEntry(path="cells.ome.zarr", sha256=digest), str(staging), FAST)
    assert (record.sha256, record.size) == (digest, sum(len(d) for d in store.values()))
    for rel, data in store.items():
        assert (staging / "originals" / rel).read_bytes() == data
    wrong = make_submission(str(src), [{"path": "cells.ome.zarr", "sha256": "0" * 64}])
    with pytest.raises(ChecksumMismatch, match="cells.ome.zarr"):
        fetch_file(wrong, wrong.doc.files[0], str(tmp_path / "other"), FAST)
    assert not (tmp_path / "other" / "originals" / "cells.ome.zarr").exists()  # nothing half-staged stays


def test_file_gone_since_intake_is_a_failure(tmp_path):
    src = write_files(tmp_path / "sub", CONTENTS)
    sub = make_submission(str(src), [{"path": "gone.tif"}, {"path": "b.bin"}])
    result = fetch_files(sub, str(tmp_path / "staging"), FAST)
    [failure] = result.failures
    assert failure.source_path == "gone.tif" and "gone.tif" in failure.error and "not found" in failure.error
    assert [r.path for r in result.files] == ["b.bin"]


# ---------------------------------------------------------------- retries, through a flaky filesystem


class FlakyFileSystem(MemoryFileSystem):
    """An in-memory filesystem whose reads fail on purpose.

    ``FlakyFileSystem.faults[path]`` is a list of exceptions raised by the next
    opens of ``path`` for reading, one per open; ``opens[path]`` counts them.
    """

    protocol = ("flaky",)
    store: dict[str, Any] = {}
    pseudo_dirs = [""]
    faults: dict[str, list[BaseException]] = {}
    opens: dict[str, int] = {}

    @classmethod
    def _strip_protocol(cls, path):
        if isinstance(path, str) and path.startswith("flaky://"):
            path = path[len("flaky://"):]
        return super()._strip_protocol(path)

    def open(self, path, mode="rb", *args, **kwargs):
        if "r" in mode:
            key = self._strip_protocol(path)
            self.opens[key] = self.opens.get(key, 0) + 1
            pending = self.faults.get(key)
            if pending:
                raise pending.pop(0)
        return super().open(path, mode, *args, **kwargs)


fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)


@pytest.fixture()
def flaky(tmp_path):
    """A flaky:// submission folder holding CONTENTS; yields (submission source, fs)."""
    fs = fsspec.filesystem("flaky")
    assert isinstance(fs, FlakyFileSystem)
    root = f"/{tmp_path.name}/sub"  # unique per test
    for rel, data in CONTENTS.items():
        fs.pipe_file(f"{root}/{rel}", data)
    FlakyFileSystem.faults.clear()
    FlakyFileSystem.opens.clear()
    yield f"flaky://{root}", fs, root
    fs.rm(f"/{tmp_path.name}", recursive=True)
    FlakyFileSystem.faults.clear()
    FlakyFileSystem.opens.clear()


def test_flaky_filesystem_without_faults_fetches(tmp_path, flaky):
    source, _fs, root = flaky
    sub = make_submission(source, [{"path": p} for p in CONTENTS])
    result = fetch_files(sub, str(tmp_path / "staging"), FAST)
    assert result.failures == []
    for rec in result.files:
        assert Path(rec.staged_path).read_bytes() == CONTENTS[rec.path]
        assert rec.source_uri.startswith("flaky://") and rec.source_uri.endswith(f"{root}/{rec.path}")
    assert FlakyFileSystem.opens == {f"{root}/{p}": 1 for p in CONTENTS}


@pytest.mark.parametrize("errors", [
    [OSError("connection reset")],
    [ConnectionError("peer went away"), TimeoutError("slow"), OSError("EIO")],  # 3 failures, 3 retries
    [TransientError("storage hiccup")],
])
def test_transient_errors_are_retried(tmp_path, flaky, errors):
    source, _fs, root = flaky
    path = f"{root}/images/a.tif"
    FlakyFileSystem.faults[path] = list(errors)
    sub = make_submission(source, [{"path": "images/a.tif", "sha256": sha(CONTENTS["images/a.tif"])},
                                   {"path": "b.bin"}])

    result = fetch_files(sub, str(tmp_path / "staging"), FAST)

    assert result.failures == []
    rec = result.files[0]
    assert Path(rec.staged_path).read_bytes() == CONTENTS["images/a.tif"]
    assert rec.sha256 == sha(CONTENTS["images/a.tif"]) and rec.size == len(CONTENTS["images/a.tif"])
    assert FlakyFileSystem.opens[path] == len(errors) + 1
    assert FlakyFileSystem.opens[f"{root}/b.bin"] == 1


def test_retry_waits_for_the_configured_delays(tmp_path, flaky, monkeypatch):
    source, _fs, root = flaky
    FlakyFileSystem.faults[f"{root}/b.bin"] = [OSError("1"), OSError("2"), OSError("3")]
    slept: list[float] = []
    monkeypatch.setattr("zarrchive.tasks.fetch.time.sleep", slept.append)
    settings = FetchSettings(block_size=1024, retries=3, retry_delay_seconds=[0.5, 2])
    sub = make_submission(source, [{"path": "b.bin"}])
    result = fetch_files(sub, str(tmp_path / "staging"), settings)
    assert result.failures == [] and len(result.files) == 1
    assert slept == [0.5, 2, 2]  # the last delay repeats


@pytest.mark.parametrize("error", [FileNotFoundError("gone"), PermissionError("denied") , IsADirectoryError("dir")])
def test_non_transient_errors_are_not_retried(tmp_path, flaky, error):
    source, _fs, root = flaky
    path = f"{root}/images/a.tif"
    FlakyFileSystem.faults[path] = [error]  # a single fault: one retry would succeed
    sub = make_submission(source, [{"path": "images/a.tif"}])

    with pytest.raises((InputError, type(error))):
        fetch_file(sub, sub.doc.files[0], str(tmp_path / "staging"), FAST)

    assert FlakyFileSystem.opens[path] == 1
    assert not (tmp_path / "staging" / "originals" / "images" / "a.tif").exists()


def test_file_not_found_is_a_failure_without_retry(tmp_path, flaky):
    source, _fs, root = flaky
    path = f"{root}/images/a.tif"
    FlakyFileSystem.faults[path] = [FileNotFoundError("gone")]
    sub = make_submission(source, [{"path": "images/a.tif"}, {"path": "b.bin"}])

    result = fetch_files(sub, str(tmp_path / "staging"), FAST)

    [failure] = result.failures
    assert failure.source_path == "images/a.tif" and "not found" in failure.error
    assert FlakyFileSystem.opens[path] == 1
    assert [r.path for r in result.files] == ["b.bin"]


def test_exhausted_retries_are_a_failure(tmp_path, flaky):
    source, _fs, root = flaky
    path = f"{root}/images/a.tif"
    settings = FetchSettings(block_size=1024, retries=2, retry_delay_seconds=[0])
    FlakyFileSystem.faults[path] = [ConnectionError(f"reset {i}") for i in range(5)]
    sub = make_submission(source, [{"path": "images/a.tif"}, {"path": "docs/readme.txt"}])

    result = fetch_files(sub, str(tmp_path / "staging"), settings)

    [failure] = result.failures
    assert failure.stage == "fetch" and failure.source_path == "images/a.tif"
    assert "images/a.tif" in failure.error and "reset 2" in failure.error and "3 attempts" in failure.error
    assert FlakyFileSystem.opens[path] == 3  # 1 try + 2 retries
    assert len(FlakyFileSystem.faults[path]) == 2  # the rest were never reached
    assert [r.path for r in result.files] == ["docs/readme.txt"]
    assert not (tmp_path / "staging" / "originals" / "images" / "a.tif").exists()
    assert not [p for p in (tmp_path / "staging").rglob("*.part-*")]


def test_zero_retries_means_one_attempt(tmp_path, flaky):
    source, _fs, root = flaky
    path = f"{root}/b.bin"
    FlakyFileSystem.faults[path] = [OSError("once")]
    sub = make_submission(source, [{"path": "b.bin"}])
    result = fetch_files(sub, str(tmp_path / "staging"), FetchSettings(block_size=8, retries=0,
                                                                       retry_delay_seconds=[]))
    assert len(result.failures) == 1 and result.files == []
    assert FlakyFileSystem.opens[path] == 1


def test_originals_are_never_modified(tmp_path, flaky):
    """Neither a successful fetch, a mismatch nor a retried read touches the submitted files."""
    src = write_files(tmp_path / "sub", CONTENTS)
    os.utime(src / "b.bin", ns=(1_000_000_000, 1_000_000_000))
    before = snapshot(src)
    sub = make_submission(str(src), [{"path": "images/a.tif", "sha256": sha(b"nope")},
                                     {"path": "b.bin"}, {"path": "docs/readme.txt"}])
    fetch_files(sub, str(tmp_path / "staging"), FAST)
    fetch_files(sub, str(tmp_path / "staging"), FAST)  # and again over existing staged copies
    assert snapshot(src) == before

    source, fs, root = flaky
    mem_before = {p: fs.cat_file(f"{root}/{p}") for p in CONTENTS}
    FlakyFileSystem.faults[f"{root}/docs/readme.txt"] = [OSError("blip")]
    fetch_files(make_submission(source, [{"path": p} for p in CONTENTS]), str(tmp_path / "staging2"), FAST)
    assert {p: fs.cat_file(f"{root}/{p}") for p in CONTENTS} == mem_before


@pytest.mark.parametrize("where", ["in the calling thread", "in a thread"])
def test_a_file_whose_copy_outlasts_its_time_fails_alone_and_leaves_nothing_staged(tmp_path, monkeypatch, where):
    """A copy that never ends (the source keeps it busy): that file fails, named, after fetch.timeout_seconds;
    nothing of it is staged; the next file is fetched. A small file is copied in the calling thread, a large one
    in one of fetch's threads. (A read blocked in the kernel is not interrupted: README, Reliability, known
    limits.)"""
    import time

    from zarrchive import landingzone
    from zarrchive.archive.storage import SMALL_COPY

    src = tmp_path / "src"
    src.mkdir()
    (src / "stalled.bin").write_bytes(b"s" * (4096 if where == "in the calling thread" else SMALL_COPY + 4096))
    (src / "fine.bin").write_bytes(b"f" * 4096)
    sub = make_submission(str(src), [{"path": "stalled.bin"}, {"path": "fine.bin"}])
    opened = landingzone.SubmissionFiles.open

    class Stalling:
        def __init__(self, handle):
            self.handle = handle

        def read(self, size=-1):
            self.handle.read(size)
            while True:  # the share stopped answering after the first block
                time.sleep(0.05)

        def __getattr__(self, name):
            return getattr(self.handle, name)

    def opening(self, rel):
        handle = opened(self, rel)
        if rel != "stalled.bin":
            return handle

        class Wrapped:
            def __enter__(self):
                return Stalling(handle.__enter__())

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

        return Wrapped()

    monkeypatch.setattr(landingzone.SubmissionFiles, "open", opening)
    started = time.monotonic()
    result = fetch_files(sub, str(tmp_path / "staging"), FetchSettings(block_size=1024, retries=0,
                                                                       retry_delay_seconds=[0], timeout_seconds=1))
    assert time.monotonic() - started < 20
    [failure] = result.failures
    assert failure.source_path == "stalled.bin" and "fetch.timeout_seconds" in failure.error
    assert [r.path for r in result.files] == ["fine.bin"]
    assert not list((tmp_path / "staging").rglob("stalled.bin*"))


@pytest.mark.parametrize("threads", [1, 3, 8])
def test_files_are_copied_at_once_and_reported_in_the_order_submitted(tmp_path, monkeypatch, threads):
    """fetch.threads large files at a time, the small ones one after another in the calling thread meanwhile: every
    file staged whole, records and failures in submission.yaml's order, a failing file (a wrong sha256, a missing
    file, a link) fails alone."""
    import threading

    from zarrchive.archive.storage import SMALL_COPY
    from zarrchive.tasks import fetch as fetch_mod

    contents = {f"f{i:02d}.bin": bytes([i]) * ((SMALL_COPY + 1000 * i) if i % 2 else (1000 * i + 1))
                for i in range(12)}
    src = write_files(tmp_path / "sub", contents)
    (src / "link.bin").symlink_to(src / "f01.bin")
    before = snapshot(src)
    entries = [{"path": p, "sha256": sha(b"not it") if p == "f05.bin" else sha(d)} for p, d in contents.items()]
    entries[7:7] = [{"path": "gone.bin"}, {"path": "link.bin"}]
    made, copy = {}, fetch_mod.fetch_file

    def recorded(submission, entry, *args, **kwargs):
        made[entry.path] = threading.current_thread().name
        return copy(submission, entry, *args, **kwargs)

    monkeypatch.setattr(fetch_mod, "fetch_file", recorded)
    result = fetch_files(make_submission(str(src), entries), str(tmp_path / "staging"),
                         FetchSettings(block_size=1 << 16, retries=0, retry_delay_seconds=[0], threads=threads))
    assert [f.source_path for f in result.failures] == ["f05.bin", "gone.bin", "link.bin"]
    assert "link" in result.failures[2].error and "not found" in result.failures[1].error
    assert [r.path for r in result.files] == [p for p in contents if p != "f05.bin"]
    for record in result.files:
        assert Path(record.staged_path).read_bytes() == contents[record.path]
        assert record.sha256 == sha(contents[record.path]) and record.size == len(contents[record.path])
    small = {p for p, d in contents.items() if len(d) < SMALL_COPY}
    assert {made[p] for p in small} == {threading.current_thread().name}
    in_threads = {made[p] for p in made if p not in small}
    assert all(name.startswith("fetch") for name in in_threads)
    assert (len(in_threads) == 1) == (threads == 1)
    assert snapshot(src) == before
