"""Publish, without Prefect: version layout, manifest, idempotence, crash recovery, image policy."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from zarrchive.config import PublishSettings, load_settings
from zarrchive.records import (
    Axis, CodecChoice, CompressionReport, Entity, Failure, FileRecord, ImageOutcome, ImageRecord, Level,
    LineageRecord, Finding, QCReport, SourceLayout, Submission, SubmissionDoc,
)
from zarrchive.pixels.passes import store_digest
from zarrchive.tasks.publish import (
    blocking_reasons, find_unchanged, image_outcomes, publish_version, published_versions, version_fingerprint,
)

ACCESSION = "ZA000007"
T0 = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.timezone.utc)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_submission(files: list[str], title: str = "A test submission of microscopy images") -> Submission:
    doc = SubmissionDoc(
        title=title, description="Publish tests.", license="CC-BY-4.0", release_date=dt.date(2025, 1, 1),
        authors=[{"name": "Jane Doe", "orcid": "0000-0002-1825-0097"}], files=[{"path": p} for p in files],
    )
    return Submission(source="/landing/sub", doc=doc, doc_sha256="0" * 64, accession=ACCESSION)


def stage_file(staging: Path, rel: str, data: bytes) -> FileRecord:
    path = staging / "originals" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return FileRecord(path=rel, source_uri=f"/landing/sub/{rel}", staged_path=str(path), size=len(data),
                      sha256=sha(data), kind="image")


def zarr_store(path: Path, seed: int = 0) -> Path:
    """A small Zarr v3 group with two arrays (stands in for a compressed OME-Zarr)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"datasets": [{"path": "0"}, {"path": "1"}]}]}
    data = np.random.default_rng(seed).integers(0, 60000, (16, 20), dtype="uint16")
    a0 = group.create_array("0", shape=data.shape, chunks=(8, 8), dtype="uint16")
    a0[...] = data
    a1 = group.create_array("1", shape=(8, 10), chunks=(8, 8), dtype="uint16")
    a1[...] = data[::2, ::2]
    return path


def compression_report(image_id: str, store: Path) -> CompressionReport:
    files = sorted(p for p in store.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    _, digest = store_digest(str(store))
    return CompressionReport(
        image_id=image_id, store=str(store), codec=CodecChoice(name="zstd", configuration={"level": 5}),
        bytes_in=16 * 20 * 2 + 8 * 10 * 2, bytes_out=size, ratio=1.0, seconds=0.01, chunks_verified=len(files),
        level0_sha256="1" * 64, store_sha256=digest,
    )


def qc_report(findings: list[Finding] = ()) -> QCReport:
    return QCReport(suite="qc/default.json", rows=[{"image_id": "cells", "dtype": "uint16"}], findings=list(findings))


def lineage(files: list[FileRecord], reports: list[CompressionReport]) -> list[LineageRecord]:
    def rec(stage: str, inputs: list[Entity], outputs: list[Entity], image_id: str | None = None) -> LineageRecord:
        return LineageRecord(stage=stage, image_id=image_id, inputs=inputs, outputs=outputs, parameters={},
                             software={"zarrchive": "test"}, started=T0, ended=T0 + dt.timedelta(seconds=1),
                             host="testhost")
    out = [rec("fetch", [Entity(uri=f.source_uri) for f in files], [e for f in files for e in f.entities()])]
    for r in reports:
        staged = Entity(uri=f"/staging/{r.image_id}.ome.zarr", kind="zarr")
        out.append(rec("compress", [staged], r.entities(), image_id=r.image_id))
    return out


def outcome(image_id: str, source_path: str, status: str = "published", qc: str = "ok") -> ImageOutcome:
    return ImageOutcome(image_id=image_id, source_path=source_path, series=0, status=status, qc=qc)


class Inputs:
    """A complete, consistent set of publish inputs built under ``tmp_path``."""

    def __init__(self, tmp_path: Path):
        staging = tmp_path / "staging"
        self.archive = str(tmp_path / "archive")
        self.files = [stage_file(staging, "images/cells.tif", b"II*\x00" + bytes(range(200)) * 5),
                      stage_file(staging, "notes/readme.txt", b"about these images\n")]
        self.submission = make_submission([f.path for f in self.files])
        self.reports = [compression_report("cells", zarr_store(staging / "compressed" / "cells.ome.zarr"))]
        self.outcomes = [outcome("cells", "images/cells.tif")]
        self.qc = qc_report([Finding(severity="warning", check="calibrated", message="no pixel size",
                                       image_id="cells")])
        self.lineage = lineage(self.files, self.reports)

    def publish(self, fingerprint: str = "f" * 64, **changes):
        args = dict(submission=self.submission, archive=self.archive, fingerprint=fingerprint, files=self.files,
                    reports=self.reports, outcomes=self.outcomes, qc_report=self.qc, lineage=self.lineage)
        args.update(changes)
        return publish_version(**args)

    def acc(self) -> Path:
        return Path(self.archive) / ACCESSION


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)).replace("\\", "/") for p in folder.rglob("*") if p.is_file())


