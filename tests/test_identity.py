"""Identity and idempotency across runs: cached conversions, versions that link, lineage that answers."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from builders import crate_problems, ome_tiff, random_image, submission
from zarrchive.flows.ingest import ingest_submission

from zarrchive.archive.provenance import lineage_of
from zarrchive.cli import main

pytestmark = pytest.mark.usefixtures("prefect_server")


# The per-image cache across runs is that of a task run of its own: these tests run every item alone (a batch of
# small items is redone on a rerun: zarrchive.batch).
ALONE = {"small_bytes": 0}


def run(sub: Path, archive: Path, config: str):
    """Ingest and return (publication, {task run name: state name}) of that flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    state = ingest_submission(submission=str(sub), archive=str(archive), config=config, create_archive=True,
                              return_state=True)
    publication = state.result()

    async def task_states():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]}))
            return {r.name: r.state.name for r in runs}

    return publication, asyncio.run(task_states())


@pytest.fixture()
def two_images(tmp_path):
    sub = tmp_path / "sub"
    ome_tiff(sub / "a.ome.tif", random_image((1, 1, 40, 50), seed=1), "CZYX", {"x": 0.2, "y": 0.2})
    ome_tiff(sub / "b.ome.tif", random_image((1, 1, 30, 30), seed=2), "CZYX", {"x": 0.2, "y": 0.2})
    submission(sub, [{"path": "a.ome.tif"}, {"path": "b.ome.tif"}],
               imaging_method={"name": "confocal microscopy"}, organism={"scientific_name": "Homo sapiens"})
    return sub


def test_changing_one_file_reconverts_only_that_image_and_v2_links_v1(two_images, tmp_path, config_file):
    archive = tmp_path / "archive"
    config = config_file(batch=ALONE)
    first, states = run(two_images, archive, config)
    assert first.version == 1 and states["convert: a.ome.tif"] == "Completed"

    again, states = run(two_images, archive, config)
    assert again.status == "unchanged" and not any(name.startswith("convert") for name in states)

    ome_tiff(two_images / "b.ome.tif", random_image((1, 1, 30, 30), seed=3), "CZYX", {"x": 0.2, "y": 0.2})
    second, states = run(two_images, archive, config)
    assert second.status == "published" and second.version == 2
    assert states["convert: a.ome.tif"] == "Cached" and states["compress: a"] == "Cached"
    assert states["convert: b.ome.tif"] == "Completed" and states["compress: b"] == "Completed"

    v2 = Path(second.version_uri)
    crate = {n["@id"]: n for n in json.loads((v2 / "ro-crate-metadata.json").read_text())["@graph"]}
    assert crate["./"]["isBasedOn"] == {"@id": "../v1/"}
    assert json.loads((v2 / "manifest.json").read_text())["previous_version"] == 1
    info = lineage_of(str(archive), "ZA000001")
    assert info["changes"]["images_changed"] == ["b"] and info["changes"]["images_unchanged"] == ["a"]
    assert info["changes"]["originals_changed"] == ["b.ome.tif"]
    # image a of v2 was made by the first run's conversion: its lineage says so
    a = next(i for i in info["images"] if i["image_id"] == "a")
    convert_runs = {s["flow_run"] for s in a["stages"] if s["stage"] == "convert"}
    v1_runs = set(lineage_of(str(archive), "ZA000001", version=1)["flow_runs"])
    assert convert_runs <= v1_runs
    assert a["sources"] and a["sources"][0]["uri"].endswith("sub/a.ome.tif")


def test_changing_a_pixel_setting_reconverts_every_image(two_images, tmp_path, config_file):
    archive = tmp_path / "archive"
    run(two_images, archive, config_file(batch=ALONE))
    second, states = run(two_images, archive, config_file(convert={"chunk_xy": 16}, batch=ALONE))
    assert second.version == 2
    assert {states["convert: a.ome.tif"], states["convert: b.ome.tif"]} == {"Completed"}
    info = lineage_of(str(archive), "ZA000001")
    assert info["changes"]["images_changed"] == ["a", "b"] and info["changes"]["originals_changed"] == []
    import zarr
    assert zarr.open_array(f"{second.version_uri}/images/a.ome.zarr/0", mode="r").chunks[-1] == 16


