"""The nightly import in one process, over a landing zone on S3: what it ingests, how many at once, what it
does the next night after a depositor changed a submission (the service tests run it on a real server)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import fsspec
import pytest
from builders import ome_tiff, random_image, submission

pytestmark = pytest.mark.usefixtures("prefect_server")


def upload_submission(local: Path, url: str, seed: int) -> None:
    ome_tiff(local / "a.ome.tif", random_image((1, 1, 32, 32), seed=seed), "CZYX", {"x": 0.5, "y": 0.5})
    submission(local, [{"path": "a.ome.tif"}])
    (local / "READY").touch()
    fs = fsspec.filesystem("s3")
    for path in local.iterdir():
        fs.put_file(str(path), f"{url}/{path.name}")


def ingest_runs_during(night_id, names: list[str]) -> list:
    """The ingest runs of ``names`` (their run names) that ran within the night's run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    with get_client(sync_client=True) as client:
        night = client.read_flow_run(night_id)
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(
            any_=[f"ingest {n}" for n in names])))
    return [r for r in runs if r.start_time and night.start_time <= r.start_time <= night.end_time]


def most_at_once(runs: list) -> int:
    """The largest number of ``runs`` running at one instant (from their start and end times)."""
    edges = sorted([(r.start_time, 1) for r in runs] + [(r.end_time, -1) for r in runs], key=lambda e: (e[0], e[1]))
    now = peak = 0
    for _time, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def test_a_night_over_an_s3_landing_zone_keeps_its_limit_and_the_next_ingests_only_what_changed(
        tmp_path, config_file, s3_endpoint, scheduler):
    from zarrchive.flows.nightly import nightly_import

    landing = f"s3://{s3_endpoint()}/landing"
    for seed, name in enumerate(["lab-a", "lab-b", "lab-c"], 1):
        upload_submission(tmp_path / name, f"{landing}/{name}", seed)
    archive = str(tmp_path / "archive")
    night = {"landing_zone": landing, "archive": archive, "config": config_file(), "concurrency_limit": 1,
             "create_archive": True, "return_state": True}

    first = nightly_import(**night)
    assert first.is_completed(), first.message
    rows = {Path(r["submission"]).name: r for r in first.result()}
    assert {n: r["outcome"] for n, r in rows.items()} == {"lab-a": "published", "lab-b": "published",
                                                         "lab-c": "published"}
    accessions = {n: r["accession"] for n, r in rows.items()}
    runs = ingest_runs_during(first.state_details.flow_run_id, ["lab-a", "lab-b", "lab-c"])
    assert len(runs) == 3 and most_at_once(runs) == 1  # the limit held: one submission at a time

    second = nightly_import(**night)
    assert {r["outcome"] for r in second.result()} == {"skipped"}  # nothing changed: nothing done

    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    (tmp_path / "lab-b" / "notes.txt").write_text(f"corrected on {dt.date.today()}\n")
    submission(tmp_path / "lab-b", [{"path": "a.ome.tif"}, {"path": "notes.txt", "kind": "attachment"}])
    for name in ("notes.txt", "submission.yaml"):
        fs.put_file(str(tmp_path / "lab-b" / name), f"{landing}/lab-b/{name}")
    third = nightly_import(**night)
    rows = {Path(r["submission"]).name: r for r in third.result()}
    assert {n: r["outcome"] for n, r in rows.items()} == {"lab-a": "skipped", "lab-b": "published",
                                                         "lab-c": "skipped"}
    assert rows["lab-b"]["version"] == 2 and rows["lab-b"]["accession"] == accessions["lab-b"]