# ---------------------------------------------------------------- layout and manifest


def test_publish_writes_the_version_layout(tmp_path):
    inp = Inputs(tmp_path)
    pub = inp.publish()

    vdir = inp.acc() / "v1"
    assert pub.status == "published" and pub.version == 1 and pub.accession == ACCESSION
    assert pub.version_uri == str(vdir) and pub.fingerprint == "f" * 64
    files = listing(vdir)
    assert "manifest.json" in files and "ro-crate-metadata.json" in files and "qc/report.json" in files
    assert "originals/images/cells.tif" in files and "originals/notes/readme.txt" in files
    assert "images/cells.ome.zarr/zarr.json" in files
    assert "images/cells.ome.zarr/0/zarr.json" in files and "images/cells.ome.zarr/1/zarr.json" in files
    assert [f for f in files if f.startswith("images/cells.ome.zarr/0/c")]  # chunks were published
    assert not [f for f in files if ".part-" in f]
    # originals are byte-identical, the image store is identical object by object
    for rec in inp.files:
        assert (vdir / "originals" / rec.path).read_bytes() == Path(rec.staged_path).read_bytes()
    store = Path(inp.reports[0].store)
    for rel in listing(store):
        assert (vdir / "images" / "cells.ome.zarr" / rel).read_bytes() == (store / rel).read_bytes()
    assert len([f for f in files if f.startswith("images/")]) == len(listing(store))
    # and the published store opens as Zarr v3 with the same pixels
    src = zarr.open_group(str(store), mode="r")
    pub_group = zarr.open_group(str(vdir / "images" / "cells.ome.zarr"), mode="r", zarr_format=3)
    np.testing.assert_array_equal(pub_group["0"][...], src["0"][...])
    assert pub_group.attrs["ome"]["version"] == "0.5"


def test_manifest_lists_every_file_with_size_and_sha256(tmp_path):
    inp = Inputs(tmp_path)
    inp.publish()
    vdir = inp.acc() / "v1"
    manifest = json.loads((vdir / "manifest.json").read_text())

    listed = {f["path"]: f for f in manifest["files"]}
    assert len(listed) == len(manifest["files"])
    assert sorted(listed) == [f for f in listing(vdir) if f != "manifest.json"]
    for rel, entry in listed.items():
        data = (vdir / rel).read_bytes()
        assert entry["size"] == len(data), rel
        assert entry["sha256"] == sha(data), rel
    assert [f["path"] for f in manifest["files"]] == sorted(listed)

    assert manifest["accession"] == ACCESSION and manifest["version"] == 1
    assert manifest["fingerprint"] == "f" * 64
    assert manifest["title"] == inp.submission.doc.title
    assert manifest["release_date"] == "2025-01-01" and manifest["embargoed"] is False
    [img] = manifest["images"]
    assert img["image_id"] == "cells" and img["status"] == "published"
    assert img["path"] == "images/cells.ome.zarr" and (vdir / img["path"] / "zarr.json").is_file()


def test_qc_report_and_crate_are_written(tmp_path):
    inp = Inputs(tmp_path)
    inp.publish()
    vdir = inp.acc() / "v1"

    qc = json.loads((vdir / "qc" / "report.json").read_text())
    assert qc["suite"] == "qc/default.json" and qc["warnings"] == 1 and qc["errors"] == 0
    assert qc["images"] == inp.qc.rows and qc["findings"][0]["message"] == "no pixel size"

    crate = json.loads((vdir / "ro-crate-metadata.json").read_text())
    graph = {node["@id"]: node for node in crate["@graph"]}
    root = graph["./"]
    assert root["identifier"] == f"{ACCESSION}/v1" and root["name"] == inp.submission.doc.title
    manifest = json.loads((vdir / "manifest.json").read_text())
    store_objects = []
    for entry in manifest["files"]:
        if entry["path"] == "ro-crate-metadata.json":
            continue
        if entry["path"].startswith("images/cells.ome.zarr/"):  # objects of a store: the store is the entity
            assert entry["path"] not in graph
            store_objects.append((entry["path"][len("images/cells.ome.zarr/"):], entry["sha256"]))
            continue
        node = graph[entry["path"]]
        assert (node["contentSize"], node["sha256"]) == (entry["size"], entry["sha256"])
    store = graph["images/cells.ome.zarr/"]
    assert store["@type"] == "Dataset" and store["zarrchive:treeDigest"] == inp.reports[0].store_sha256
    assert store["zarrchive:objects"] == len(store_objects)
    actions = [n for n in crate["@graph"] if n.get("@type") == "CreateAction"]
    assert len(actions) == len(inp.lineage) + 1  # every stage's record, and publish itself
    publish = next(a for a in actions if a["zarrchive:stage"] == "publish")
    assert {r["@id"] for r in publish["result"]} == {"qc/report.json", "qc/index.html", "index.html"}
    # lineage points at the published objects, not at staging
    fetch = next(a for a in actions if a["zarrchive:stage"] == "fetch")
    assert {r["@id"] for r in fetch["result"]} == {f"originals/{f.path}" for f in inp.files}
    compress = next(a for a in actions if a["zarrchive:stage"] == "compress")
    assert compress["result"] == [{"@id": "images/cells.ome.zarr/"}]


