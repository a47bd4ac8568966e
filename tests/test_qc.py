"""QC, without Prefect: facts computed on the cluster, the Great Expectations suite from configs/, the policy."""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import numpy as np
import pytest
import zarr
from builders import ome_tiff, plain_tiff, random_image
from zarrchive.tasks.compress import compress_image
from zarrchive.tasks.convert import convert_file
from zarrchive.tasks.pyramid import build_pyramid
from zarrchive.tasks.qc import check_metadata, choose_modality, load_suite

from zarrchive.archive.landing import render_qc_page
from zarrchive.config import QCSettings
from zarrchive.records import FileEntry, FileRecord, Finding, ImagingMethod, PixelSize, Submission, SubmissionDoc

LIGHT = ImagingMethod(name="confocal microscopy", fbbi_id="FBbi:00000251")


def make_submission(method: ImagingMethod | None = LIGHT, findings: list[Finding] = ()) -> Submission:
    doc = SubmissionDoc(title="QC tests of microscopy images", description="x", license="CC-BY-4.0",
                        release_date=dt.date(2026, 1, 1), authors=[{"name": "A"}], files=[{"path": "x.tif"}],
                        imaging_method=method)
    return Submission(source="/landing/x", doc=doc, doc_sha256="0" * 64, accession="ZA000001",
                      findings=list(findings))


def staged_image(tmp_path, settings, scheduler, path, rel, entry=None):
    rec = FileRecord(path=rel, source_uri=str(path), staged_path=str(path), size=path.stat().st_size,
                     sha256=hashlib.sha256(path.read_bytes()).hexdigest(), kind="image")
    [image] = convert_file(rec, entry, str(tmp_path / "s"), settings.convert)
    image = build_pyramid(image, settings.pyramid)
    return image, compress_image(image, rec, str(tmp_path / "s"), settings.compress, scheduler)


def run(images_reports, settings, scheduler, qc_settings=None, submission=None):
    images = [i for i, _ in images_reports]
    reports = [r for _, r in images_reports]
    return check_metadata(submission or make_submission(), images, reports, qc_settings or settings.qc, scheduler)


@pytest.fixture()
def good(tmp_path, settings, scheduler):
    data = random_image((2, 1, 20, 20)) // 2  # no saturated pixel
    path = ome_tiff(tmp_path / "good.ome.tif", data, "CZYX", {"x": 0.1, "y": 0.1}, ["a", "b"])
    return staged_image(tmp_path, settings, scheduler, path, "good.ome.tif"), data


def test_a_good_image_passes_with_facts_computed_from_the_published_pixels(good, settings, scheduler):
    (image, report), data = good
    qc = run([(image, report)], settings, scheduler)
    assert qc.findings == [] and qc.image_status(image.image_id) == "ok" and qc.modality == "light"
    [row] = qc.rows
    assert row["ngff_valid"] and row["level0_checksum_matched"] and row["pixel_size_x_um"] == pytest.approx(0.1)
    assert row["dtype"] == "uint16" and row["source_format"] == "bioio_ome_tiff"
    assert (row["min"], row["max"]) == (float(data.min()), float(data.max()))
    for channel in qc.channels:
        plane = data[channel["channel"]]
        assert channel["mean"] == pytest.approx(plane.mean())
        assert channel["zero_fraction"] == pytest.approx((plane == 0).mean())
        assert channel["saturated_fraction"] == 0


