"""Fixity: is a published version still exactly what its manifest says?

``quick_problems`` lists the version once (one listing, no object read; and
each earlier version it shares objects with) and compares it with the manifest: a missing object, one of another size, or one
the manifest does not list. A rerun does this before it calls a version
unchanged. ``hash_problems`` reads the objects back and compares their sha256
too: a single flipped byte is found. Problems are reported, never repaired.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass, replace
from typing import Any, Iterable

import fsspec

from zarrchive.archive.documents import DocumentError
from zarrchive.archive.storage import BLOCK, join
from zarrchive.archive.versions import MANIFEST, SHARED, is_shared, object_path, read_manifest



@dataclass(frozen=True)
class Problem:
    """One object of a version that is not what its manifest says."""

    path: str  # relative to the version folder
    kind: str  # missing | size | sha256 | unexpected | unreadable
    detail: str

    def line(self) -> str:
        return f"{self.path}: {self.detail}"

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "kind": self.kind, "detail": self.detail}


def listing(fs: fsspec.AbstractFileSystem, vdir: str) -> dict[str, int]:
    """Every object under the version folder with its size (relative paths), from one listing."""
    fs.invalidate_cache(vdir)
    try:
        found = fs.find(vdir, detail=True)
    except FileNotFoundError:
        return {}
    base = vdir.rstrip("/") + "/"
    return {path[len(base):]: int(info.get("size") or 0) for path, info in found.items()
            if path.startswith(base) and info.get("type", "file") != "directory"}


def quick_problems(fs: fsspec.AbstractFileSystem, vdir: str, manifest: dict[str, Any]) -> list[Problem]:
    """What one listing shows: objects missing, of another size, or not listed (``manifest.json`` aside). The
    objects a version shares with an earlier one are found in that version's listing (``versions.object_path``);
    an object there that this manifest does not list belongs to the earlier version, not to this one."""
    stored = listing(fs, vdir)
    for number in sorted({int(m.group(1)) for e in manifest["files"] if (m := SHARED.match(e["path"]))}):
        earlier = listing(fs, object_path(vdir, f"../v{number}/x").rsplit("/", 1)[0])
        stored.update({f"../v{number}/{path}": size for path, size in earlier.items()})
    problems = []
    for entry in manifest["files"]:
        size = stored.get(entry["path"])
        if size is None:
            problems.append(Problem(entry["path"], "missing", "missing"))
        elif size != entry["size"]:
            problems.append(Problem(entry["path"], "size", f"{size} bytes, the manifest says {entry['size']} "
                                                          "(truncated or replaced)"))
    listed = {e["path"] for e in manifest["files"]} | {MANIFEST}
    # an object the version shares is in an earlier version's folder, beside that version's own; inside a Zarr
    # store the version shares, though, every object is read through this version too, and must be listed
    stores = {p[:p.index(".zarr/") + len(".zarr/")] for p in listed if is_shared(p) and ".zarr/" in p}
    problems += [Problem(path, "unexpected", "not listed in the manifest") for path in sorted(set(stored) - listed)
                 if not is_shared(path) or any(path.startswith(store) for store in stores)]
    return problems


def hash_problems(fs: fsspec.AbstractFileSystem, vdir: str, entries: Iterable[dict[str, Any]]) -> list[Problem]:
    """Each of ``entries`` (manifest entries) read back whole: its size and sha256 compared with the manifest."""
    problems = []
    for entry in entries:
        path = object_path(vdir, entry["path"])
        digest, size = hashlib.sha256(), 0
        try:
            with fs.open(path, "rb") as fh:
                while block := fh.read(BLOCK):
                    digest.update(block)
                    size += len(block)
        except FileNotFoundError:
            problems.append(Problem(entry["path"], "missing", "missing"))
            continue
        except OSError as exc:
            problems.append(Problem(entry["path"], "unreadable", f"cannot be read: {exc}"))
            continue
        if size != entry["size"]:
            problems.append(Problem(entry["path"], "size", f"{size} bytes, the manifest says {entry['size']}"))
        elif digest.hexdigest() != entry["sha256"]:
            problems.append(Problem(entry["path"], "sha256", f"sha256 {digest.hexdigest()}, the manifest says "
                                                            f"{entry['sha256']} (its bytes changed)"))
    return problems


# ---------------------------------------------------------------- audits of the archive

AUDIT_DIR = "_audit/fixity"


@dataclass(frozen=True)
class Audit:
    """One fixity audit: what was checked, when, and what was found."""

    started: str
    ended: str
    archive: str
    versions: list[str]  # <accession>/v<N>
    objects: int  # objects listed and compared with their manifests
    hashed: int  # objects read back and hashed (an object shared by several versions once)
    hashed_bytes: int
    sample: float
    round: int  # which share of the objects was hashed (with sample < 1: round % buckets)
    buckets: int
    problems: list[dict[str, str]]  # each with its version: {"version", "path", "kind", "detail"}

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"format_version": 1, "started": self.started, "ended": self.ended, "archive": self.archive,
                "versions": self.versions, "objects": self.objects, "hashed": self.hashed,
                "hashed_bytes": self.hashed_bytes, "sample": self.sample, "round": self.round,
                "buckets": self.buckets, "status": "ok" if self.ok else "damaged", "problems": self.problems}


def buckets_for(sample: float) -> int:
    """How many shares the objects are split into so that each audit hashes about ``sample`` of them."""
    return max(1, round(1 / sample)) if 0 < sample < 1 else 1


def in_round(path: str, round_: int, buckets: int) -> bool:
    """Whether the audit of ``round_`` hashes ``path``: a fixed share of the paths by their hash, so ``buckets``
    consecutive rounds hash every object once."""
    if buckets == 1:
        return True
    return int(hashlib.sha256(path.encode()).hexdigest()[:12], 16) % buckets == round_ % buckets


def versions_of(fs: fsspec.AbstractFileSystem, root: str, target: str | None) -> list[tuple[str, int]]:
    """The committed versions to audit: of one accession (``ZA000001``), one version (``ZA000001/v2``), or every
    accession of the archive (None)."""
    import re

    if target and "/" in target:
        accession, _, version = target.partition("/")
        return [(accession, int(version.lstrip("v")))]
    accessions = [target] if target else sorted(
        name for name in (p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
        if not name.startswith(("_", ".")) and fs.isdir(join(root, name)))
    found = []
    for accession in accessions:
        try:
            names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(join(root, accession), detail=False)]
        except FileNotFoundError:
            continue
        for name in names:
            if re.fullmatch(r"v\d+", name) and fs.isfile(join(root, accession, name, MANIFEST)):
                found.append((accession, int(name[1:])))
    return sorted(found)


def previous_rounds(fs: fsspec.AbstractFileSystem, root: str, buckets: int) -> int:
    """How many audits hashed a share of the archive with this number of shares before: the next round's number."""
    import json

    try:
        logs = fs.ls(join(root, AUDIT_DIR), detail=False)
    except FileNotFoundError:
        return 0
    count = 0
    for path in logs:
        try:
            with fs.open(path, "rb") as fh:
                count += json.load(fh).get("buckets") == buckets
        except (OSError, ValueError):
            continue
    return count