def test_versions_json_lists_the_versions(tmp_path):
    inp = Inputs(tmp_path)
    inp.publish("a" * 64)
    inp.publish("b" * 64)
    document = json.loads((inp.acc() / "versions.json").read_text())
    assert (document["format_version"], document["accession"]) == (3, ACCESSION)
    index = document["versions"]
    assert [(v["version"], v["fingerprint"]) for v in index] == [(1, "a" * 64), (2, "b" * 64)]
    for v in index:
        manifest = json.loads((inp.acc() / f"v{v['version']}" / "manifest.json").read_text())
        assert v["files"] == len(manifest["files"])
        assert v["bytes"] == sum(f["size"] for f in manifest["files"])
        assert v["created"] == manifest["created"]
    assert [m["version"] for m in published_versions(inp.archive, ACCESSION)] == [1, 2]


# ---------------------------------------------------------------- idempotence and new versions


def test_same_fingerprint_is_unchanged_and_makes_no_new_version(tmp_path):
    inp = Inputs(tmp_path)
    first = inp.publish()
    manifest_before = (inp.acc() / "v1" / "manifest.json").read_bytes()

    again = inp.publish()

    assert again.status == "unchanged" and again.version == 1
    assert again.version_uri == first.version_uri and again.fingerprint == first.fingerprint
    assert again.reasons and "unchanged" in again.reasons[0]
    assert [i.status for i in again.images] == ["unchanged"]
    assert sorted(p.name for p in inp.acc().iterdir() if p.name.startswith("v") and p.is_dir()) == ["v1"]
    assert (inp.acc() / "v1" / "manifest.json").read_bytes() == manifest_before
    assert [m["version"] for m in published_versions(inp.archive, ACCESSION)] == [1]


def test_new_fingerprint_makes_v2_and_keeps_v1(tmp_path):
    inp = Inputs(tmp_path)
    inp.publish("a" * 64)
    v1_files = {rel: (inp.acc() / "v1" / rel).read_bytes() for rel in listing(inp.acc() / "v1")}

    pub = inp.publish("b" * 64)

    assert pub.status == "published" and pub.version == 2
    assert pub.version_uri == str(inp.acc() / "v2")
    manifest = json.loads((inp.acc() / "v2" / "manifest.json").read_text())
    assert manifest["version"] == 2 and manifest["fingerprint"] == "b" * 64
    assert {rel: (inp.acc() / "v1" / rel).read_bytes() for rel in listing(inp.acc() / "v1")} == v1_files
    # going back to an older input is a new version too: only the latest counts as unchanged
    assert find_unchanged(inp.archive, ACCESSION, "a" * 64) is None
    assert find_unchanged(inp.archive, ACCESSION, "b" * 64)["version"] == 2
    assert inp.publish("a" * 64).version == 3


def test_crashed_version_is_ignored_and_replaced(tmp_path):
    inp = Inputs(tmp_path)
    inp.publish("a" * 64)
    crashed = inp.acc() / "v2"
    (crashed / "originals" / "images").mkdir(parents=True)
    (crashed / "originals" / "images" / "cells.tif").write_bytes(b"half a fi")
    (crashed / "leftover-from-crash.bin").write_bytes(b"junk")
    (crashed / "qc").mkdir()
    (crashed / "qc" / "report.json").write_text("{")

    assert [m["version"] for m in published_versions(inp.archive, ACCESSION)] == [1]
    assert find_unchanged(inp.archive, ACCESSION, "a" * 64)["version"] == 1

    pub = inp.publish("b" * 64)

    assert pub.version == 2 and pub.status == "published"
    assert not (crashed / "leftover-from-crash.bin").exists()
    assert not (crashed / "originals").exists()  # the half-written copy is gone; the unchanged original is v1's
    manifest = json.loads((crashed / "manifest.json").read_text())
    assert "../v1/originals/images/cells.tif" in {f["path"] for f in manifest["files"]}
    assert (crashed / "../v1/originals/images/cells.tif").read_bytes() == Path(inp.files[0].staged_path).read_bytes()
    assert sorted(f["path"] for f in manifest["files"] if not f["path"].startswith("../")) == [
        f for f in listing(crashed) if f != "manifest.json"]
    for entry in manifest["files"]:
        assert entry["sha256"] == sha((crashed / entry["path"]).read_bytes())
    assert [v["version"] for v in json.loads((inp.acc() / "versions.json").read_text())["versions"]] == [1, 2]


