"""Release: make an embargoed version public on its release date (or earlier, when a curator asks).

Under the accession's publishing lease, every object of the private version is copied to the same path in
the public location and its sha256 compared with the manifest before anything else happens; the RO-Crate
is rewritten with the release (``datePublished`` is the day of release, and a ``release`` action says when,
by whom and why, when a curator asked); the public manifest is committed last (exclusively, as at publish);
``versions.json`` lists the version; only then is the private copy removed. A mismatch stops the release
with nothing public and the private copy kept. Releases are appended to the archive's changes feed. An embargoed
version is stored whole (it shares nothing: ``zarrchive.archive.sharing``) and released whole.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from zarrchive import faults
from zarrchive.archive import fixity, lease
from zarrchive.archive.documents import Manifest
from zarrchive.archive.lineage import stage_task
from zarrchive.archive.storage import (
    BLOCK,
    dumps,
    join,
    read_json,
    resolve,
    to_url,
    write_bytes_atomic,
    write_bytes_exclusive,
)
from zarrchive.archive.versions import (
    CRATE, MANIFEST, VERSIONS, accessions, embargo, is_shared, manifests, read_manifest,
    version_index,
)
from zarrchive.errors import VerificationError
from zarrchive.runtime import retry_transient



@dataclass(frozen=True)
class Release:
    """Why a version is released now: its date has come, or a curator asked (``by``, ``reason``)."""

    by: str | None = None
    reason: str = ""
    embargoed_until: dt.date | None = None  # the date it had before a curator brought it forward

    @property
    def early(self) -> bool:
        return self.by is not None


def due(archive: str, private: str, today: dt.date | None = None) -> list[tuple[str, int, dt.date]]:
    """The embargoed versions whose release date has come: (accession, version, release date) each."""
    today = today or dt.date.today()
    found = []
    for accession in accessions(private):
        record = embargo(private, accession)
        for manifest in manifests(private, accession):
            date = record.release_date(manifest)
            if date <= today:
                found.append((accession, manifest["version"], date))
    return found


def release_version(archive: str, private: str, accession: str, version: int, why: Release = Release(),
                    today: dt.date | None = None, lease_seconds: float = 600,
                    public_base_url: str | None = None) -> dict[str, Any]:
    """Move one embargoed version to the public location, object by object, verified; return its public manifest.
    The changes feed gives its landing page's address under ``public_base_url`` (else its location)."""
    today = today or dt.date.today()
    held = lease.acquire(archive, accession, lease_seconds, wait_seconds=60)
    try:
        return _release(archive, private, accession, version, why, today, held, public_base_url)
    finally:
        held.release()


def _release(archive: str, private: str, accession: str, version: int, why: Release, today: dt.date,
             held: lease.Lease, public_base_url: str | None) -> dict[str, Any]:
    src_fs, src_root = resolve(private)
    dst_fs, dst_root = resolve(archive)
    src = join(src_root, accession, f"v{version}")
    dst = join(dst_root, accession, f"v{version}")
    manifest = read_manifest(src_fs, join(src, MANIFEST))
    if any(is_shared(entry["path"]) for entry in manifest["files"]):  # (publish never writes one: see sharing)
        raise VerificationError(f"{accession} v{version}: an embargoed version lists objects of another version; "
                                "it is not released")
    if dst_fs.exists(join(dst, MANIFEST)):
        raise VerificationError(f"{accession} v{version} is public already: the private copy was kept for a check")
    if dst_fs.exists(dst):
        dst_fs.rm(dst, recursive=True)  # an interrupted release: never committed
    entries = []
    try:
        for entry in manifest["files"]:
            held.check()
            if entry["path"] == CRATE:
                continue
            _copy_verified(src_fs, join(src, entry["path"]), dst_fs, join(dst, entry["path"]), entry)
            entries.append(entry)
        faults.point("release.copied")
        record = embargo(private, accession)
        changed = record.history_of(version)
        until = why.embargoed_until or record.release_date(manifest)  # the curators' date for it, else its own
        crate = _released_crate(read_json(src_fs, join(src, CRATE)), accession, version, why, today, changed)
        data = dumps(crate)
        sha = write_bytes_atomic(dst_fs, join(dst, CRATE), data)
        entries.append({"path": CRATE, "size": len(data), "sha256": sha})
        public = {**manifest, "format_version": max(manifest.get("format_version", 1), 2), "embargoed": False,
                  "files": sorted(entries, key=lambda e: e["path"]),
                  "released": {"date": today.isoformat(), "by": why.by, "reason": why.reason,
                               "early": why.early or today < dt.date.fromisoformat(manifest["release_date"]),
                               "embargoed_until": until.isoformat()}}
        faults.point("release.verify")
        problems = fixity.hash_problems(dst_fs, dst, entries)  # read back from the public location itself
        if problems:
            raise VerificationError(f"{accession} v{version}: the public copy is not what the manifest says ("
                                    + "; ".join(p.line() for p in problems[:5]) + "): not released; the private "
                                    "copy is kept")
        held.check()
        write_bytes_exclusive(dst_fs, join(dst, MANIFEST), Manifest.model_validate(public).to_bytes())  # commit
    except BaseException:
        if not dst_fs.exists(join(dst, MANIFEST)):
            dst_fs.rm(dst, recursive=True)
        raise
    write_bytes_atomic(dst_fs, join(dst_root, accession, VERSIONS), version_index(archive, accession).to_bytes())
    src_fs.rm(src, recursive=True)  # only now: the public copy is whole and verified
    write_bytes_atomic(src_fs, join(src_root, accession, VERSIONS), version_index(private, accession).to_bytes())
    from zarrchive.archive.changes import record_change

    page = (f"{public_base_url.rstrip('/')}/{accession}/v{version}/index.html" if public_base_url
            else f"{to_url(dst_fs, dst)}/index.html")
    record_change(archive, "released", accession, version, dst_fs, join(dst, MANIFEST), page)
    return public


