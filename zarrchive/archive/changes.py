"""The changes feed: what became public in the archive, and when, for mirrors and downstream databases.

Each event (a version ``published``, ``released`` from embargo, or ``withdrawn``) is one object created
exclusively under ``_changes/`` (so writers never overwrite each other, on S3 too), holding its time, the
accession and version, the sha256 of the version's manifest and its address; ``changes.jsonl`` at the
archive root lists them all, oldest first, one JSON object per line, and is rewritten from them after each
event (again, when another writer's event appeared meanwhile). A mirror reads the feed ``--since`` the last time it looked, fetches each manifest, and verifies what it
fetched against it. Embargoed versions appear only when released.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from typing import Any

from zarrchive.archive.documents import ChangeEvent
from zarrchive.archive.storage import join, resolve, write_bytes_atomic, write_bytes_exclusive

CHANGES = "_changes"
FEED = "changes.jsonl"


def record_change(archive: str, event: str, accession: str, version: int, fs: Any, manifest_path: str,
                  url: str) -> dict[str, Any]:
    """Append an event to the feed of ``archive``; return it."""
    with fs.open(manifest_path, "rb") as fh:
        manifest_sha = hashlib.sha256(fh.read()).hexdigest()
    now = dt.datetime.now(dt.timezone.utc)
    change = ChangeEvent(format_version=ChangeEvent.FORMAT, time=now.isoformat(), event=event, accession=accession,
                         version=version, manifest_sha256=manifest_sha, url=url).as_dict()
    afs, root = resolve(archive)
    name = f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{accession}-v{version}-{event}-{uuid.uuid4().hex[:8]}.json"
    write_bytes_exclusive(afs, join(root, CHANGES, name), json.dumps(change, sort_keys=True).encode())
    write_feed(archive)
    return change


def has_event(archive: str, event: str, accession: str, version: int) -> bool:
    """Whether the feed has an ``event`` of ``accession`` ``version`` (from the event objects' names: one listing)."""
    fs, root = resolve(archive)
    fs.invalidate_cache(join(root, CHANGES))
    try:
        names = fs.ls(join(root, CHANGES), detail=False)
    except FileNotFoundError:
        return False
    mark = f"-{accession}-v{version}-{event}-"
    return any(mark in name and name.endswith(".json") for name in names)


def changes(archive: str, since: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Every event of the feed after ``since``, oldest first (read from the event objects themselves)."""
    fs, root = resolve(archive)
    fs.invalidate_cache(join(root, CHANGES))
    try:
        names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(join(root, CHANGES), detail=False))
    except FileNotFoundError:
        return []
    events = []
    for name in (n for n in names if n.endswith(".json")):  # (not another writer's unfinished .part- object)
        event = ChangeEvent.read(fs, join(root, CHANGES, name)).as_dict()
        if since is None or dt.datetime.fromisoformat(event["time"]) > since:
            events.append(event)
    return sorted(events, key=lambda e: e["time"])


def write_feed(archive: str) -> None:
    """Rewrite ``changes.jsonl`` from the event objects, until what it wrote is still every event there is: of two
    writers, the one that listed first may write last, and then finds the other's event and writes again, so the
    feed never stays without an event."""
    fs, root = resolve(archive)
    events = changes(archive)
    while True:
        lines = "".join(json.dumps(e, sort_keys=True) + "\n" for e in events)
        write_bytes_atomic(fs, join(root, FEED), lines.encode())
        now = changes(archive)
        if now == events:
            return
        events = now