def test_crashed_first_version_is_replaced(tmp_path):
    inp = Inputs(tmp_path)
    (inp.acc() / "v1").mkdir(parents=True)
    (inp.acc() / "v1" / "junk").write_bytes(b"x")
    (inp.acc() / "accession.json").write_text("{}")
    assert published_versions(inp.archive, ACCESSION) == []
    assert find_unchanged(inp.archive, ACCESSION, "f" * 64) is None
    pub = inp.publish()
    assert pub.version == 1 and not (inp.acc() / "v1" / "junk").exists()
    assert (inp.acc() / "accession.json").read_text() == "{}"


def test_non_version_entries_are_not_versions(tmp_path):
    inp = Inputs(tmp_path)
    inp.publish()
    (inp.acc() / "v1-old").mkdir()
    (inp.acc() / "v1-old" / "manifest.json").write_text('{"version": 99, "fingerprint": "x"}')
    (inp.acc() / "vX").mkdir()
    assert [m["version"] for m in published_versions(inp.archive, ACCESSION)] == [1]
    assert published_versions(inp.archive, "ZA999999") == []


def test_staged_original_changed_since_fetch_is_refused(tmp_path):
    inp = Inputs(tmp_path)
    Path(inp.files[1].staged_path).write_bytes(b"tampered")
    with pytest.raises(Exception, match="notes/readme.txt"):
        inp.publish()
    assert published_versions(inp.archive, ACCESSION) == []
    assert not (inp.acc() / "v1" / "manifest.json").exists()


# ---------------------------------------------------------------- fingerprint


def test_fingerprint_depends_on_inputs_and_settings(tmp_path):
    inp = Inputs(tmp_path)
    settings = load_settings()
    base = version_fingerprint(inp.submission, inp.files, settings)
    assert base == version_fingerprint(inp.submission, list(reversed(inp.files)), settings)
    assert base == version_fingerprint(inp.submission, inp.files, load_settings())
    # the archive's accession scheme and the staging folder are not part of what a version is made of
    assert base == version_fingerprint(inp.submission, inp.files,
                                       load_settings(overrides={"staging": {"keep": True},
                                                                "fetch": {"retries": 0}}))
    changed_file = inp.files[0].model_copy(update={"sha256": sha(b"other bytes")})
    assert base != version_fingerprint(inp.submission, [changed_file, inp.files[1]], settings)
    other_doc = make_submission([f.path for f in inp.files], title="Another title of this submission")
    assert base != version_fingerprint(other_doc, inp.files, settings)
    assert base != version_fingerprint(inp.submission, inp.files, load_settings(overrides={"compress": {"clevel": 7}}))
    assert base != version_fingerprint(inp.submission, inp.files,
                                       load_settings(overrides={"publish": {"on_image_error": "skip_image"}}))


# ---------------------------------------------------------------- which images are published


def image(image_id: str, source_path: str) -> ImageRecord:
    return ImageRecord(
        image_id=image_id, conversion_id="c" * 16, source_path=source_path, source_sha256="0" * 64, series=0,
        series_name="", reader="bioio_tifffile", metadata_xml=f"/work/{image_id}.ome.xml", metadata_sha256="0" * 64,
        layout=SourceLayout(reader="bioio_tifffile", series=0, axes=("y", "x")),
        axes=(Axis(name="y", type="space"), Axis(name="x", type="space")), dtype="uint16",
        channel_names=("c0",), calibrated=True,
        levels=(Level(path="0", shape=(16, 20), chunks=(8, 8), scale=(1.0, 1.0), translation=(0.0, 0.0)),),
    )


IMAGES = [image("a", "a.tif"), image("b", "b.tif")]
CONVERT_FAILED = Failure(stage="convert", source_path="bad.tif", error="no reader can open it")
BLOCK = PublishSettings(on_image_error="block_submission")
SKIP = PublishSettings(on_image_error="skip_image")


def by_id(outcomes: list[ImageOutcome]) -> dict[str, ImageOutcome]:
    return {o.image_id: o for o in outcomes}


def test_all_good_images_are_published_under_either_policy():
    qc = qc_report([Finding(severity="warning", check="calibrated", message="no pixel size", image_id="a")])
    for policy in (BLOCK, SKIP):
        outcomes = by_id(image_outcomes(IMAGES, [], qc, policy))
        assert {k: o.status for k, o in outcomes.items()} == {"a": "published", "b": "published"}
        assert outcomes["a"].qc == "warning" and outcomes["b"].qc == "ok"
        assert blocking_reasons(list(outcomes.values()), qc) == []