def test_emptying_the_work_area_invalidates_the_cache(two_images, tmp_path, scheduler):
    import yaml

    work = tmp_path / "work"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"cluster": {"address": scheduler}, "staging": {"work": str(work)}, "batch": ALONE}))
    run(two_images, tmp_path / "archive", str(config))
    shutil.rmtree(work)
    (two_images / "notes.txt").write_text("new attachment\n")
    submission(two_images, [{"path": "a.ome.tif"}, {"path": "b.ome.tif"}, {"path": "notes.txt", "kind": "attachment"}],
               imaging_method={"name": "confocal microscopy"}, organism={"scientific_name": "Homo sapiens"})
    second, states = run(two_images, tmp_path / "archive", str(config))
    assert second.status == "published" and states["convert: a.ome.tif"] == "Completed"


def test_every_published_object_leads_back_to_a_submitted_file(demo):
    pub, sub, *_ = demo
    vdir = Path(pub.version_uri)
    nodes = {n["@id"]: n for n in json.loads((vdir / "ro-crate-metadata.json").read_text())["@graph"]}
    made_by: dict[str, list[dict]] = {}
    for node in nodes.values():
        if node.get("@type") == "CreateAction":
            for result in node["result"]:
                made_by.setdefault(result["@id"], []).append(node)

    def roots(entity: str, seen: set[str]) -> set[str]:
        if entity in seen:
            return set()
        seen.add(entity)
        if entity not in made_by:
            return {entity}
        return set().union(*(roots(o["@id"], seen) for a in made_by[entity] for o in a["object"]))

    manifest = json.loads((vdir / "manifest.json").read_text())
    published = {e["path"] for e in manifest["files"]} - {"ro-crate-metadata.json"}
    objects = {p.split(".ome.zarr/")[0] + ".ome.zarr/" if ".ome.zarr/" in p else p for p in published}
    for obj in objects:
        found = roots(obj, set())
        sources = [r for r in found if nodes.get(r, {}).get("zarrchive:role") == "source" and nodes[r].get("sha256")]
        assert sources, f"{obj} does not lead back to a submitted file with a checksum: {found}"
        assert all(r.startswith("file://") and str(sub) in r for r in sources)
    for image in pub.images:  # each image passes through its published original, whose checksum is recorded
        original = f"originals/{image.source_path}"
        converted_from = {o["@id"] for a in nodes.values() if a.get("zarrchive:stage") == "convert"
                          for o in a["object"]}
        assert original in converted_from
        sources = [r for r in roots(f"{image.path}/", set()) if r.endswith(image.source_path)]
        assert sources and nodes[original]["sha256"] == nodes[sources[0]]["sha256"]