def test_missing_calibration_is_a_warning_that_tells_how_to_fix_it(tmp_path, settings, scheduler):
    path = plain_tiff(tmp_path / "bare.tif", random_image((20, 20), "uint8") // 2)
    qc = run([staged_image(tmp_path, settings, scheduler, path, "bare.tif")], settings, scheduler)
    [finding] = qc.findings
    assert (finding.severity, finding.check, finding.image_id) == ("warning", "physical_calibration", "bare")
    assert "pixel_size" in finding.message and "submission.yaml" in finding.message
    assert qc.errors == []


@pytest.mark.parametrize("names, check", [(["one", "two", "three"], "channel_count_matches_names"),
                                          (["same", "same"], "channel_names_unique"),
                                          (["", "b"], "channel_names_nonempty")])
def test_channel_name_problems_are_errors(tmp_path, settings, scheduler, names, check):
    path = ome_tiff(tmp_path / "c.ome.tif", random_image((2, 1, 20, 20)) // 2, "CZYX", {"x": 0.1, "y": 0.1})
    pair = staged_image(tmp_path, settings, scheduler, path, "c.ome.tif", FileEntry(path="c.ome.tif",
                                                                                      channel_names=names))
    qc = run([pair], settings, scheduler)
    assert [(f.severity, f.check, f.image_id) for f in qc.findings] == [("error", check, "c")]


def test_an_all_zero_image_is_an_error(tmp_path, settings, scheduler):
    path = ome_tiff(tmp_path / "z.ome.tif", np.zeros((1, 1, 16, 16), np.uint16), "CZYX", {"x": 0.1, "y": 0.1})
    qc = run([staged_image(tmp_path, settings, scheduler, path, "z.ome.tif")], settings, scheduler)
    assert [(f.severity, f.check) for f in qc.findings] == [("error", "not_all_zero")]


def test_saturation_is_a_warning_naming_the_channel_and_policy_can_make_it_an_error(tmp_path, settings, scheduler):
    data = random_image((2, 1, 20, 20)) // 2
    data[1, 0, :10] = 65535  # half of channel 'GFP' saturated
    path = ome_tiff(tmp_path / "s.ome.tif", data, "CZYX", {"x": 0.1, "y": 0.1}, ["DAPI", "GFP"])
    pair = staged_image(tmp_path, settings, scheduler, path, "s.ome.tif")
    qc = run([pair], settings, scheduler)
    [finding] = qc.findings
    assert (finding.severity, finding.check, finding.image_id) == ("warning", "saturation", "s")
    assert finding.message.startswith("channel GFP: 0.5 of the pixels are saturated")
    strict = settings.qc.model_copy(update={"severity": {"saturation": "error"}})
    assert [f.severity for f in run([pair], settings, scheduler, strict).findings] == ["error"]


def test_pixel_sizes_are_checked_against_the_modality(tmp_path, settings, scheduler):
    path = ome_tiff(tmp_path / "em.ome.tif", random_image((1, 1, 16, 16)) // 2, "CZYX", {"x": 2.0, "y": 2.0},
                    unit="nm")
    pair = staged_image(tmp_path, settings, scheduler, path, "em.ome.tif")
    light = run([pair], settings, scheduler)
    assert {(f.severity, f.check) for f in light.findings} == {("error", "pixel_size_plausible")}
    assert "0.002 micrometer" in light.findings[0].message
    em = make_submission(ImagingMethod(name="serial block-face scanning electron microscopy"))
    assert run([pair], settings, scheduler, submission=em).findings == []
    assert run([pair], settings, scheduler, settings.qc.model_copy(update={"modality": "electron"})).findings == []


def test_modality_is_chosen_from_the_imaging_method(settings):
    auto = settings.qc
    assert choose_modality(auto, LIGHT) == "light"
    assert choose_modality(auto, ImagingMethod(name="widefield fluorescence")) == "light"
    assert choose_modality(auto, ImagingMethod(name="cryo-ET of vitrified cells")) == "electron"
    assert choose_modality(auto, ImagingMethod(name="TEM")) == "electron"
    assert choose_modality(auto, ImagingMethod(name="mass spectrometry imaging")) is None
    assert choose_modality(auto, None) is None
    assert choose_modality(auto.model_copy(update={"modality": "none"}), LIGHT) is None
    suite, modality = load_suite(auto, ImagingMethod(name="TEM"))
    plausible = [e for e in suite["images"] if e["meta"]["check"] == "pixel_size_plausible"]
    assert modality == "electron" and plausible and all(e["kwargs"]["max_value"] == 1 for e in plausible)


def test_invalid_ngff_disallowed_dtype_and_checksum_mismatch_are_errors(good, tmp_path, settings, scheduler):
    (image, report), _ = good
    group = zarr.open_group(report.store, mode="r+")
    attrs = dict(group.attrs["ome"])
    attrs["multiscales"] = [{**attrs["multiscales"][0], "axes": []}]
    group.update_attributes({"ome": attrs})
    suite, _ = load_suite(settings.qc)
    for exp in suite["images"]:
        if exp["meta"]["check"] == "dtype_allowed":
            exp["kwargs"]["value_set"] = ["uint8"]
    custom = tmp_path / "suite.json"
    custom.write_text(json.dumps(suite))
    tampered = report.model_copy(update={"level0_sha256": "0" * 64})
    qc = run([(image, tampered)], settings, scheduler, QCSettings(suite=str(custom)))
    checks = {(f.severity, f.check) for f in qc.findings}
    assert checks == {("error", "ngff_valid"), ("error", "dtype_allowed"), ("error", "level0_checksum_matched")}
    assert qc.image_status(image.image_id) == "error"
    assert any("uint16" in f.message for f in qc.findings)


def test_conflicts_and_submission_warnings_join_the_findings(tmp_path, settings, scheduler):
    path = ome_tiff(tmp_path / "k.ome.tif", random_image((1, 1, 20, 20)) // 2, "CZYX", {"x": 0.1, "y": 0.1})
    pair = staged_image(tmp_path, settings, scheduler, path, "k.ome.tif",
                        FileEntry(path="k.ome.tif", pixel_size=PixelSize(x=0.3, y=0.1)))
    warning = Finding(severity="warning", check="recommended", field="organism", message="not given")
    qc = run([pair], settings, scheduler, submission=make_submission(findings=[warning]))
    assert [(f.severity, f.check) for f in qc.findings] == [("warning", "recommended"), ("warning", "metadata_conflict")]
    assert "pixel_size.x" in qc.findings[1].message and qc.findings[1].file == "k.ome.tif"
    page = render_qc_page(qc, "ZA000001 v1")
    assert "metadata_conflict" in page and "<table>" in page and "passed with warnings" in page


def test_a_lossy_compressed_source_is_reported_not_silently_inflated(tmp_path, settings, scheduler):
    import tifffile

    yy, xx = np.mgrid[0:64, 0:80]
    data = (100 + 80 * np.sin(yy / 5.0) * np.cos(xx / 7.0)).astype("uint8")
    path = tmp_path / "photo.tif"
    tifffile.imwrite(path, data, compression="jpeg")
    image, report = staged_image(tmp_path, settings, scheduler, path, "photo.tif")
    assert image.lossy_source == "JPEG"
    np.testing.assert_array_equal(zarr.open_array(f"{report.store}/0", mode="r")[0], tifffile.imread(path))
    qc = run([(image, report)], settings, scheduler)
    [finding] = [f for f in qc.findings if f.check == "lossy_source"]
    assert finding.severity == "warning" and finding.file == "photo.tif" and "JPEG-compressed" in finding.message
    lossless = tmp_path / "plain.tif"
    tifffile.imwrite(lossless, data, compression="zlib")
    assert staged_image(tmp_path, settings, scheduler, lossless, "plain.tif")[0].lossy_source is None


def test_a_store_s_facts_are_the_same_in_one_task_or_in_batches_and_a_broken_store_is_found_either_way(
        tmp_path, settings, scheduler, monkeypatch):
    """Small stores are validated and counted a few in a task (``passes.facts_of_stores``), a larger one in a task
    per batch of chunks beside the validator's: both give the same facts, each image its own, and an invalid store
    is found by both."""
    from zarrchive.tasks import qc

    data = random_image((2, 1, 40, 40)) // 2
    path = ome_tiff(tmp_path / "x.ome.tif", data, "CZYX", {"x": 0.1, "y": 0.1}, ["a", "b"])
    small = settings.model_copy(update={"convert": settings.convert.model_copy(update={"chunk_xy": 16})})
    image, report = staged_image(tmp_path, small, scheduler, path, "x.ome.tif")
    together = qc.store_facts(image, report, scheduler)
    monkeypatch.setattr(qc, "BATCH", 1)  # a task per chunk: 9 chunks of each of the two channels
    assert qc.store_facts(image, report, scheduler) == together
    assert together[2] == [] and together[0][1]["max"] == float(data[1].max())
    other_data = random_image((1, 1, 24, 24), seed=3) // 2  # another image: many stores' facts, each its own
    other = staged_image(tmp_path, settings, scheduler, ome_tiff(tmp_path / "y.ome.tif", other_data, "CZYX",
                                                                 {"x": 0.2, "y": 0.2}, ["c"]), "y.ome.tif")
    alone = qc.store_facts(*other, scheduler)
    monkeypatch.setattr(qc, "BATCH", 32)
    pairs = [(image, report), other] * 4  # eight small stores: two a task on the two-thread cluster
    assert qc.store_facts_of(pairs, scheduler) == [together, alone] * 4
    assert alone[0][0]["max"] == float(other_data.max()) and alone[2] == []
    root = zarr.open_group(report.store, mode="r+")
    root.attrs.put({"ome": {"version": "0.5", "multiscales": []}})  # no multiscale: not an image
    broken = qc.store_facts(image, report, scheduler)
    monkeypatch.setattr(qc, "BATCH", 32)
    assert broken[2] and broken[:2] == together[:2] and qc.store_facts(image, report, scheduler)[2] == broken[2]


@pytest.mark.parametrize("batch", [32, 1])  # small stores a few a task; a task per chunk beside the validator's
def test_a_store_damaged_since_it_was_written_fails_its_own_checks_and_the_others_are_checked(
        tmp_path, settings, scheduler, monkeypatch, batch):
    """A chunk damaged after the pass proved it (the disk, a hand in the work area) cannot be decoded: that image
    fails QC with the reason (its level-0 checksum does not match), and the other image of the run is checked as
    usual; the run is not stopped."""
    from zarrchive.tasks import qc

    monkeypatch.setattr(qc, "BATCH", batch)
    small = settings.model_copy(update={"convert": settings.convert.model_copy(update={"chunk_xy": 16})})
    data = random_image((2, 1, 40, 40)) // 2
    damaged = staged_image(tmp_path, small, scheduler, ome_tiff(tmp_path / "x.ome.tif", data, "CZYX",
                                                                {"x": 0.1, "y": 0.1}, ["a", "b"]), "x.ome.tif")
    fine = staged_image(tmp_path, small, scheduler, ome_tiff(tmp_path / "y.ome.tif", data[::-1], "CZYX",
                                                             {"x": 0.1, "y": 0.1}, ["c", "d"]), "y.ome.tif")
    from pathlib import Path

    shard = max((Path(damaged[1].store) / "0").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    shard.write_bytes(shard.read_bytes()[:-40] + bytes(40))  # the end of the shard: its index and a chunk's checksum
    result = run([damaged, fine], settings, scheduler)
    rows = {row["image_id"]: row for row in result.rows}
    assert not rows[damaged[0].image_id]["level0_checksum_matched"]
    assert "level 0 cannot be read" in rows[damaged[0].image_id]["ngff_problems"]
    assert result.image_status(damaged[0].image_id) == "error"
    assert rows[fine[0].image_id]["level0_checksum_matched"] and result.image_status(fine[0].image_id) == "ok"


def test_the_validator_asks_zarr_s_version_once(good):
    """pydantic-zarr asked importlib.metadata for zarr's version on every array it validated (parsing zarr's
    METADATA each time); after a validation it asks a cache, which answers the same. (pydantic-zarr's modules are
    taken as the validator imported them: importing pydantic_zarr.v2 before ome-zarr-models makes ome-zarr-models'
    NGFF 0.4 validation fail on every image.)"""
    import importlib.metadata
    import sys

    from zarrchive.ngff import validate_image

    (_image, report), _ = good
    validate_image(report.store)
    for name in ("pydantic_zarr.v2", "pydantic_zarr.v3"):
        module = sys.modules[name]
        assert module.version is not importlib.metadata.version and module.version.cache_info() is not None
        assert module.version("zarr") == importlib.metadata.version("zarr")