def test_each_image_gets_its_own_findings_worst_first_and_the_submission_s_go_to_none():
    """Findings are grouped by image once (a run of 10,000 images): an image's status is its worst severity, its
    errors are joined in the order QC found them, and the submission's own findings belong to no image."""
    qc = qc_report([Finding(severity="warning", check="calibrated", message="no pixel size", image_id="b"),
                    Finding(severity="error", check="shape", message="image is empty", image_id="b"),
                    Finding(severity="error", check="title", message="no title"),
                    Finding(severity="error", check="range", message="all pixels saturated", image_id="b"),
                    Finding(severity="warning", check="size", message="small", image_id="a")])
    outcomes = by_id(image_outcomes(IMAGES, [], qc, SKIP))
    assert (outcomes["a"].status, outcomes["a"].qc, outcomes["a"].error) == ("published", "warning", None)
    assert (outcomes["b"].status, outcomes["b"].qc) == ("blocked", "error")
    assert outcomes["b"].error == "qc: image is empty; qc: all pixels saturated"
    assert [qc.image_status(i) for i in ("a", "b", "c")] == ["warning", "error", "ok"]
    assert {k: [f.check for f in v] for k, v in qc.by_image().items()} == {
        "b": ["calibrated", "shape", "range"], None: ["title"], "a": ["size"]}


def test_block_submission_blocks_everything_when_one_image_failed():
    outcomes = image_outcomes(IMAGES, [CONVERT_FAILED], qc_report(), BLOCK)
    status = {o.image_id: o.status for o in outcomes}
    assert status == {"bad": "failed", "a": "blocked", "b": "blocked"}
    failed = by_id(outcomes)["bad"]
    assert failed.source_path == "bad.tif" and "convert" in failed.error and "no reader" in failed.error
    reasons = blocking_reasons(outcomes, qc_report())
    assert any("bad.tif" in r and "no reader" in r for r in reasons)
    assert any("block_submission" in r for r in reasons)


def test_skip_image_publishes_the_rest():
    outcomes = image_outcomes(IMAGES, [CONVERT_FAILED], qc_report(), SKIP)
    assert {o.image_id: o.status for o in outcomes} == {"bad": "failed", "a": "published", "b": "published"}
    assert blocking_reasons(outcomes, qc_report()) == []


def test_qc_error_blocks_the_image_and_under_block_submission_all():
    qc = qc_report([Finding(severity="error", check="shape", message="image is empty", image_id="b"),
                    Finding(severity="warning", check="calibrated", message="no pixel size", image_id="a")])
    skip = by_id(image_outcomes(IMAGES, [], qc, SKIP))
    assert (skip["a"].status, skip["a"].qc) == ("published", "warning")
    assert (skip["b"].status, skip["b"].qc) == ("blocked", "error") and "image is empty" in skip["b"].error
    assert blocking_reasons(list(skip.values()), qc) == []

    block = image_outcomes(IMAGES, [], qc, BLOCK)
    assert {o.image_id: o.status for o in block} == {"a": "blocked", "b": "blocked"}
    reasons = blocking_reasons(block, qc)
    assert any("b.tif" in r and "image is empty" in r for r in reasons)


def test_nothing_publishable_under_skip_image_gives_reasons():
    qc = qc_report([Finding(severity="error", check="suite", message="metadata table invalid")])
    outcomes = image_outcomes([], [CONVERT_FAILED, Failure(stage="fetch", source_path="x.tif", error="sha256 is ...")],
                              qc, SKIP)
    assert [o.status for o in outcomes] == ["failed", "failed"]
    assert by_id(outcomes)["x"].source_path == "x.tif"  # image id derived from the path
    reasons = blocking_reasons(outcomes, qc)
    assert any(r.startswith("bad.tif:") for r in reasons) and any(r.startswith("x.tif:") for r in reasons)
    assert "qc: metadata table invalid" in reasons
    assert blocking_reasons([], None) == ["the submission lists no image that could be converted"]


def test_no_qc_report_means_not_run():
    outcomes = image_outcomes(IMAGES, [], None, BLOCK)
    assert [(o.status, o.qc) for o in outcomes] == [("published", "not run"), ("published", "not run")]


def test_publish_records_outcomes_of_a_skip_image_version(tmp_path):
    inp = Inputs(tmp_path)
    outcomes = [outcome("cells", "images/cells.tif"),
                ImageOutcome(image_id="bad", source_path="bad.tif", status="failed", error="convert: no reader")]
    pub = inp.publish(outcomes=outcomes)
    manifest = json.loads((inp.acc() / "v1" / "manifest.json").read_text())
    images = {i["image_id"]: i for i in manifest["images"]}
    assert images["cells"]["path"] == "images/cells.ome.zarr" and images["cells"]["status"] == "published"
    assert images["bad"]["status"] == "failed" and images["bad"]["path"] is None
    assert {o.image_id: o.path for o in pub.images} == {"cells": "images/cells.ome.zarr", "bad": None}


