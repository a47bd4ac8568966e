"""Lineage of the demo ingestion: an RO-Crate inside the version that leads every image back to its source."""

from __future__ import annotations

import json
from pathlib import Path

from builders import crate_problems

from zarrchive.archive.lineage import PROCESS_RUN_CRATE


def load_crate(vdir: Path) -> dict[str, dict]:
    crate = json.loads((vdir / "ro-crate-metadata.json").read_text())
    return {node["@id"]: node for node in crate["@graph"]}


def test_crate_follows_the_process_run_profile(demo):
    vdir = Path(demo[0].version_uri)
    nodes = load_crate(vdir)
    assert nodes["ro-crate-metadata.json"]["about"] == {"@id": "./"}
    root = nodes["./"]
    assert {"@id": PROCESS_RUN_CRATE} in root["conformsTo"]
    assert root["license"]["@id"].endswith("CC-BY-4.0") and root["identifier"] == "ZA000001/v1"
    actions = [nodes[a["@id"]] for a in root["mentions"]]
    assert {a["zarrchive:stage"] for a in actions} == {"intake", "fetch", "convert", "pyramid", "compress", "qc",
                                                       "publish"}
    for action in actions:
        assert action["@type"] == "CreateAction"
        assert nodes[action["instrument"]["@id"]]["@type"] == "SoftwareApplication"
        assert action["startTime"] <= action["endTime"]
        assert action["zarrchive:prefectFlowRun"]
        assert action["zarrchive:stage"] == "publish" or action["zarrchive:prefectTaskRun"]
        if action["zarrchive:stage"] != "publish":  # the run's page on the Prefect server the tests started
            assert action["url"].startswith("http://127.0.0.1:") and action["zarrchive:prefectFlowRun"] in action["url"]
    software = {nodes[s["@id"]]["name"]: nodes[s["@id"]]["softwareVersion"]
                for s in nodes["#workflow/ingest_submission"]["softwareRequirements"]}
    assert software["zarr"].startswith("3.") and "bioio" in software and "prefect" in software


def test_every_file_entity_carries_its_checksum_as_in_the_manifest(demo):
    from zarrchive.archive.storage import tree_digest

    vdir = Path(demo[0].version_uri)
    nodes = load_crate(vdir)
    manifest = json.loads((vdir / "manifest.json").read_text())
    stores: dict[str, list] = {}
    for entry in manifest["files"]:
        if entry["path"] == "ro-crate-metadata.json":
            continue
        if entry["path"].startswith("images/"):
            store, _, rel = entry["path"].partition(".ome.zarr/")
            stores.setdefault(store + ".ome.zarr/", []).append((rel, entry["sha256"]))
            continue
        node = nodes[entry["path"]]
        assert node["@type"] == "File" and node["sha256"] == entry["sha256"] and node["contentSize"] == entry["size"]
    assert len(stores) == 2
    for store, objects in stores.items():
        assert nodes[store]["@type"] == "Dataset" and nodes[store]["zarrchive:objects"] == len(objects)
        assert nodes[store]["zarrchive:treeDigest"] == tree_digest(objects)
        assert {"@id": store} in nodes["./"]["hasPart"]


def test_crate_passes_an_ro_crate_validator_for_the_process_run_profile(demo, tmp_path):
    """roc-validator (from PyPI) on a copy of the crate whose @context is inlined: the check runs offline."""
    vdir = Path(demo[0].version_uri)
    assert json.loads((vdir / "ro-crate-metadata.json").read_text())["@context"] == \
        "https://w3id.org/ro/crate/1.1/context"
    assert crate_problems(vdir, tmp_path) == []


def test_a_stage_task_is_made_on_first_use_and_is_the_prefect_task():
    import pickle
    import subprocess
    import sys

    code = ("import sys, zarrchive.standalone, zarrchive.tasks.compress as c; "
            "assert 'prefect' not in sys.modules, 'imported Prefect'; "
            "print(c.compress.name, type(c.compress.task).__name__, 'prefect' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["compress", "Task", "True"]
    from zarrchive.tasks.convert import convert

    assert pickle.loads(pickle.dumps(convert)) is convert  # a copy is the module-level task itself
