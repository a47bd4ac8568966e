"""One publisher per accession: the lease in the archive store, on a folder and on a real S3 endpoint.

Runs racing for a lease (threads released at once), a killed holder's and an
expired lease taken over, a holder that ran out never committing, two
publishes of one submission at once ending in exactly one version, and two
``zarrchive ingest`` processes of one submission at once.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest
from test_publish import ACCESSION, Inputs  # noqa: F401 - the publish tests' version inputs

from zarrchive.archive import lease
from zarrchive.archive.storage import resolve, write_bytes_exclusive
from zarrchive.config import PublishSettings


@pytest.fixture(params=["folder", "s3"])
def archive(request, tmp_path) -> str:
    if request.param == "folder":
        return str(tmp_path / "archive")
    return f"s3://{request.getfixturevalue('s3_endpoint')()}/archive"


def race(n: int, work) -> list:
    """Run ``work()`` in ``n`` threads released at the same moment; their results or exceptions."""
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work()
        except Exception as exc:  # noqa: BLE001 - the test counts them
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


def test_of_runs_racing_for_a_lease_exactly_one_gets_it(archive):
    results = race(6, lambda: lease.acquire(archive, "ZA000001", seconds=60))
    held = [r for r in results if isinstance(r, lease.Lease)]
    busy = [r for r in results if isinstance(r, lease.LeaseBusy)]
    assert len(held) == 1 and len(busy) == 5, results
    assert "another run is publishing ZA000001" in str(busy[0]) and "retry later" in str(busy[0])
    held[0].release()
    lease.acquire(archive, "ZA000001", seconds=60).release()  # free again once released


def test_a_waiting_run_gets_the_lease_when_the_holder_releases_it(archive):
    first = lease.acquire(archive, "ZA000001", seconds=60)
    threading.Timer(1.5, first.release).start()
    started = time.monotonic()
    second = lease.acquire(archive, "ZA000001", seconds=60, wait_seconds=30)
    assert 1.0 < time.monotonic() - started < 20
    second.release()


def test_an_expired_lease_is_taken_over_and_its_holder_cannot_commit(archive):
    first = lease.acquire(archive, "ZA000001", seconds=5)
    first.expires = time.monotonic() - 1  # its holder stalled past the expiry...
    fs, root = resolve(archive)
    record = json.loads(fs.cat(f"{first.folder}/{first.number:012d}.json"))
    record["expires"] = "2000-01-01T00:00:00+00:00"  # ... and so did the store's record of it
    fs.rm(f"{first.folder}/{first.number:012d}.json")
    write_bytes_exclusive(fs, f"{first.folder}/{first.number:012d}.json", json.dumps(record).encode())
    second = lease.acquire(archive, "ZA000001", seconds=60)
    with pytest.raises(lease.LeaseLost):
        first.check()
    with pytest.raises(lease.LeaseLost):
        first.renew()
    second.check()
    second.release()


def test_the_lease_of_a_killed_process_of_this_host_is_taken_over_at_once(tmp_path):
    archive = str(tmp_path / "archive")
    code = ("import sys; from zarrchive.archive import lease; "
            "lease.acquire(sys.argv[1], 'ZA000001', seconds=3600); print('held', flush=True)")
    done = subprocess.run([sys.executable, "-c", code, archive], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "held"  # and the process has ended without releasing it
    taken = lease.acquire(archive, "ZA000001", seconds=60, wait_seconds=0)
    taken.release()


def test_a_renewed_lease_keeps_its_holder_and_drops_the_old_record(archive):
    held = lease.acquire(archive, "ZA000001", seconds=20)
    before = held.number
    held.renew()
    assert held.number == before + 1
    fs, _ = resolve(archive)
    assert [p.rsplit("/", 1)[-1] for p in fs.ls(held.folder)] == [f"{held.number:012d}.json"]
    with pytest.raises(lease.LeaseBusy):
        lease.acquire(archive, "ZA000001", seconds=20)
    held.release()


def test_two_publishes_of_one_submission_at_once_make_exactly_one_version(tmp_path):
    inp = Inputs(tmp_path)
    settings = PublishSettings(on_image_error="block_submission", lease_seconds=60, lease_wait_seconds=60)
    results = race(3, lambda: inp.publish(settings=settings))
    statuses = sorted(r.status for r in results)
    assert statuses == ["published", "unchanged", "unchanged"], results
    versions = sorted(p.name for p in (tmp_path / "archive" / ACCESSION).iterdir() if re.fullmatch(r"v\d+", p.name))
    assert versions == ["v1"]


def test_a_run_that_cannot_wait_reports_busy(tmp_path):
    inp = Inputs(tmp_path)
    held = lease.acquire(str(tmp_path / "archive"), ACCESSION, seconds=60)
    pub = inp.publish(settings=PublishSettings(on_image_error="block_submission", lease_wait_seconds=0))
    held.release()
    assert pub.status == "busy" and "another run is publishing" in pub.reasons[0]
    assert not (tmp_path / "archive" / ACCESSION / "v1").exists()


def test_a_committed_manifest_is_never_overwritten(tmp_path):
    fs, root = resolve(str(tmp_path))
    write_bytes_exclusive(fs, f"{root}/manifest.json", b"first")
    with pytest.raises(FileExistsError):
        write_bytes_exclusive(fs, f"{root}/manifest.json", b"second")
    assert (tmp_path / "manifest.json").read_bytes() == b"first"
    assert not [p for p in tmp_path.iterdir() if ".part-" in p.name]


def test_two_ingest_processes_of_one_submission_publish_one_version(tmp_path, config_file, prefect_server):
    from builders import ome_tiff, random_image, submission
    from prefect.settings import PREFECT_API_URL

    sub = submission(tmp_path / "sub", [{"path": "a.ome.tif"}])
    ome_tiff(sub / "a.ome.tif", random_image((1, 1, 40, 40)), "CZYX", {"x": 0.5, "y": 0.5})
    archive = tmp_path / "archive"
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    cmd = [sys.executable, "-m", "zarrchive.cli", "ingest", str(sub), "--archive", str(archive),
           "--config", config_file(), "--json"]
    runs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    results = [json.loads(out) for out, _err in outputs]
    assert sorted(r["status"] for r in results) == ["published", "unchanged"], outputs
    assert [run.returncode for run in runs] == [0, 0]
    assert sorted(p.name for p in (archive / "ZA000001").iterdir() if re.fullmatch(r"v\d+", p.name)) == ["v1"]
    assert json.loads((archive / "ZA000001" / "v1" / "manifest.json").read_text())["version"] == 1