def test_a_store_changed_after_compression_is_not_published(tmp_path):
    from zarrchive.errors import TransientError

    inp = Inputs(tmp_path)
    store = Path(inp.reports[0].store)
    chunk = next(p for p in (store / "0").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes() + b"tampered")
    with pytest.raises(TransientError, match="changed since it was compressed"):
        inp.publish()
    assert not list(inp.acc().rglob("manifest.json"))


def test_an_image_that_failed_a_later_stage_is_reported_once_as_failed():
    compress_failed = Failure(stage="compress", source_path="b.tif", image_id="b", series=0, error="worker died")
    outcomes = image_outcomes(IMAGES, [compress_failed], qc_report(), SKIP)
    assert sorted((o.image_id, o.status) for o in outcomes) == [("a", "published"), ("b", "failed")]
    assert by_id(outcomes)["b"].error == "compress: worker died"


def test_with_a_public_address_the_landing_page_links_there_and_offers_the_viewer(tmp_path):
    inp = Inputs(tmp_path)
    settings = PublishSettings(on_image_error="block_submission", public_base_url="https://archive.example.org/za/",
                               viewer_url="https://viewer.example.org/?source={url}")
    pub = inp.publish(settings=settings)
    assert pub.url == f"https://archive.example.org/za/{ACCESSION}/v1/index.html"
    page = (inp.acc() / "v1" / "index.html").read_text()
    store = f"https://archive.example.org/za/{ACCESSION}/v1/images/cells.ome.zarr"
    assert f'BioImage(&quot;{store}&quot;)' in page and f"napari --plugin napari-ome-zarr {store}" in page
    assert f"href='https://viewer.example.org/?source={store}'" in page


def test_an_embargoed_version_and_an_archive_without_address_link_relatively(tmp_path):
    inp = Inputs(tmp_path)
    page = (inp.acc() / f"v{inp.publish().version}" / "index.html").read_text()
    assert "BioImage(&quot;images/cells.ome.zarr&quot;)" in page and "viewer" not in page
    assert "https://" not in page.split("<h2>Files as submitted")[0].split("<h2>Images")[1]


def test_a_viewer_template_must_name_the_url_and_be_a_web_address():
    for bad in ("https://viewer.example.org/", "javascript:alert({url})", "file:///x?{url}"):
        with pytest.raises(ValueError):
            PublishSettings(on_image_error="block_submission", viewer_url=bad)


def test_thumbnails_are_made_in_order_grey_or_coloured_and_a_failure_is_kept_with_its_reason(tmp_path):
    """Thumbnails are made a few at a time: each comes back in the order of its store; a single channel is a greyscale
    PNG, channels in colour an RGB one; a store that cannot be read gives its error (the image goes without)."""
    import imagecodecs

    from builders import ome_zarr_input
    from zarrchive.tasks.publish import _thumbnails

    rng = np.random.default_rng(3)
    grey = ome_zarr_input(tmp_path / "grey.ome.zarr", rng.integers(0, 4000, (1, 64, 48), dtype="uint16"), "CYX")
    colour = ome_zarr_input(tmp_path / "two.ome.zarr", rng.integers(0, 4000, (2, 64, 48), dtype="uint16"), "CYX",
                            channels=["DAPI", "GFP"])
    made = list(_thumbnails([str(grey), str(tmp_path / "missing.ome.zarr"), str(colour), str(grey)], ahead=3))
    assert len(made) == 4  # (in windows of three: the fourth made after the first three were taken)
    assert isinstance(made[1], Exception)
    first, second, again = (imagecodecs.png_decode(made[i]) for i in (0, 2, 3))
    assert first.shape == (64, 48) and first.std() > 0 and np.array_equal(first, again)
    assert second.shape == (64, 48, 3) and not np.array_equal(second[..., 0], second[..., 1])


def test_the_picture_the_compress_pass_made_is_published_as_it_is_and_a_missing_one_is_made_again(tmp_path,
                                                                                                 monkeypatch):
    """A thumbnail the compress pass wrote beside its store is copied into the version as a store's objects are
    (the manifest has its sha256); when it is gone (the work area emptied since), publish makes it from the
    store, as it did for every image before."""
    import os

    from zarrchive.tasks import publish as publish_mod

    inp = Inputs(tmp_path)
    picture = Path(inp.reports[0].store + ".png")
    picture.write_bytes(b"\x89PNG made by the pass")
    monkeypatch.setattr(publish_mod, "thumbnail_png", lambda store: b"\x89PNG made again from " + store.encode())
    inp.publish(reports=[inp.reports[0].model_copy(update={"thumbnail": str(picture)})])
    published = inp.acc() / "v1" / "thumbnails" / "cells.png"
    assert published.read_bytes() == b"\x89PNG made by the pass" and not os.path.samefile(published, picture)
    manifest = json.loads((inp.acc() / "v1" / "manifest.json").read_text())
    assert {"path": "thumbnails/cells.png", "size": published.stat().st_size,
            "sha256": sha(b"\x89PNG made by the pass")} in manifest["files"]

    again = Inputs(tmp_path / "again")
    again.publish(reports=[again.reports[0].model_copy(update={"thumbnail": str(picture) + ".gone"})])
    remade = again.acc() / "v1" / "thumbnails" / "cells.png"
    assert remade.read_bytes() == b"\x89PNG made again from " + again.reports[0].store.encode()