def test_lineage_command(demo, capsys):
    pub, _sub, archive, *_ = demo
    assert main(["lineage", pub.accession, "--archive", str(archive), "--image", "images_hela_nuclei", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    [image] = info["images"]
    assert [s["stage"] for s in image["stages"]][-3:] == ["convert", "pyramid", "compress"]
    assert image["original"]["path"] == "originals/images/hela_nuclei.ome.tif"
    assert image["sources"][0]["sha256"] == image["original"]["sha256"]
    assert info["software"]["zarr"].startswith("3.")
    assert main(["lineage", pub.accession, "--archive", str(archive)]) == 0
    assert "stages: " in capsys.readouterr().out
    assert main(["lineage", pub.accession, "--archive", str(archive), "--version", "9"]) == 1


def test_cache_keys_change_with_inputs_settings_and_pixel_software(monkeypatch, tmp_path, settings):
    from zarrchive.archive import identity
    from zarrchive.archive.staging import work_area
    from zarrchive.config import StagingSettings
    from zarrchive.records import FileRecord
    from zarrchive.software import pixel_versions

    work = work_area(StagingSettings(work=str(tmp_path / "work")))
    file = FileRecord(path="a.tif", source_uri="/l/a.tif", staged_path="/s/1/a.tif", size=1, sha256="a" * 64,
                      kind="image")
    params = {"file": file, "entry": None, "settings": settings.convert, "work": work}
    key = identity.convert_key(None, params)
    assert identity.convert_key(None, {**params, "file": file.model_copy(update={"staged_path": "/s/2/a.tif"})}) == key
    assert identity.convert_key(None, {**params, "file": file.model_copy(update={"sha256": "b" * 64})}) != key
    assert identity.convert_key(None, {**params, "settings": settings.convert.model_copy(update={"chunk_z": 2})}) != key
    monkeypatch.setattr(identity, "records_schema", lambda: "an older record schema")
    assert identity.convert_key(None, params) != key  # results cached by older code are never reused
    monkeypatch.undo()
    monkeypatch.setattr(identity, "pixel_versions", lambda: {**pixel_versions(), "zarr": "99.0"})
    assert identity.convert_key(None, params) != key


# ---------------------------------------------------------------- versions share what did not change


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def relative_links(page: Path) -> list[str]:
    import re

    links = re.findall(r"(?:href|src)='([^']+)'", page.read_text()) + re.findall(r'(?:href|src)="([^"]+)"',
                                                                                page.read_text())
    return [link for link in links if "://" not in link and not link.startswith(("data:", "#", "mailto:"))]


@pytest.fixture()
def study(tmp_path):
    """Two noisy images (stored about as large as they are) and a label of the first: about 10 MB published."""
    from test_labels import blobs

    sub = tmp_path / "study"
    ome_tiff(sub / "a.ome.tif", random_image((1, 16, 256, 256), seed=5), "CZYX", {"x": 0.2, "y": 0.2, "z": 1.0})
    ome_tiff(sub / "b.ome.tif", random_image((1, 16, 256, 256), seed=6), "CZYX", {"x": 0.2, "y": 0.2, "z": 1.0})
    ome_tiff(sub / "a_nuclei.tif", blobs((16, 256, 256)), "ZYX")
    files = [{"path": "a.ome.tif"}, {"path": "b.ome.tif"},
             {"path": "a_nuclei.tif", "kind": "label", "label_of": "a.ome.tif", "label_name": "nuclei"}]
    return sub, files


def test_a_metadata_only_version_stores_under_one_percent_of_the_study_and_opens_at_its_paths(study, tmp_path,
                                                                                             config_file, capsys):
    import numpy as np
    import zarr

    sub, files = study
    archive, config = tmp_path / "archive", config_file()
    submission(sub, files, title="Nuclei of HeLa cells, first title")
    first, _ = run(sub, archive, config)
    submission(sub, files, title="Nuclei of HeLa cells, corrected title")
    second, _ = run(sub, archive, config)
    assert (first.version, second.status, second.version) == (1, "published", 2)

    v1, v2 = archive / "ZA000001" / "v1", archive / "ZA000001" / "v2"
    added = folder_bytes(v2)
    assert added < 0.01 * folder_bytes(v1), (added, folder_bytes(v1))
    index = {v["version"]: v for v in json.loads((archive / "ZA000001" / "versions.json").read_text())["versions"]}
    assert index[2]["stored_bytes"] == added - (v2 / "manifest.json").stat().st_size
    assert abs(index[2]["bytes"] - index[1]["bytes"]) < 0.01 * index[1]["bytes"]  # each lists the whole study

    manifest = json.loads((v2 / "manifest.json").read_text())
    assert manifest["format_version"] == 5
    paths = {i["image_id"]: i["path"] for i in manifest["images"]}
    assert paths == {"a": "../v1/images/a.ome.zarr", "b": "../v1/images/b.ome.zarr",
                     "a_nuclei": "../v1/images/a.ome.zarr/labels/nuclei"}
    shared = [e["path"] for e in manifest["files"] if e["path"].startswith("../")]
    assert {p.split("/")[2] for p in shared} == {"images", "originals", "thumbnails"}
    assert {"../v1/originals/a.ome.tif", "../v1/originals/b.ome.tif", "../v1/originals/a_nuclei.tif",
            "../v1/thumbnails/a.png", "../v1/thumbnails/b.png"} <= set(shared)
    for image in ("a", "b"):  # each opens with zarr at the path the manifest gives, identical to v1's
        level0 = zarr.open_group(str(v2 / paths[image]), mode="r")["0"][...]
        assert np.array_equal(level0, zarr.open_group(str(v1 / f"images/{image}.ome.zarr"), mode="r")["0"][...])
    assert zarr.open_group(str(v2 / paths["a_nuclei"]), mode="r")["0"].shape[-2:] == (256, 256)

    for link in relative_links(v2 / "index.html"):  # the landing page's links reach what v2 shares
        assert (v2 / link.split("?")[0]).exists(), link
    assert any(link.startswith("../v1/images/a.ome.zarr/") for link in relative_links(v2 / "index.html"))
    assert "replaced by <code>v1/images/a.ome.zarr</code>" in (v2 / "index.html").read_text()  # (no '..' on S3)
    assert main(["show", "ZA000001", "--archive", str(archive)]) == 0
    assert "stored by it, the rest shared" in capsys.readouterr().out
    assert main(["verify", "ZA000001/v2", "--archive", str(archive)]) == 0
    assert main(["catalog", "check", "--archive", str(archive)]) == 0
    (tmp_path / "crate").mkdir()
    assert crate_problems(v2, tmp_path / "crate") == []
    info = lineage_of(str(archive), "ZA000001")
    assert info["changes"]["images_unchanged"] == ["a", "b"] and info["changes"]["images_changed"] == []
    assert info["changes"]["originals_unchanged"] == ["a.ome.tif", "a_nuclei.tif", "b.ome.tif"]
    a = next(i for i in info["images"] if i["image_id"] == "a")
    assert a["path"] == "../v1/images/a.ome.zarr/" and a["sources"][0]["uri"].endswith("study/a.ome.tif")
    assert a["original"]["path"] == "../v1/originals/a.ome.tif" and a["original"]["sha256"]

    from zarrchive.archive.fixity import audit

    listed = {n: json.loads((archive / f"ZA000001/v{n}/manifest.json").read_text())["files"] for n in (1, 2)}
    result = audit(str(archive))  # each object read once, though two versions list most of them
    assert result.ok and result.objects == len(listed[1]) + len(listed[2])
    assert result.hashed == len(listed[1]) + sum(not e["path"].startswith("../") for e in listed[2])
    original = v1 / "originals/b.ome.tif"
    data = bytearray(original.read_bytes())
    data[len(data) // 2] ^= 1
    original.write_bytes(bytes(data))  # one flipped bit in an original both versions list
    found = {(p["version"], p["path"], p["kind"]) for p in audit(str(archive)).problems}
    assert found == {("ZA000001/v1", "originals/b.ome.tif", "sha256"),
                     ("ZA000001/v2", "../v1/originals/b.ome.tif", "sha256")}


def test_a_version_does_not_share_a_damaged_store_and_verify_names_it(study, tmp_path, config_file, capsys):
    sub, files = study
    archive, config = tmp_path / "archive", config_file()
    for number, title in enumerate(("First title of the study", "Second title of the study"), 1):
        submission(sub, files, title=title)
        pub, _ = run(sub, archive, config)
        assert pub.version == number
    chunk = max((archive / "ZA000001/v1/images/b.ome.zarr/0").rglob("*"), key=lambda p: p.stat().st_size)
    chunk.write_bytes(chunk.read_bytes()[:-10])  # bit rot in an object v2 shares

    assert main(["verify", "ZA000001/v2", "--archive", str(archive), "--json"]) != 0
    assert "../v1/images/b.ome.zarr/0/" in capsys.readouterr().out
    submission(sub, files, title="Third title of the study")
    third, _ = run(sub, archive, config)
    assert third.status == "published" and third.version == 3
    paths = {i["image_id"]: i["path"] for i in json.loads((archive / "ZA000001/v3/manifest.json").read_text())["images"]}
    assert paths["a"] == "../v1/images/a.ome.zarr" and paths["b"] == "images/b.ome.zarr"  # stored again, whole
    assert main(["verify", "ZA000001/v3", "--archive", str(archive)]) == 0


def test_a_changed_image_is_stored_and_the_others_shared(study, tmp_path, config_file):
    sub, files = study
    archive, config = tmp_path / "archive", config_file()
    submission(sub, files)
    run(sub, archive, config)
    ome_tiff(sub / "b.ome.tif", random_image((1, 16, 256, 256), seed=7), "CZYX", {"x": 0.2, "y": 0.2, "z": 1.0})
    second, _ = run(sub, archive, config)
    manifest = json.loads((Path(second.version_uri) / "manifest.json").read_text())
    paths = {i["image_id"]: i["path"] for i in manifest["images"]}
    assert paths["a"] == "../v1/images/a.ome.zarr" and paths["b"] == "images/b.ome.zarr"
    originals = {e["path"] for e in manifest["files"] if "originals/" in e["path"]}
    assert originals == {"../v1/originals/a.ome.tif", "../v1/originals/a_nuclei.tif", "originals/b.ome.tif"}
    assert main(["verify", "ZA000001/v2", "--archive", str(archive)]) == 0


def test_versions_share_on_s3_and_each_opens_and_verifies(s3_endpoint, two_images, tmp_path, config_file):
    import fsspec
    import numpy as np
    import zarr

    bucket = s3_endpoint()
    archive, config = f"s3://{bucket}/archive", config_file()
    run(two_images, archive, config)
    submission(two_images, [{"path": "a.ome.tif"}, {"path": "b.ome.tif"}], title="A corrected title of the study")
    second, _ = run(two_images, archive, config)
    assert second.status == "published" and second.version == 2
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    v2 = sorted(p.split("/ZA000001/v2/")[1] for p in fs.find(f"{bucket}/archive/ZA000001/v2"))
    assert not any(p.startswith(("images/", "originals/", "thumbnails/")) for p in v2), v2
    manifest = json.loads(fs.cat(f"{bucket}/archive/ZA000001/v2/manifest.json"))
    path = {i["image_id"]: i["path"] for i in manifest["images"]}["a"]
    assert path == "../v1/images/a.ome.zarr"
    store = zarr.storage.FsspecStore.from_url(f"{archive}/ZA000001/v1/images/a.ome.zarr", read_only=True,
                                              storage_options=fsspec.config.conf["s3"])
    level0 = zarr.open_group(store, mode="r")["0"][...]
    assert np.array_equal(level0.reshape(40, 50), random_image((1, 1, 40, 50), seed=1).reshape(40, 50))
    assert main(["verify", "ZA000001/v2", "--archive", archive]) == 0
    fs.rm(f"{bucket}/archive/ZA000001/v1/originals/b.ome.tif")  # an object v2 shares goes missing
    assert main(["verify", "ZA000001/v2", "--archive", archive]) != 0


def test_an_object_slipped_into_a_shared_store_is_found_and_the_store_not_shared_again(study, tmp_path, config_file,
                                                                                     capsys):
    sub, files = study
    archive, config = tmp_path / "archive", config_file()
    for number, title in enumerate(("First title of the study", "Second title of the study"), 1):
        submission(sub, files, title=title)
        assert run(sub, archive, config)[0].version == number
    (archive / "ZA000001/v1/images/a.ome.zarr/0/c/9").write_bytes(b"a chunk zarr would read through v2 too")
    assert main(["verify", "ZA000001/v2", "--archive", str(archive), "--json"]) != 0
    assert "../v1/images/a.ome.zarr/0/c/9" in capsys.readouterr().out
    submission(sub, files, title="Third title of the study")
    third, _ = run(sub, archive, config)
    paths = {i["image_id"]: i["path"] for i in json.loads((archive / "ZA000001/v3/manifest.json").read_text())["images"]}
    assert third.version == 3 and paths["a"] == "images/a.ome.zarr" and paths["b"] == "../v1/images/b.ome.zarr"


def test_what_a_version_offers_to_share_is_found_in_one_pass_for_files_and_submitted_stores(tmp_path):
    import hashlib

    import fsspec

    from zarrchive.archive.sharing import shareable, staged_key, store_key
    from zarrchive.archive.storage import tree_digest

    acc = tmp_path / "ZA000001"
    objects = {"originals/a.tif": b"tiff bytes", "originals/in.ome.zarr/zarr.json": b"{}",
               "originals/in.ome.zarr/0/c/0": b"chunk", "images/a.ome.zarr/zarr.json": b"{ }",
               "images/a.ome.zarr/0/c/0": b"pixels", "images/a.ome.zarr/labels/zarr.json": b"{labels}",
               "images/a.ome.zarr/labels/n/zarr.json": b"{n}", "thumbnails/a.png": b"png"}
    files = []
    for path, data in objects.items():
        (acc / "v1" / path).parent.mkdir(parents=True, exist_ok=True)
        (acc / "v1" / path).write_bytes(data)
        files.append({"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    sha = {f["path"]: f["sha256"] for f in files}
    manifest = {"version": 1, "files": files, "images": [
        {"image_id": "a", "status": "published", "path": "images/a.ome.zarr"},
        {"image_id": "n", "status": "published", "path": "images/a.ome.zarr/labels/n", "label_of": "a"}]}
    offered = shareable(fsspec.filesystem("file"), str(acc), manifest)
    assert offered.original("a.tif", sha["originals/a.tif"])[0] == "../v1/originals/a.tif"
    store = tree_digest([("zarr.json", sha["originals/in.ome.zarr/zarr.json"]),
                         ("0/c/0", sha["originals/in.ome.zarr/0/c/0"])])
    where, entries = offered.original("in.ome.zarr", store)
    assert where == "../v1/originals/in.ome.zarr" and len(entries) == 2
    assert offered.original("in.ome.zarr", "0" * 64) is None and offered.original("b.tif", "0" * 64) is None
    key = store_key([("zarr.json", sha["images/a.ome.zarr/zarr.json"]), ("0/c/0", sha["images/a.ome.zarr/0/c/0"]),
                     ("labels/zarr.json", sha["images/a.ome.zarr/labels/zarr.json"]),
                     ("labels/n/zarr.json", sha["images/a.ome.zarr/labels/n/zarr.json"])])
    path, shared = offered.store("a", key)
    assert path == "../v1/images/a.ome.zarr" and len(shared) == 4 and "a" in offered.thumbnails
    assert offered.store("a", staged_key("f" * 64, {}, {})) is None  # another tree is not shared
