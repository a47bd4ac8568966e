"""The archive's versions: where they are, which are public, and the records that say so.

An archive has a public location (its root: what visitors read) and a private one for embargoed versions
(``archive.private``; for a folder archive by default the folder beside it, ``<root>-private``; an object
store archive must name one). A version whose release date is still to come is written to the private
location, in the same layout (``<accession>/v<N>/…``), and is released to the public one on its date
(``release``). Version numbers count both: an accession's versions are numbered once, wherever they are.

Every reader of published versions goes through here (publish, the command line, provenance, fixity,
release), so the layout and the public/private split live in one place.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fsspec.implementations.local import LocalFileSystem

from zarrchive.archive.storage import join, read_json, resolve, to_url
from zarrchive.errors import ConfigError

if TYPE_CHECKING:
    from zarrchive.archive.documents import VersionIndex

VERSION_RE = re.compile(r"^v(\d+)$")
MANIFEST = "manifest.json"
VERSIONS = "versions.json"
EMBARGO = "embargo.json"
ARCHIVE_MARKER = "zarrchive-archive.json"  # at the root: marks the location as an archive, with its id
MANIFEST_FORMAT = 5  # 1: before format_version was written; 2: with embargo and release fields; 3: the study's
#                      metadata (study) and each image's codec and stored bytes; 4: objects shared with an earlier
#                      version (paths ``../v<K>/…``); 5: plates (``plates/…`` paths, each field's ``well``)
SHARED = re.compile(r"^\.\./v(\d+)/(.+)$")
CRATE = "ro-crate-metadata.json"  # a version's lineage (RO-Crate)
LANDING = "index.html"  # a version's landing page
QC_REPORT, QC_PAGE = "qc/report.json", "qc/index.html"


# ---------------------------------------------------------------- paths inside a version
#
# A manifest lists each object of its version by its path relative to the version folder. An object a version
# shares with an earlier version of the same accession (an image store or original that did not change) is not
# stored again: its path is the earlier version's, ``../v<K>/images/<id>.ome.zarr/zarr.json``, which is also
# the relative link a landing page uses, so every version opens at stable paths with any Zarr reader and is
# verified against its own manifest.


def image_store(image_id: str) -> str:
    """Where an image's store is in its version (a plate's field is in its plate: ``plates.plate_path``)."""
    return f"images/{image_id}.ome.zarr"


def original_path(submitted: str) -> str:
    """Where a submitted file (or Zarr store) is kept in its version, as it was submitted."""
    return f"originals/{submitted}"


def shared_path(path: str, version: int) -> str:
    """``path`` (relative to version ``version``) as a later version of the accession refers to it."""
    return path if SHARED.match(path) else f"../v{version}/{path}"


def is_shared(path: str) -> bool:
    return SHARED.match(path) is not None


def shared_from(path: str) -> int | None:
    """The version a manifest path shares its object from (``../v1/…`` -> 1), None for the version's own."""
    found = SHARED.match(path)
    return int(found.group(1)) if found else None


def logical_path(path: str) -> str:
    """What an object is within its version, wherever it is stored: ``../v1/originals/a.tif`` -> ``originals/a.tif``."""
    found = SHARED.match(path)
    return found.group(2) if found else path


def object_path(vdir: str, path: str) -> str:
    """Where an object a manifest lists (``path``, relative to the version folder ``vdir``) is stored."""
    found = SHARED.match(path)
    if not found:
        return join(vdir, path)
    return join(vdir.rstrip("/").rsplit("/", 1)[0], f"v{found.group(1)}", found.group(2))


def version_dir(root: str, accession: str, number: int) -> str:
    return join(root, accession, f"v{number}")


def private_location(archive: str, configured: str | None) -> str | None:
    """Where embargoed versions of ``archive`` are kept: the configured location, or beside a folder archive
    (``<root>-private``); None for an object-store archive without one (embargoed versions are then refused)."""
    if configured:
        return configured
    fs, root = resolve(archive)
    return f"{root.rstrip('/')}-private" if isinstance(fs, LocalFileSystem) else None