# ---------------------------------------------------------------- copying in threads


def _manifest_files(archive: str) -> list[dict]:
    return json.loads((Path(archive) / ACCESSION / "v1" / "manifest.json").read_text())["files"]


def _copies(monkeypatch) -> list[tuple[str, str]]:
    """Record each copy into the version: (its destination, the thread that made it)."""
    import threading

    from zarrchive.tasks import publish as publish_mod

    made, upload = [], publish_mod._upload

    def recorded(fs, src, dst, checked, link=False):
        made.append((dst, threading.current_thread().name))
        return upload(fs, src, dst, checked, link)

    monkeypatch.setattr(publish_mod, "_upload", recorded)
    return made


def _with_large_originals(inp: Inputs, count: int = 6) -> Inputs:
    """``inp`` with ``count`` originals of 1 MiB or more (copied in publish's threads; small ones are copied one
    after another in the calling thread)."""
    from zarrchive.archive.storage import SMALL_COPY

    inp.files += [stage_file(Path(inp.archive).parent / "staging", f"movies/m{i}.tif", bytes([i]) * (SMALL_COPY + i))
                  for i in range(count)]
    inp.submission = make_submission([f.path for f in inp.files])
    return inp


@pytest.mark.parametrize("link_originals", [True, False])
def test_the_run_s_staged_originals_are_linked_into_the_version_and_nothing_else(tmp_path, link_originals):
    """link_originals (the run's staging folder goes when it ends): each staged original becomes the version's file as
    a hard link (nothing written twice). A store's objects are always copies: the work area keeps them for later
    runs, and a published object damaged later must not damage what a later version is built from. The pages,
    thumbnails and documents are written. Once the staging folder is gone the version audits whole."""
    import os
    import shutil

    from zarrchive.archive.fixity import audit

    inp = _with_large_originals(Inputs(tmp_path), 2)
    inp.publish(settings=PublishSettings(on_image_error="block_submission"), link_originals=link_originals)
    vdir = inp.acc() / "v1"
    store = Path(inp.reports[0].store)
    originals = {f"originals/{f.path}": Path(f.staged_path) for f in inp.files}
    objects = {f"images/cells.ome.zarr/{rel}": store / rel for rel in listing(store)}
    files = [f["path"] for f in _manifest_files(inp.archive)]
    assert set(originals) | set(objects) < set(files) and len(objects) > 10
    for path in files:
        linked = os.path.samefile(vdir / path, {**originals, **objects}.get(path, vdir / "manifest.json"))
        assert linked is (link_originals and path in originals), path
        assert os.stat(vdir / path).st_nlink == (2 if linked else 1), path
    shutil.rmtree(tmp_path / "staging")
    result = audit(inp.archive)
    assert result.problems == [] and result.hashed == len(files)


def test_a_published_chunk_damaged_later_leaves_the_work_area_s_store_whole(tmp_path):
    """Bit rot in a published chunk (written in place) reaches nothing of the work area's store, even with the
    originals linked: a later version can store the image again from there."""
    inp = _with_large_originals(Inputs(tmp_path), 1)
    store = Path(inp.reports[0].store)
    before = {p: p.read_bytes() for p in store.rglob("*") if p.is_file()}
    inp.publish(settings=PublishSettings(on_image_error="block_submission"), link_originals=True)
    victims = list((inp.acc() / "v1" / "images").rglob("c/*/*"))
    assert victims
    for victim in victims:
        with open(victim, "r+b") as fh:  # in place: the same file, as rot or a careless tool would change it
            fh.write(b"\xff" * 4)
    assert {p: p.read_bytes() for p in store.rglob("*") if p.is_file()} == before