def audit(archive: str, target: str | None = None, sample: float = 1.0, round_: int | None = None) -> Audit:
    """Audit the committed versions of ``target`` (see ``versions_of``): every object listed and compared with its
    manifest, and ``sample`` of them (a rotating share; all when 1) read back and hashed."""
    import datetime as dt

    from zarrchive.archive.storage import resolve, to_url

    fs, root = resolve(archive)
    started = dt.datetime.now(dt.timezone.utc).isoformat()
    buckets = buckets_for(sample)
    round_ = previous_rounds(fs, root, buckets) if round_ is None else round_
    versions = versions_of(fs, root, target)
    problems, objects, hashed, hashed_bytes = [], 0, 0, 0
    verdicts: dict[str, Problem | None] = {}  # each object read once per audit, whichever versions list it
    for accession, number in versions:
        vdir = join(root, accession, f"v{number}")
        try:
            manifest = read_manifest(fs, join(vdir, MANIFEST))
        except FileNotFoundError:
            problems.append({"version": f"{accession}/v{number}", "path": MANIFEST, "kind": "missing",
                             "detail": "missing: the version has no manifest"})
            continue
        except DocumentError as exc:  # of a newer format, or damaged: this version cannot be checked, the rest can
            problems.append({"version": f"{accession}/v{number}", "path": MANIFEST, "kind": "unreadable",
                             "detail": exc.reason})
            continue
        entries = manifest["files"]

        def stored_as(entry: dict[str, Any]) -> str:  # (an object shared by versions is one object)
            return posixpath.normpath(f"{accession}/v{number}/{entry['path']}")

        chosen = [e for e in entries if in_round(stored_as(e), round_, buckets)]
        found = quick_problems(fs, vdir, manifest)
        skip = {p.path for p in found}
        fresh = [e for e in chosen if e["path"] not in skip and stored_as(e) not in verdicts]
        by_path = {p.path: p for p in hash_problems(fs, vdir, fresh)}
        verdicts.update({stored_as(e): by_path.get(e["path"]) for e in fresh})
        found += [replace(verdicts[stored_as(e)], path=e["path"]) for e in chosen
                  if e["path"] not in skip and verdicts[stored_as(e)] is not None]
        objects += len(entries)
        hashed += len(fresh)
        hashed_bytes += sum(e["size"] for e in fresh)
        problems += [{"version": f"{accession}/v{number}", **p.as_dict()} for p in found]
    return Audit(started=started, ended=dt.datetime.now(dt.timezone.utc).isoformat(), archive=to_url(fs, root),
                 versions=[f"{a}/v{n}" for a, n in versions], objects=objects, hashed=hashed,
                 hashed_bytes=hashed_bytes, sample=sample, round=round_, buckets=buckets, problems=problems)


def record_audit(archive: str, result: Audit) -> str:
    """Keep the audit in the archive's audit log (one document per audit, never rewritten); return its path."""
    import json
    import uuid

    from zarrchive.archive.storage import resolve, write_bytes_exclusive

    fs, root = resolve(archive)
    stamp = result.started.replace(":", "").replace("-", "").split(".")[0]
    path = join(root, AUDIT_DIR, f"{stamp}-{uuid.uuid4().hex[:8]}.json")
    write_bytes_exclusive(fs, path, (json.dumps(result.as_dict(), indent=2, sort_keys=True) + "\n").encode())
    return path