def require_private(archive: str, configured: str | None) -> str:
    location = private_location(archive, configured)
    if location is None:
        raise ConfigError("archive.private", [f"{archive} is an object store: an embargoed version needs a private "
                                              "location of its own (archive.private: another bucket or prefix that "
                                              "is not served publicly)"])
    return location


def manifests(location: str | None, accession: str) -> list[dict[str, Any]]:
    """The manifests of every committed version of ``accession`` at ``location``, oldest first."""
    if not location:
        return []
    fs, root = resolve(location)
    acc = join(root, accession)
    fs.invalidate_cache(acc)
    try:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(acc, detail=False)]
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if VERSION_RE.match(name) and fs.isfile(join(acc, name, MANIFEST)):
            found.append(read_manifest(fs, join(acc, name, MANIFEST)))
    return sorted(found, key=lambda m: m["version"])


def read_manifest(fs: Any, path: str) -> dict[str, Any]:
    """A committed manifest, validated (``documents.Manifest``; a newer format than this code is refused)."""
    from zarrchive.archive.documents import Manifest

    return Manifest.read(fs, path).as_dict()


def published_versions(archive: str, accession: str, private: str | None = None) -> list[dict[str, Any]]:
    """Every committed version of ``accession``, public ones and (with ``private``) embargoed ones, oldest first;
    an embargoed one has ``"embargoed": true``."""
    found = manifests(archive, accession) + manifests(private, accession)
    return sorted(found, key=lambda m: m["version"])


def version_index(location: str, accession: str) -> "VersionIndex":
    """``versions.json`` of one location: its committed versions, oldest first, rebuilt from their manifests, each
    withdrawn one with its withdrawal."""
    from zarrchive.archive.documents import VersionIndex

    withdrawn = withdrawals(location, accession)
    return VersionIndex(format_version=VersionIndex.FORMAT, accession=accession, versions=[
        {"version": m["version"], "created": m["created"], "fingerprint": m["fingerprint"],
         "release_date": m.get("release_date"), "files": len(m["files"]),
         "bytes": sum(f["size"] for f in m["files"]),
         "stored_bytes": sum(f["size"] for f in m["files"] if not is_shared(f["path"])),
         "withdrawn": withdrawn.get(m["version"])}
        for m in manifests(location, accession)])


# ---------------------------------------------------------------- withdrawals

WITHDRAWN = "_withdrawn"  # <accession>/_withdrawn/v<N>.json: one record per withdrawn version, created once


def withdrawals(location: str, accession: str) -> dict[int, dict[str, Any]]:
    """The withdrawn versions of ``accession`` at ``location``: version -> {by, reason, at}."""
    fs, root = resolve(location)
    folder = join(root, accession, WITHDRAWN)
    fs.invalidate_cache(folder)
    try:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)]
    except FileNotFoundError:
        return {}
    found = {}
    for name in names:
        if (match := re.fullmatch(r"v(\d+)\.json", name)) is not None:
            record = read_json(fs, join(folder, name))
            found[int(match.group(1))] = {k: record[k] for k in ("by", "reason", "at")}
    return found


def public_versions(archive: str, accession: str) -> list[dict[str, Any]]:
    """The manifests of ``accession``'s public versions that are not withdrawn, oldest first."""
    withdrawn = withdrawals(archive, accession)
    return [m for m in manifests(archive, accession) if m["version"] not in withdrawn]


