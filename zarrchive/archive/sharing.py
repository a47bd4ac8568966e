"""What a new version shares with the public version before it: image stores and originals that did not change.

A new version of an accession stores only what changed. An image whose published tree would be exactly the
one the latest version lists (the image store's tree digest, each of its labels' and its labels group's) and
an original with the same path and sha256 are not uploaded again: the new manifest lists the earlier objects
by their paths from the new version (``../v1/images/a.ome.zarr/zarr.json``, see ``versions.object_path``). A
shared image's thumbnail is shared too. A metadata-only version therefore adds its pages, QC document, RO-Crate
and manifest, nothing more.

Sharing is decided here from manifests and one listing of the earlier version, never by reading its objects:
an object that is missing or has another size there is not shared (the new version stores its own copy), and
a flipped bit is what the fixity audit finds, for every version that lists the object. An embargoed version
shares nothing (it is stored whole in the private location until it is released).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import fsspec

from zarrchive.archive import fixity
from zarrchive.archive.storage import dumps, join, tree_digest
from zarrchive.archive.versions import logical_path, shared_path

StoreKey = tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]


def store_key(objects: list[tuple[str, str]]) -> StoreKey:
    """The identity of a published image tree from its objects (path inside the store, sha256): the image's own
    tree digest, each label's (by name), and the labels group's documents."""
    image: list[tuple[str, str]] = []
    labels: dict[str, list[tuple[str, str]]] = {}
    groups: list[tuple[str, str]] = []
    for rel, sha in objects:
        parts = rel.split("/")
        if parts[0] == "labels" and len(parts) > 2:
            labels.setdefault(parts[1], []).append(("/".join(parts[2:]), sha))
        elif parts[0] == "labels":
            groups.append((rel, sha))
        else:
            image.append((rel, sha))
    return (tree_digest(image), tuple(sorted((name, tree_digest(o)) for name, o in labels.items())),
            tuple(sorted(groups)))


def staged_key(store_sha256: str, labels: dict[str, str], group_documents: dict[str, Any]) -> StoreKey:
    """The same identity for an image about to be published: its staged store's tree digest (as compress
    verified it), its labels' (by name) and the labels group documents it would get."""
    groups = tuple(sorted((f"labels/{name}", hashlib.sha256(dumps(doc)).hexdigest())
                          for name, doc in group_documents.items()))
    return store_sha256, tuple(sorted(labels.items())), groups


PlateKey = tuple[tuple[tuple[str, StoreKey], ...], tuple[tuple[str, str], ...]]


def plate_key(fields: dict[str, StoreKey], documents: dict[str, Any]) -> PlateKey:
    """The identity of a plate's tree: each field's (by its path in the plate) and its groups' documents (by
    path, as the documents about to be written or their sha256 as published)."""
    docs = tuple(sorted((rel, doc if isinstance(doc, str) else hashlib.sha256(dumps(doc)).hexdigest())
                        for rel, doc in documents.items()))
    return tuple(sorted(fields.items())), docs


def published_plate_key(objects: list[tuple[str, str]], fields: list[str]) -> PlateKey:
    """``plate_key`` of a published plate from its objects (path inside the plate's store, sha256) and the
    paths of its fields."""
    inside: dict[str, list[tuple[str, str]]] = {f: [] for f in fields}
    documents: dict[str, str] = {}
    for rel, sha in objects:
        field = "/".join(rel.split("/")[:3])
        if field in inside and rel != field:
            inside[field].append((rel[len(field) + 1:], sha))
        else:
            documents[rel] = sha
    return plate_key({f: store_key(o) for f, o in inside.items()}, documents)


