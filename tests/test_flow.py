"""The whole ingest flow under a real Prefect server and a real Dask cluster."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from builders import ome_tiff, plain_tiff, random_image, submission
from zarrchive.flows import ingest as ingest_flow

pytestmark = pytest.mark.usefixtures("prefect_server")


def ingest(sub: Path, archive: Path, config: str):
    return ingest_flow.ingest(submission=str(sub), archive=str(archive), config=config)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_demo_is_published_as_version_1(demo):
    pub, _sub, archive, _cfg, _ = demo
    assert pub.status == "published" and pub.version == 1 and pub.accession == "ZA000001"
    assert Path(pub.version_uri) == archive / "ZA000001" / "v1"
    assert {o.image_id: (o.status, o.qc) for o in pub.images} == {
        "images_hela_nuclei": ("published", "ok"), "images_legacy_overview": ("published", "ok")}


def test_originals_are_untouched_and_published_byte_for_byte(demo):
    pub, sub, _archive, _cfg, before = demo
    assert {p: sha256(p) for p in sub.rglob("*") if p.is_file()} == before
    vdir = Path(pub.version_uri)
    for rel in ("images/hela_nuclei.ome.tif", "images/legacy_overview.tif", "notes.txt"):
        assert (vdir / "originals" / rel).read_bytes() == (sub / rel).read_bytes()


def test_manifest_lists_every_object_with_its_checksum(demo):
    vdir = Path(demo[0].version_uri)
    manifest = json.loads((vdir / "manifest.json").read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    on_disk = {p.relative_to(vdir).as_posix() for p in vdir.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(listed) == on_disk
    for rel, entry in listed.items():
        assert entry["size"] == (vdir / rel).stat().st_size and entry["sha256"] == sha256(vdir / rel)
    assert {"qc/report.json", "qc/index.html", "ro-crate-metadata.json"} <= on_disk
    assert json.loads((vdir.parent / "versions.json").read_text())["versions"][0]["version"] == 1


def test_published_images_open_in_bioio_with_source_metadata_and_exact_pixels(demo):
    import bioio_ome_zarr
    from bioio import BioImage

    pub, sub, _archive, _cfg, _ = demo
    vdir = Path(pub.version_uri)
    cells = tifffile.imread(sub / "images/hela_nuclei.ome.tif")  # C Z Y X
    img = BioImage(vdir / "images/images_hela_nuclei.ome.zarr", reader=bioio_ome_zarr.Reader)
    assert list(img.channel_names) == ["DAPI", "LaminB1-GFP"]
    assert img.physical_pixel_sizes.X == pytest.approx(0.108) and img.physical_pixel_sizes.Z == pytest.approx(0.5)
    np.testing.assert_array_equal(img.get_image_data("CZYX"), cells)

    legacy = tifffile.imread(sub / "images/legacy_overview.tif")
    img = BioImage(vdir / "images/images_legacy_overview.ome.zarr", reader=bioio_ome_zarr.Reader)
    assert list(img.channel_names) == ["Hoechst"]
    assert img.physical_pixel_sizes.Y == pytest.approx(0.65)
    np.testing.assert_array_equal(img.get_image_data("YX"), legacy)


def test_published_images_validate_with_ome_zarr_models_and_ome_zarr_py(demo):
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05 import Image

    vdir = Path(demo[0].version_uri)
    for store in sorted((vdir / "images").iterdir()):
        model = Image.from_zarr(zarr.open_group(store, mode="r"))
        assert len(model.attributes.ome.multiscales[0].datasets) >= 2
        nodes = list(Reader(parse_url(str(store)))())
        assert nodes and len(nodes[0].data) == len(model.attributes.ome.multiscales[0].datasets)


def test_the_landing_page_shows_a_thumbnail_of_each_image_and_links_that_resolve(demo):
    import re

    import imagecodecs

    vdir = Path(demo[0].version_uri)
    page = (vdir / "index.html").read_text()
    for image_id in ("images_hela_nuclei", "images_legacy_overview"):
        picture = imagecodecs.png_decode((vdir / "thumbnails" / f"{image_id}.png").read_bytes())
        assert (picture.ndim == 2 or picture.shape[2] == 3) and picture.dtype == np.uint8  # grey or RGB
        assert max(picture.shape[:2]) <= 256 and picture.std() > 0  # a picture, not a blank
        assert f"src='thumbnails/{image_id}.png'" in page
    nuclei = imagecodecs.png_decode((vdir / "thumbnails" / "images_hela_nuclei.png").read_bytes())
    assert nuclei.ndim == 3 and not (np.array_equal(nuclei[..., 0], nuclei[..., 1]) and
                                     np.array_equal(nuclei[..., 1], nuclei[..., 2]))  # two channels: in colour
    legacy = imagecodecs.png_decode((vdir / "thumbnails" / "images_legacy_overview.png").read_bytes())
    assert legacy.ndim == 2  # one channel: a greyscale PNG
    links = re.findall(r"(?:href|src)='([^'#:]+)'", page)  # every relative link of the page
    assert "images/images_hela_nuclei.ome.zarr/zarr.json" in links
    for link in links:
        assert (vdir / link).is_file() or (vdir / link / "index.html").is_file() or link.startswith("../"), link
    assert "How to open an image" in page and "BioImage(&quot;images/images_hela_nuclei.ome.zarr&quot;)" in page
    manifest = {f["path"] for f in json.loads((vdir / "manifest.json").read_text())["files"]}
    assert {"thumbnails/images_hela_nuclei.png", "thumbnails/images_legacy_overview.png"} <= manifest


def test_qc_report_and_prefect_run_show_every_stage(demo):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    pub, _sub, _archive, _cfg, _ = demo
    report = json.loads((Path(pub.version_uri) / "qc/report.json").read_text())
    assert report["errors"] == 0 and len(report["images"]) == 2
    crate = json.loads((Path(pub.version_uri) / "ro-crate-metadata.json").read_text())
    run_ids = {n["zarrchive:prefectFlowRun"] for n in crate["@graph"] if n.get("@type") == "CreateAction"}
    assert len(run_ids) == 1

    async def stages():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": list(run_ids)}))
            artifacts = await client.read_artifacts()
            return [r.name for r in runs], {a.key for a in artifacts}

    full, artifact_keys = asyncio.run(stages())
    names = {name.split(":")[0].rsplit("-", 1)[0] for name in full}
    assert names == {"intake", "fetch", "check_unchanged", "convert", "pyramid", "compress", "qc", "publish", "catalog"}
    # two small files: each its own task run (batches only when there are more items than batch.parallel)
    assert {"convert: images/hela_nuclei.ome.tif", "compress: images_legacy_overview"} <= set(full), full
    assert {"za000001-qc-summary", "za000001-qc-findings", "za000001-qc-images",
            "za000001-publication"} <= artifact_keys


def test_rerunning_an_unchanged_submission_publishes_nothing_new(demo):
    _pub, sub, archive, cfg, _ = demo
    again = ingest(sub, archive, cfg)
    assert again.status == "unchanged" and again.version == 1 and again.accession == "ZA000001"
    assert sorted(p.name for p in (archive / "ZA000001").glob("v[0-9]*")) == ["v1"]


def test_a_runs_publication_is_read_back_from_the_api_too(demo):
    """The final state read from the API (as a retried request or another process gets it) still gives the run's
    Publication: flow results are persisted, not only held in the process that ran the flow."""
    from prefect.client.orchestration import get_client

    _pub, sub, archive, cfg, _ = demo
    state = ingest_flow.ingest_submission(submission=str(sub), archive=str(archive), config=cfg, return_state=True)
    with get_client(sync_client=True) as client:
        stored = client.read_flow_run(state.state_details.flow_run_id).state
    again = stored.result()
    assert again.status == "unchanged" and again.accession == "ZA000001" and again.version == 1


def test_a_changed_file_publishes_version_2(demo, tmp_path):
    import shutil

    _pub, sub, archive, cfg, _ = demo
    changed = tmp_path / "sub"
    shutil.copytree(sub, changed)
    # a different location is a different submission: same content, new accession
    other = ingest(changed, archive, cfg)
    assert other.accession == "ZA000002" and other.version == 1
    (changed / "notes.txt").write_text("Corrected acquisition notes.\n")
    second = ingest(changed, archive, cfg)
    assert second.accession == "ZA000002" and second.status == "published" and second.version == 2


def test_one_bad_image_is_reported_and_the_others_still_processed(tmp_path, config_file):
    sub = tmp_path / "sub"
    ome_tiff(sub / "good.ome.tif", random_image((1, 1, 40, 40)), "CZYX", {"x": 0.2, "y": 0.2})
    (sub / "bad.tif").write_text("not an image at all")
    submission(sub, [{"path": "good.ome.tif"}, {"path": "bad.tif"}])
    blocked = ingest(sub, tmp_path / "archive", config_file())
    assert blocked.status == "blocked" and blocked.version is None
    outcome = {o.image_id: o for o in blocked.images}
    assert outcome["bad"].status == "failed" and "bad.tif" in outcome["bad"].error
    assert "not supported" in outcome["bad"].error
    assert outcome["good"].status == "blocked" and outcome["good"].qc == "ok"  # it was converted and checked
    assert not list((tmp_path / "archive").glob("*/v*/manifest.json"))

    from zarrchive.flows.ingest import ingest_submission

    state = ingest_submission(submission=str(sub), archive=str(tmp_path / "archive"),
                              config=config_file(publish={"on_image_error": "skip_image"}), return_state=True)
    # published without an image: never plain green, named for what happened, naming the image
    assert state.is_failed() and state.name == "Partially published" and "bad.tif" in state.message
    published = state.result(raise_on_failure=False).data
    assert published.status == "published" and published.version == 1
    outcome = {o.image_id: o for o in published.images}
    assert outcome["good"].status == "published" and outcome["bad"].status == "failed"
    manifest = json.loads((Path(published.version_uri) / "manifest.json").read_text())
    assert not any(f["path"].startswith("images/bad") for f in manifest["files"])


@pytest.mark.parametrize("keep", [False, True])
def test_the_staged_originals_are_linked_into_the_version_unless_the_staging_folder_is_kept(tmp_path, config_file,
                                                                                            monkeypatch, keep):
    """The run's staged originals become the version's originals as hard links (the staging folder goes when the
    run ends: nothing is written twice). A kept staging folder (staging.keep) shares nothing with the archive."""
    import os

    from zarrchive.archive import storage

    linked, link = [], storage._linked_as_stored

    def recorded(src, dst, block):
        done = link(src, dst, block)
        linked.append((Path(src).name, done is not None))
        return done

    monkeypatch.setattr(storage, "_linked_as_stored", recorded)
    sub = tmp_path / "sub"
    ome_tiff(sub / "a.ome.tif", random_image((1, 1, 40, 40)), "CZYX", {"x": 0.2, "y": 0.2})
    (sub / "notes.txt").write_text("how the cells were imaged")
    submission(sub, [{"path": "a.ome.tif"}, {"path": "notes.txt", "kind": "attachment"}])
    stg = tmp_path / "stg"
    pub = ingest(sub, tmp_path / "archive", config_file(staging={"root": str(stg), "keep": keep}))
    assert pub.status == "published"
    vdir = Path(pub.version_uri)
    assert sorted(linked) == ([] if keep else [("a.ome.tif", True), ("notes.txt", True)])
    if not keep:
        assert not list(stg.rglob("notes.txt"))  # (the staging folder is gone)
    for name in ("a.ome.tif", "notes.txt"):
        assert os.stat(vdir / "originals" / name).st_nlink == 1  # (the staging folder gone, or not linked)
        assert (vdir / "originals" / name).read_bytes() == (sub / name).read_bytes()
    if keep:
        [kept] = stg.glob("zarrchive-*/originals/notes.txt")
        assert not os.path.samefile(kept, vdir / "originals" / "notes.txt")


def test_checksum_mismatch_is_refused_with_the_file_named(tmp_path, config_file):
    sub = tmp_path / "sub"
    plain_tiff(sub / "a.tif", random_image((16, 16), "uint8"))
    submission(sub, [{"path": "a.tif", "sha256": "0" * 64}])
    pub = ingest(sub, tmp_path / "archive", config_file())
    assert pub.status == "blocked"
    [outcome] = pub.images
    assert outcome.status == "failed" and "a.tif" in outcome.error and "sha256" in outcome.error


def test_qc_error_blocks_publication(tmp_path, config_file):
    sub = tmp_path / "sub"
    ome_tiff(sub / "c.ome.tif", random_image((2, 1, 16, 16)), "CZYX", {"x": 0.1, "y": 0.1})
    submission(sub, [{"path": "c.ome.tif", "channel_names": ["only one"]}])
    pub = ingest(sub, tmp_path / "archive", config_file())
    assert pub.status == "blocked"
    assert pub.images[0].qc == "error" and "channel_names" in pub.images[0].error
    assert any("channel_names" in r for r in pub.reasons)


def test_an_ome_zarr_input_is_fetched_converted_and_published_as_one_entry(tmp_path, config_file):
    """An OME-Zarr folder listed in submission.yaml: staged whole, re-chunked and re-compressed into the archive's
    own OME-Zarr, its original objects published under originals/ and described as one Dataset in the crate."""
    import fsspec
    import yaml
    import zarr
    from builders import crate_problems, ome_zarr_input
    from zarrchive.tasks.intake import template_for

    from zarrchive.archive.storage import store_tree_digest

    sub = tmp_path / "sub"
    data = random_image((2, 3, 48, 40))
    store = ome_zarr_input(sub / "images" / "embryo.ome.zarr", data, "CZYX", {"x": 0.4, "y": 0.4, "z": 2.0},
                           ["H2B", "membrane"], version="0.4")
    listed = [f["path"] for f in yaml.safe_load(template_for(str(sub)))["files"]]
    assert listed == ["images/embryo.ome.zarr"]  # one entry, not its objects
    _size, digest = store_tree_digest(fsspec.filesystem("file"), str(store))
    submission(sub, [{"path": "images/embryo.ome.zarr", "sha256": digest}])
    before = {p: sha256(p) for p in store.rglob("*") if p.is_file()}
    pub = ingest(sub, tmp_path / "archive", config_file(convert={"chunk_xy": 16}))
    assert pub.status == "published", pub.reasons
    assert {p: sha256(p) for p in store.rglob("*") if p.is_file()} == before  # the original is never modified
    vdir = Path(pub.version_uri)
    [outcome] = pub.images
    image = zarr.open_group(str(vdir / outcome.path), mode="r")
    np.testing.assert_array_equal(image["0"][...], data)
    ome = image.attrs["ome"]
    assert ome["version"] == "0.5" and [c["label"] for c in ome["omero"]["channels"]] == ["H2B", "membrane"]
    assert ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 0.4, 0.4]
    assert len(ome["multiscales"][0]["datasets"]) == 3  # its own pyramid, not the input's two levels
    for rel in before:  # every object of the input, published as it was
        assert (vdir / "originals/images/embryo.ome.zarr" / rel.relative_to(store)).read_bytes() == rel.read_bytes()
    nodes = {n["@id"]: n for n in json.loads((vdir / "ro-crate-metadata.json").read_text())["@graph"]}
    original = nodes["originals/images/embryo.ome.zarr/"]
    assert original["@type"] == "Dataset" and original["zarrchive:treeDigest"] == digest
    assert original["conformsTo"] == {"@id": "https://ngff.openmicroscopy.org/0.4/"}
    fetch = next(n for n in nodes.values() if n.get("zarrchive:stage") == "fetch")
    assert {"@id": "originals/images/embryo.ome.zarr/"} in fetch["result"]
    assert crate_problems(vdir, tmp_path) == []



def test_a_multi_file_ome_tiff_set_is_published_as_one_image(tmp_path, config_file):
    import zarr
    from builders import ome_tiff_file_set

    sub = tmp_path / "sub"
    data = random_image((4, 32, 24))
    ome_tiff_file_set(sub / "timelapse", data, ["p_0.ome.tif", "p_1.ome.tif"], {"x": 0.5, "y": 0.5, "z": 1.0})
    submission(sub, [{"path": "timelapse/p_0.ome.tif"}, {"path": "timelapse/p_1.ome.tif"}])
    pub = ingest(sub, tmp_path / "archive", config_file(convert={"chunk_xy": 16}))
    assert pub.status == "published", pub.reasons
    [outcome] = pub.images
    assert outcome.image_id == "timelapse_p_0" and outcome.source_path == "timelapse/p_0.ome.tif"
    vdir = Path(pub.version_uri)
    np.testing.assert_array_equal(zarr.open_array(str(vdir / outcome.path / "0"), mode="r")[0], data)
    assert {p.name for p in (vdir / "originals" / "timelapse").iterdir()} == {"p_0.ome.tif", "p_1.ome.tif"}


def test_two_files_whose_images_would_share_an_id_are_both_reported_and_neither_replaces_the_other():
    from types import SimpleNamespace

    from zarrchive.flows.fanout import distinct_ids
    from zarrchive.tasks.publish import image_outcomes

    from zarrchive.config import PublishSettings

    def image(path, image_id, series=0):
        return SimpleNamespace(source_path=path, image_id=image_id, series=series, shown_as=path, label_of=None,
                               label_name=None, well=None)

    slide, label, photo = image("case1.svs", "case1"), image("case1.svs", "case1_label", 2), image("case1_label.png",
                                                                                                 "case1_label")
    kept, refused = distinct_ids([photo, label, slide])
    assert kept == [slide, label] and len(refused) == 1  # the first file's, in path order, keeps the id
    assert refused[0].source_path == "case1_label.png" and "as the image of case1.svs is" in refused[0].error
    outcomes = image_outcomes(kept, refused, None, PublishSettings(on_image_error="skip_image"))
    assert sorted((o.image_id, o.status) for o in outcomes) == [
        ("case1", "published"), ("case1_label", "published"), ("case1_label.png", "failed")]


def test_the_run_log_tells_staff_each_stage_and_ends_with_where_it_was_published(demo):
    """The demo's run, read back from the Prefect API as the UI shows it: a line per stage and image, the
    publication last; no Dask INFO lines."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    pub, *_ = demo
    crate = json.loads((Path(pub.version_uri) / "ro-crate-metadata.json").read_text())
    [run_id] = {n["zarrchive:prefectFlowRun"] for n in crate["@graph"] if n.get("@type") == "CreateAction"}
    patterns = (r"^ZA\d{6}: .* \(\d+ file\(s\)\) is ", r"^fetched \d+ file\(s\), .* each hashed",
                r"^convert \S+: .*, channels ", r"^compress \S+: ", r"^qc: \d+ image\(s\) checked")
    import time

    deadline = time.monotonic() + 60
    while True:  # a run's logs reach the API in batches, after the run
        logs = []
        with get_client(sync_client=True) as client:
            while page := client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
                                           sort=LogSort.TIMESTAMP_ASC, limit=200, offset=len(logs)):
                logs += page
        lines = [log.message for log in logs]
        missing = [p for p in patterns if not any(re.search(p, line) for line in lines)]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not missing, (missing, lines)
    assert not [log for log in logs if log.name.startswith("distributed")]
    published = [i for i, line in enumerate(lines) if line.startswith(f"Published {pub.accession} v{pub.version} at ")]
    assert published and "index.html" in lines[published[0]]
    assert not [line for line in lines[published[0] + 1:] if not line.startswith(("Finished", "Beginning"))]


def test_the_process_running_an_ingest_collects_cyclic_garbage_less_often(demo):
    """A run of many images holds many live objects; the flow sets the collector's thresholds for its process
    (``session.collect_less``: each collection of the older generations walks them all)."""
    import gc

    from zarrchive.session import COLLECT_AFTER

    assert gc.get_threshold() == COLLECT_AFTER