def withdraw(archive: str, accession: str, version: int, by: str, reason: str) -> tuple[dict[str, Any], bool]:
    """Record that a public version is withdrawn, once; return the record, and whether this call made it (False:
    it was withdrawn already, and that record holds). Its objects stay (the record of what was published stays
    verifiable); ``versions.json``, the catalog, the front page and the changes feed follow it."""
    from zarrchive.archive.storage import dumps, write_bytes_exclusive
    from zarrchive.errors import NotFound

    fs, root = resolve(archive)
    if not fs.isfile(join(root, accession, f"v{version}", MANIFEST)):
        raise NotFound(f"{accession} v{version} is not a public version of {to_url(fs, root)}")
    record = {"format_version": 1, "accession": accession, "version": version, "by": by, "reason": reason,
              "at": dt.datetime.now(dt.timezone.utc).isoformat()}
    try:
        write_bytes_exclusive(fs, join(root, accession, WITHDRAWN, f"v{version}.json"), dumps(record))
    except FileExistsError:
        return {"accession": accession, "version": version, **withdrawals(archive, accession)[version]}, False
    return record, True


def accessions(location: str) -> list[str]:
    """The accessions with a folder at ``location``."""
    fs, root = resolve(location)
    try:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    except FileNotFoundError:
        return []
    return sorted(n for n in names if not n.startswith(("_", ".")) and fs.isdir(join(root, n)))


# ---------------------------------------------------------------- embargo records


@dataclass(frozen=True)
class Embargo:
    """What curators changed of an accession's embargo: a release date per private version (an extension, or an
    earlier date on request), and the history of who changed what, when and why. A version keeps its own date
    unless a curator changed it: a record never reaches a version published after it."""

    dates: dict[int, dt.date]
    history: list[dict[str, Any]]

    def release_date(self, manifest: dict[str, Any]) -> dt.date:
        """The day ``manifest``'s version is released: the date a curator set for it, else its own."""
        return self.dates.get(manifest["version"]) or dt.date.fromisoformat(manifest["release_date"])

    def history_of(self, version: int) -> list[dict[str, Any]]:
        return [entry for entry in self.history if version in entry.get("versions", [])]


EMBARGO_FORMAT = 2


def embargo(private: str, accession: str) -> Embargo:
    from zarrchive.archive.documents import DocumentError

    fs, root = resolve(private)
    path = join(root, accession, EMBARGO)
    try:
        record = read_json(fs, path)
    except FileNotFoundError:
        return Embargo({}, [])
    if record.get("format_version", 1) > EMBARGO_FORMAT:
        raise DocumentError(f"{path}: embargo record format {record['format_version']} is newer than this "
                            f"zarrchive reads ({EMBARGO_FORMAT}); upgrade zarrchive")
    history = record.get("history", [])
    if record.get("format_version", 1) == 1:  # one date for the accession: it held for the versions private then
        at = history[-1]["at"] if history else ""
        versions = [m["version"] for m in manifests(private, accession) if m["created"] <= at]
        return Embargo({v: dt.date.fromisoformat(record["release_date"]) for v in versions}, history)
    return Embargo({int(v): dt.date.fromisoformat(d) for v, d in record["dates"].items()}, history)


def set_embargo(private: str, accession: str, versions: list[int], release_date: dt.date, by: str, reason: str,
                action: str) -> Embargo:
    """Record a new release date for ``versions`` of the accession's private versions (an extension, or an
    earlier date on request), with who asked and why; the history is kept."""
    from zarrchive.archive.storage import dumps, write_bytes_atomic

    current = embargo(private, accession)
    entry = {"action": action, "versions": sorted(versions), "release_date": release_date.isoformat(), "by": by,
             "reason": reason, "at": dt.datetime.now(dt.timezone.utc).isoformat()}
    dates = {**current.dates, **{v: release_date for v in versions}}
    history = current.history + [entry]
    fs, root = resolve(private)
    write_bytes_atomic(fs, join(root, accession, EMBARGO), dumps({
        "format_version": EMBARGO_FORMAT, "dates": {str(v): d.isoformat() for v, d in sorted(dates.items())},
        "history": history}))
    return Embargo(dates, history)
