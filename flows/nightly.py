"""``nightly_import``: ingest every submission of a landing zone that became ready since the last run.

A depositor (or facility staff) marks a submission folder ready by putting an
empty ``READY`` file beside its ``submission.yaml`` once every file is in
place. Each night this flow finds those folders (``landingzone.ready_submissions``),
skips the ones already ingested at their current content (the archive keeps a
record per submission location, ``_imports/``, with a digest of what the
folder held: ``landingzone.content_key``), and ingests the others.

Each submission is ingested as a subflow (``ingest_submission``, its own run
with its own state and publication artifact, a child of this one), at most
``concurrency_limit`` at a time, all sharing one Dask cluster started once for
the night (a submission's fixed cost is then its Prefect runs, not a cluster's
start). One failing or refused submission never stops the others. The night
ends with an ``<deployment>-import-summary`` artifact (submission, accession, outcome, images,
bytes, duration, link) and a state that is Completed only when no submission
failed.

Subflows rather than ``run_deployment``: the night's submissions then share the
night's cluster and need no worker of their own; to spread one night over
several machines, give the deployment a scheduler address (``cluster.address``)
or Slurm settings, which every subflow uses.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.states import Completed, Failed, State
from zarrchive.flows.ingest import Profile, ingest_submission

from zarrchive import credentials, outcome
from zarrchive.archive.documents import DocumentError
from zarrchive.archive.storage import dumps, join, read_json, resolve, to_url, write_bytes_atomic
from zarrchive.archive.versions import MANIFEST, is_shared, read_manifest
from zarrchive.cluster import cluster_for_run, link_dashboard
from zarrchive.config import load_settings
from zarrchive.errors import FailedOutcome
from zarrchive.landingzone import content_key, ready_submissions
from zarrchive.records import Publication

IMPORTS = "_imports"


def import_record_path(archive: str, submission: str) -> tuple[Any, str]:
    fs, root = resolve(archive)
    return fs, join(root, IMPORTS, hashlib.sha256(submission.encode()).hexdigest()[:32] + ".json")


def last_import(archive: str, submission: str) -> dict[str, Any] | None:
    fs, path = import_record_path(archive, submission)
    try:
        return read_json(fs, path)
    except FileNotFoundError:
        return None


def record_import(archive: str, submission: str, key: str, pub: Publication) -> None:
    fs, path = import_record_path(archive, submission)
    write_bytes_atomic(fs, path, dumps({"submission": submission, "content_key": key, "accession": pub.accession,
                                        "version": pub.version, "outcome": outcome.kind(pub),
                                        "ok": outcome.succeeded(pub),
                                        "at": dt.datetime.now(dt.timezone.utc).isoformat()}))


@task(name="scan_landing_zone", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30])
def scan(landing_zone: str, archive: str, depth: int) -> list[dict[str, Any]]:
    """Every ready submission with what to do about it: ``ingest``, ``skip`` (ingested at this content before) or
    ``refuse`` (a link, never followed)."""
    fs, root = resolve(landing_zone)
    found = []
    for entry in ready_submissions(landing_zone, depth):
        url = to_url(fs, join(root, entry.path))
        if entry.problem:
            found.append({"submission": url, "action": "refuse", "reason": entry.problem})
            continue
        key = content_key(url)
        before = last_import(archive, url)
        if before and before.get("content_key") == key:
            reason = (f"{'ingested' if before.get('ok') else 'failed'} on {before['at'][:10]} "
                      f"({before.get('outcome')}), unchanged since")
            found.append({"submission": url, "action": "skip", "reason": reason, "key": key,
                          "accession": before.get("accession"), "version": before.get("version"),
                          "ok": bool(before.get("ok"))})
        else:
            found.append({"submission": url, "action": "ingest", "key": key})
    return found


@task(name="ingest_one", cache_policy=NO_CACHE, task_run_name="ingest_one: {submission}")
def ingest_one(submission: str, archive: str, config: str, codec_profile: str, create_archive: bool,
               approval: bool, overrides: dict[str, Any], key: str) -> dict[str, Any]:
    """One submission as a subflow; what became of it, for the summary (never raises: the others go on)."""
    started = time.monotonic()
    name = f"ingest {submission.rstrip('/').rsplit('/', 1)[-1]}"
    try:
        state = ingest_submission.with_options(flow_run_name=name)(
            submission=submission, archive=archive, config=config, codec_profile=codec_profile,
            create_archive=create_archive, approval=approval, overrides=overrides, return_state=True)
        pub = state.result(raise_on_failure=False)
        pub = pub.data if isinstance(pub, FailedOutcome) else pub
    except Exception as exc:  # the subflow crashed: reported like any failure
        pub = exc
    seconds = round(time.monotonic() - started, 1)
    if not isinstance(pub, Publication):
        return {"submission": submission, "outcome": "error", "ok": False, "accession": None, "version": None,
                "images": 0, "bytes": 0, "seconds": seconds, "link": None, "reason": f"{type(pub).__name__}: {pub}"}
    record_import(archive, submission, key, pub)
    return {"submission": submission, "outcome": outcome.kind(pub), "ok": outcome.succeeded(pub),
            "accession": pub.accession, "version": pub.version, "images": len(pub.images),
            "bytes": _version_bytes(pub) if pub.ok else 0, "seconds": seconds, "link": outcome.link(pub),
            "reason": "; ".join(pub.reasons[:3]) if not outcome.succeeded(pub) else ""}


def _version_bytes(pub: Publication) -> int:
    """Bytes of the version a publication names (0 when it names none)."""
    if not pub.version_uri:
        return 0
    fs, root = resolve(pub.version_uri)
    try:
        return sum(f["size"] for f in read_manifest(fs, join(root, MANIFEST))["files"]
                   if not is_shared(f["path"]))  # what the version stored (not what it shares with an earlier one)
    except (FileNotFoundError, KeyError, ValueError, DocumentError):
        return 0


@flow(name="nightly_import", flow_run_name="nightly import {landing_zone}", validate_parameters=True,
      persist_result=True)
def nightly_import(
    landing_zone: str,
    archive: str,
    config: str = "",
    codec_profile: Profile = "from configuration",
    concurrency_limit: int = 2,
    create_archive: bool = False,
    approval: bool = False,
    depth: int = 3,
    overrides: dict[str, Any] | None = None,
) -> State:
    """Ingest every submission of the landing zone marked READY and not yet ingested at its current content.

    Args:
        landing_zone: The folder or fsspec URL holding submission folders (each with submission.yaml and, once
            complete, an empty READY file).
        archive: The archive root, a folder or fsspec URL.
        config: A YAML file merged over configs/default.yaml (empty: the defaults).
        codec_profile: The codec profile of every submission (from configuration: the configuration's).
        concurrency_limit: How many submissions are ingested at once.
        create_archive: Start a new archive when the archive root holds none.
        approval: Pause each submission before publishing until a curator decides.
        depth: How many folders deep submissions may lie in the landing zone.
        overrides: Configuration sections merged over the configuration (a consortium deployment sets them).
    """
    log = get_run_logger()
    settings = load_settings(config or None, overrides)
    credentials.apply(settings.storage)
    found = scan(landing_zone, archive, depth)
    todo = [s for s in found if s["action"] == "ingest"]
    log.info("%d ready submission(s) in %s: %d to ingest, %d already ingested and unchanged, %d refused",
             len(found), landing_zone, len(todo), sum(s["action"] == "skip" for s in found),
             sum(s["action"] == "refuse" for s in found))
    results = [{"submission": s["submission"], "outcome": "refused" if s["action"] == "refuse" else "skipped",
                "ok": s["action"] == "skip" and s.get("ok", False), "accession": s.get("accession"),
                "version": s.get("version"), "images": 0, "bytes": 0, "seconds": 0.0, "link": None,
                "reason": s["reason"]} for s in found if s["action"] != "ingest"]
    if todo:
        with cluster_for_run(settings.cluster) as scheduler:  # one cluster for the whole night
            link_dashboard(scheduler)
            shared = _with_cluster(overrides, scheduler)
            results += _ingest_all(todo, archive, config, codec_profile, create_archive, approval, shared,
                                   max(1, concurrency_limit))
    create_table_artifact(sorted(results, key=lambda r: r["submission"]) or [{"submission": "none ready"}],
                          key=outcome.run_artifact_key("import-summary", landing_zone), description=f"Nightly import of {landing_zone}")
    failed = [r for r in results if not r["ok"] and r["outcome"] != "skipped"]
    message = (f"{len(todo)} submission(s) ingested of {len(found)} ready: "
               + ", ".join(f"{n} {k}" for k, n in _count(results).items()))
    if failed:
        message += "; not published: " + "; ".join(f"{r['submission']} ({r['outcome']}: {r['reason']})"
                                                   for r in failed[:10])
        log.warning(message)
        return Failed(message=message, data=FailedOutcome(message, results))
    log.info(message)
    return Completed(message=message, data=results)


def _ingest_all(todo: list[dict[str, Any]], archive: str, config: str, codec_profile: str, create_archive: bool,
                approval: bool, overrides: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """Each submission as a subflow, at most ``limit`` running at once."""
    waiting, running, done = list(todo), [], []
    while waiting or running:
        while waiting and len(running) < limit:
            s = waiting.pop(0)
            running.append(ingest_one.submit(s["submission"], archive, config, codec_profile, create_archive,
                                             approval, overrides, s["key"]))
        finished = next(as_completed(running))
        running.remove(finished)
        done.append(finished.result())
    return done


def _with_cluster(overrides: dict[str, Any] | None, scheduler: str) -> dict[str, Any]:
    merged = json.loads(json.dumps(overrides or {}))
    merged.setdefault("cluster", {})
    merged["cluster"] = {**merged["cluster"], "address": scheduler, "slurm": None}
    return merged


def _count(results: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in results:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    return counts
