"""Answering lineage questions from what is stored with the data (manifest and RO-Crate), not from Prefect.

Where did a published object come from (source file and checksum, submission),
which run and software made it, and what changed between versions.
"""

from __future__ import annotations

from typing import Any

from zarrchive.archive.storage import join, read_json, resolve, tree_digest
from zarrchive.archive.versions import CRATE, logical_path, original_path, published_versions
from zarrchive.errors import NotFound


def _store_digests(manifest: dict[str, Any]) -> dict[str, str]:
    """Each published image's tree digest (its labels included) by image id; an image store the manifest's
    images do not name, by its name."""
    names = {logical_path(i["path"]): i["image_id"] for i in manifest.get("images", [])
             if i.get("path") and not i.get("label_of")}
    stores: dict[str, list[tuple[str, str]]] = {}
    for entry in manifest["files"]:
        path = logical_path(entry["path"])  # (wherever it is stored: shared with an earlier version or not)
        if path.startswith("images/") and ".ome.zarr/" in path:
            store, _, rel = path.partition(".ome.zarr/")
            stores.setdefault(names.get(f"{store}.ome.zarr", store.removeprefix("images/")), []).append(
                (rel, entry["sha256"]))
        elif path.startswith("plates/") and len(parts := path.split("/")) > 5:  # a plate's field
            field = "/".join(parts[:5])
            stores.setdefault(names.get(field, field), []).append(("/".join(parts[5:]), entry["sha256"]))
    return {image: tree_digest(objects) for image, objects in stores.items()}


def changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    """Images and originals added, removed, changed or unchanged between two manifests."""
    out: dict[str, list[str]] = {}
    for kind, pick in (("images", _store_digests),
                       ("originals", lambda m: {logical_path(e["path"]).removeprefix("originals/"): e["sha256"]
                                                for e in m["files"]
                                                if logical_path(e["path"]).startswith("originals/")})):
        before, after = pick(old), pick(new)
        out[f"{kind}_added"] = sorted(set(after) - set(before))
        out[f"{kind}_removed"] = sorted(set(before) - set(after))
        out[f"{kind}_changed"] = sorted(k for k in set(before) & set(after) if before[k] != after[k])
        out[f"{kind}_unchanged"] = sorted(k for k in set(before) & set(after) if before[k] == after[k])
    return out


def _walk(nodes: dict[str, dict], made_by: dict[str, list[dict]], entity: str,
          seen: set[str]) -> tuple[list[dict], list[str]]:
    """Actions that led to ``entity`` (earliest first) and the entities nothing in the crate made."""
    if entity in seen:
        return [], []
    seen.add(entity)
    if entity not in made_by:
        return [], [entity]
    actions, roots = [], []
    for action in made_by[entity]:
        for obj in action.get("object", []):
            more, found = _walk(nodes, made_by, obj["@id"], seen)
            actions += more
            roots += found
        if action not in actions:
            actions.append(action)
    return actions, roots


def lineage_of(archive: str, accession: str, version: int | None = None, image: str | None = None) -> dict[str, Any]:
    """The provenance of a published version (or one image of it), read from the archive."""
    manifests = published_versions(archive, accession)
    if not manifests:
        raise NotFound(f"no published version of {accession} in {archive}")
    manifest = manifests[-1] if version is None else next((m for m in manifests if m["version"] == version), None)
    if manifest is None:
        raise NotFound(f"{accession} has no version {version} (published: {[m['version'] for m in manifests]})")
    fs, root = resolve(archive)
    crate = read_json(fs, join(root, accession, f"v{manifest['version']}", CRATE))
    nodes = {n["@id"]: n for n in crate["@graph"]}
    made_by: dict[str, list[dict]] = {}
    for node in crate["@graph"]:
        if node.get("@type") == "CreateAction" and node.get("zarrchive:stage") != "publish":
            for result in node.get("result", []):
                made_by.setdefault(result["@id"], []).append(node)
    software = {nodes[s["@id"]]["name"]: nodes[s["@id"]]["softwareVersion"]
                for s in nodes["#workflow/ingest_submission"].get("softwareRequirements", [])}
    images = []
    for outcome in manifest["images"]:
        if outcome["status"] != "published" or (image and outcome["image_id"] != image):
            continue
        store = f"{outcome['path']}/"
        actions, roots = _walk(nodes, made_by, store, set())
        original = next((e["path"] for e in manifest["files"]
                         if logical_path(e["path"]) == original_path(outcome['source_path'])),
                        original_path(outcome['source_path']))
        original_sha = nodes.get(original, {}).get("sha256")
        sources = [{"uri": r, "sha256": nodes[r]["sha256"]} for r in roots
                   if nodes.get(r, {}).get("zarrchive:role") == "source" and nodes[r].get("sha256") == original_sha]
        images.append({
            "image_id": outcome["image_id"], "path": store, "source_path": outcome["source_path"],
            "tree_digest": nodes.get(store, {}).get("zarrchive:treeDigest"),
            "original": {"path": original, "sha256": original_sha},
            "sources": sources,
            "stages": [{"stage": a["zarrchive:stage"], "started": a["startTime"], "ended": a["endTime"],
                        "flow_run": a.get("zarrchive:prefectFlowRun"), "task_run": a.get("zarrchive:prefectTaskRun"),
                        "parameters": a.get("zarrchive:parameters", {})} for a in actions],
        })
    if image and not images:
        raise NotFound(f"{accession} v{manifest['version']} has no published image {image}")
    previous = manifest.get("previous_version")
    before = next((m for m in manifests if m["version"] == previous), None)
    return {
        "accession": accession, "version": manifest["version"], "created": manifest["created"],
        "submission": manifest["submission"], "previous_version": previous,
        "flow_runs": sorted({s["flow_run"] for i in images for s in i["stages"] if s["flow_run"]}),
        "software": software, "images": images,
        "changes": changes(before, manifest) if before else None,
    }