@dataclass(frozen=True)
class Shared:
    """What one earlier version offers: its image trees by image id, its originals by submitted path; every path
    as the new version refers to it."""

    version: int | None = None
    stores: dict[str, tuple[str, StoreKey, list[dict[str, Any]]]] = field(default_factory=dict)
    originals: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    thumbnails: dict[str, dict[str, Any]] = field(default_factory=dict)  # by image id: its picture's entry
    plates: dict[str, tuple[str, PlateKey, list[dict[str, Any]]]] = field(default_factory=dict)  # by name

    def plate(self, name: str, key: PlateKey) -> tuple[str, list[dict[str, Any]]] | None:
        """The earlier tree of the plate ``name`` (its path and entries) when it is exactly ``key``."""
        found = self.plates.get(name)
        return (found[0], found[2]) if found and found[1] == key else None

    def store(self, image_id: str, key: StoreKey) -> tuple[str, list[dict[str, Any]]] | None:
        """The earlier tree of ``image_id`` (its path and entries) when it is exactly ``key``."""
        found = self.stores.get(image_id)
        return (found[0], found[2]) if found and found[1] == key else None

    def original(self, path: str, sha256: str) -> tuple[str, list[dict[str, Any]]] | None:
        """The earlier copy of the submitted ``path`` (a file, or a Zarr store's objects) when its sha256 (a
        store's tree digest) is ``sha256``: its path and entries."""
        entries = self.originals.get(path)
        if not entries:
            return None
        where = entries[0]["path"][:entries[0]["path"].index("originals/")] + f"originals/{path}"
        if len(entries) == 1 and entries[0]["path"] == where:
            return (where, entries) if entries[0]["sha256"] == sha256 else None
        digest = tree_digest((e["path"][len(where) + 1:], e["sha256"]) for e in entries)
        return (where, entries) if digest == sha256 else None


def shareable(fs: fsspec.AbstractFileSystem, acc_dir: str, manifest: dict[str, Any] | None) -> Shared:
    """What the version ``manifest`` describes (under ``acc_dir``) can share with the next one: everything it
    lists that one listing finds whole (present, of its size)."""
    if not manifest:
        return Shared()
    number = manifest["version"]
    damaged = {p.path for p in fixity.quick_problems(fs, join(acc_dir, f"v{number}"), manifest)}
    entries = [{**e, "path": shared_path(e["path"], number)} for e in manifest["files"]
               if e["path"] not in damaged]
    broken = {shared_path(p, number) for p in damaged}
    by_store: dict[str, list[dict[str, Any]]] = {}  # (one pass over the entries: a study may list millions)
    originals: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        logical = logical_path(entry["path"])
        if logical.startswith(("images/", "plates/")) and ".ome.zarr/" in entry["path"]:
            by_store.setdefault(_image_store(entry["path"]), []).append(entry)
        elif logical.startswith("originals/"):
            originals.setdefault(_submitted(logical), []).append(entry)
    damaged_stores = {_image_store(p) for p in broken if ".ome.zarr/" in p}
    stores = {}
    fields: dict[str, list[str]] = {}  # plate name -> its fields' paths
    for image in manifest.get("images", []):
        if image.get("status") != "published" or image.get("label_of") or not image.get("path"):
            continue
        if image.get("well"):
            fields.setdefault(image["well"]["plate"], []).append(image["path"])
            continue
        store = shared_path(image["path"], number)
        if store in damaged_stores or not by_store.get(store):
            continue
        objects = by_store[store]
        key = store_key([(e["path"][len(store) + 1:], e["sha256"]) for e in objects])
        stores[image["image_id"]] = (store, key, objects)
    plates = {}
    for name, paths in fields.items():
        store = _image_store(shared_path(paths[0], number) + "/")
        if store in damaged_stores or not by_store.get(store):
            continue
        objects = by_store[store]
        inside = [shared_path(p, number)[len(store) + 1:] for p in paths]
        key = published_plate_key([(e["path"][len(store) + 1:], e["sha256"]) for e in objects], inside)
        plates[name] = (store, key, objects)
    thumbnails = {logical_path(e["path"])[len("thumbnails/"):-len(".png")]: e for e in entries
                  if logical_path(e["path"]).startswith("thumbnails/") and e["path"].endswith(".png")}
    return Shared(number, stores, originals, thumbnails, plates)  # (a damaged original is left out: its digest differs)


def _image_store(path: str) -> str:
    """The image store an object of a version belongs to (its labels included): ``…/images/<id>.ome.zarr``, or
    the plate's store, ``…/plates/<name>.ome.zarr``."""
    return path[:path.index(".ome.zarr/") + len(".ome.zarr")]


def _submitted(logical: str) -> str:
    """The submitted path an original object belongs to: the file itself, or the Zarr store (an ``.zarr``
    folder submitted as one entry) it is part of."""
    parts = logical.removeprefix("originals/").split("/")
    inside = next((i for i, part in enumerate(parts[:-1]) if part.endswith(".zarr")), None)
    return "/".join(parts[:inside + 1]) if inside is not None else "/".join(parts)