def test_a_version_copied_in_threads_is_the_version_copied_in_one(tmp_path, monkeypatch):
    """publish.threads copies at once: the same objects, sizes, sha256 and manifest as one at a time."""
    import threading

    made = _copies(monkeypatch)
    one, many = _with_large_originals(Inputs(tmp_path / "one")), _with_large_originals(Inputs(tmp_path / "many"))
    here = threading.current_thread().name
    one.publish(settings=PublishSettings(on_image_error="block_submission", threads=1))
    assert {thread for dst, thread in made if "movies/" in dst} == {"publish_0"}
    assert {thread for dst, thread in made if "movies/" not in dst} == {here}
    del made[:]
    many.publish(settings=PublishSettings(on_image_error="block_submission", threads=8))
    assert len({thread for dst, thread in made if "movies/" in dst}) > 1

    def objects(archive):  # (the crate names when and where its run was)
        return [f for f in _manifest_files(archive) if f["path"] != "ro-crate-metadata.json"]

    assert objects(one.archive) == objects(many.archive) and len(objects(one.archive)) > 10
    assert listing(one.acc()) == listing(many.acc())


@pytest.mark.parametrize("which", ["a large original, in a thread", "a store's object, in the calling thread"])
def test_a_copy_that_fails_fails_the_version_naming_it_and_nothing_is_committed(tmp_path, monkeypatch, which):
    from zarrchive.tasks import publish as publish_mod

    upload = publish_mod._upload
    failing_one = "movies/m3.tif" if which.startswith("a large") else "0/zarr.json"

    def failing(fs, src, dst, checked, link=False):
        if dst.endswith(failing_one):
            raise OSError(f"{dst}: No space left on device")
        return upload(fs, src, dst, checked, link)

    monkeypatch.setattr(publish_mod, "_upload", failing)
    inp = _with_large_originals(Inputs(tmp_path))
    before = {p: p.read_bytes() for p in (tmp_path / "staging").rglob("*") if p.is_file()}
    with pytest.raises(OSError, match=f"{failing_one}: No space left"):
        inp.publish(settings=PublishSettings(on_image_error="block_submission", threads=4), link_originals=True)
    assert published_versions(inp.archive, ACCESSION) == []
    assert not (inp.acc() / "v1").exists() or not listing(inp.acc() / "v1")
    # what was cleared were the version's names: the run's own files (linked into it before) are all still there
    assert {p: p.read_bytes() for p in (tmp_path / "staging").rglob("*") if p.is_file()} == before


def test_a_lease_lost_while_copying_stops_the_copies_and_commits_nothing(tmp_path, monkeypatch):
    """The lease is checked before each copy is begun, in the calling thread: once it is lost no copy is begun,
    those under way end, and nothing is committed."""
    from zarrchive.archive import lease

    made = _copies(monkeypatch)
    checks = []

    def check(self):
        checks.append(len(made))
        if sum("movies/" in dst for dst, _thread in made) >= 3:  # lost while the large originals are copied
            raise lease.LeaseLost("the publishing lease ran out")

    monkeypatch.setattr(lease.Lease, "check", check)
    inp = _with_large_originals(Inputs(tmp_path), 20)
    with pytest.raises(lease.LeaseLost):
        inp.publish(settings=PublishSettings(on_image_error="block_submission", threads=2))
    assert {thread for dst, thread in made if "movies/" in dst} <= {"publish_0", "publish_1"}
    assert len(made) < len(checks)  # each copy begun after a check that passed, none after the one that failed
    assert published_versions(inp.archive, ACCESSION) == []
    assert not (inp.acc() / "v1").exists() or not listing(inp.acc() / "v1")


def test_every_object_is_read_back_on_a_disk_as_it_is_copied_or_after(tmp_path, monkeypatch, s3_endpoint):
    """On a local disk the stores' objects and the originals are read back as they are copied (and compared with
    the digests compress and fetch took); a thumbnail (no digest of its own) and the documents are read back at the
    end. On an object store every object is read back at the end."""
    from zarrchive.tasks import publish as publish_mod

    reread, stream = [], publish_mod.sha256_stream

    def reading(fs, path, *args):
        reread.append(path)
        return stream(fs, path, *args)

    monkeypatch.setattr(publish_mod, "sha256_stream", reading)
    made = _copies(monkeypatch)
    local = _with_large_originals(Inputs(tmp_path / "disk"), 2)
    picture = Path(local.reports[0].store + ".png")
    picture.write_bytes(b"\x89PNG made by the pass")
    local.publish(reports=[local.reports[0].model_copy(update={"thumbnail": str(picture)})],
                  settings=PublishSettings(on_image_error="block_submission", threads=4))
    vdir = local.acc() / "v1"
    copied = {dst for dst, _thread in made}
    assert str(vdir / "thumbnails" / "cells.png") in copied & set(reread)
    assert set(reread) == {str(vdir / f["path"]) for f in _manifest_files(local.archive)} - copied | {
        str(vdir / "thumbnails" / "cells.png")}

    del made[:], reread[:]
    remote = Inputs(tmp_path / "s3")
    remote.archive = f"s3://{s3_endpoint()}/archive"
    pub = remote.publish(settings=PublishSettings(on_image_error="block_submission", threads=4))
    assert pub.status == "published"
    assert {dst for dst, _thread in made} <= set(reread) and len(made) > 10