def _copy_verified(src_fs: Any, src: str, dst_fs: Any, dst: str, entry: dict[str, Any]) -> None:
    """Copy one object, hashing it; refuse it (nothing written) when it is not what the manifest says."""
    import hashlib

    from zarrchive.archive.storage import open_for_commit

    digest, size = hashlib.sha256(), 0
    with src_fs.open(src, "rb") as fin, open_for_commit(dst_fs, dst) as fout:
        while block := fin.read(BLOCK):
            digest.update(block)
            size += len(block)
            fout.write(block)
        if (size, digest.hexdigest()) != (entry["size"], entry["sha256"]):
            raise VerificationError(f"{entry['path']}: the private copy is not what its manifest says (sha256 "
                                    f"{digest.hexdigest()}, {size} bytes): not released; run zarrchive verify")


def _released_crate(crate: dict[str, Any], accession: str, version: int, why: Release, today: dt.date,
                    changed: list[dict[str, Any]]) -> dict[str, Any]:
    """The version's RO-Crate as released: ``datePublished`` today, what curators changed of its embargo
    (``changed``: extensions, earlier dates) and the release itself as actions, each curator a person."""
    graph = [dict(node) for node in crate["@graph"]]
    root = next(n for n in graph if n.get("@id") == "./")
    root["datePublished"] = today.isoformat()
    curators = {why.by} if why.early else set()
    for number, entry in enumerate(changed, 1):
        graph.append({"@id": f"#action/embargo-{number}", "@type": "UpdateAction", "name": "embargo",
                      "description": f"release date {entry['action']} to {entry['release_date']}: {entry['reason']}",
                      "object": {"@id": "./"}, "endTime": entry["at"], "agent": {"@id": f"#curator/{entry['by']}"},
                      "actionStatus": {"@id": "http://schema.org/CompletedActionStatus"}, "zarrchive:stage": "embargo"})
        root.setdefault("mentions", []).append({"@id": f"#action/embargo-{number}"})
        curators.add(entry["by"])
    action = {"@id": "#action/release", "@type": "UpdateAction", "name": "release",
              "description": (f"released early on request: {why.reason}" if why.early else
                              "released on its release date"),
              "object": {"@id": "./"}, "endTime": dt.datetime.now(dt.timezone.utc).isoformat(),
              "actionStatus": {"@id": "http://schema.org/CompletedActionStatus"}, "zarrchive:stage": "release"}
    if why.early:
        action["agent"] = {"@id": f"#curator/{why.by}"}
    graph += [{"@id": f"#curator/{name}", "@type": "Person", "name": name} for name in sorted(curators)]
    graph.append(action)
    root.setdefault("mentions", []).append({"@id": "#action/release"})
    return {**crate, "@graph": graph}


@stage_task(name="release", cache_policy="none", retries=2, retry_delay_seconds=[5, 30],
            retry_condition_fn=retry_transient, task_run_name="release: {accession} v{version}")
def release(archive: str, private: str, accession: str, version: int, lease_seconds: float = 600,
            public_base_url: str | None = None) -> dict[str, Any]:
    return release_version(archive, private, accession, version, lease_seconds=lease_seconds,
                           public_base_url=public_base_url)

