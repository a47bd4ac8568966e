"""QC, without Prefect: the Great Expectations suite from configs/ and its findings."""

from __future__ import annotations

import hashlib
import json

import pytest
import zarr

from builders import ome_tiff, plain_tiff, random_image
from zarrchive.config import QCSettings
from zarrchive.records import FileEntry, FileRecord
from zarrchive.tasks.compress import compress_image
from zarrchive.tasks.convert import convert_file
from zarrchive.tasks.pyramid import build_pyramid
from zarrchive.tasks.qc import check_metadata, load_suite


def staged_image(tmp_path, settings, scheduler, path, rel, entry=None):
    rec = FileRecord(path=rel, source_uri=str(path), staged_path=str(path), size=path.stat().st_size,
                     sha256=hashlib.sha256(path.read_bytes()).hexdigest(), kind="image")
    [image] = convert_file(rec, entry, str(tmp_path / "s"), settings.convert, scheduler)
    image = build_pyramid(image, settings.pyramid, scheduler)
    return image, compress_image(image, str(tmp_path / "s"), settings.compress, scheduler)


@pytest.fixture()
def good(tmp_path, settings, scheduler):
    path = ome_tiff(tmp_path / "good.ome.tif", random_image((2, 1, 20, 20)), "CZYX", {"x": 0.1, "y": 0.1}, ["a", "b"])
    return staged_image(tmp_path, settings, scheduler, path, "good.ome.tif")


def test_a_good_image_passes(good, settings):
    image, report = good
    qc = check_metadata([image], [report], settings.qc)
    assert qc.findings == [] and qc.image_status(image.image_id) == "ok"
    [row] = qc.rows
    assert row["ngff_valid"] and row["pixel_size_x"] == 0.1 and row["dtype"] == "uint16"


def test_missing_calibration_is_a_warning_that_tells_how_to_fix_it(tmp_path, settings, scheduler):
    path = plain_tiff(tmp_path / "bare.tif", random_image((20, 20), "uint8"))
    image, report = staged_image(tmp_path, settings, scheduler, path, "bare.tif")
    qc = check_metadata([image], [report], settings.qc)
    [finding] = qc.findings
    assert (finding.severity, finding.check, finding.image_id) == ("warning", "physical_calibration", "bare")
    assert "pixel_size" in finding.message and "submission.yaml" in finding.message
    assert qc.errors == []


def test_channel_count_mismatch_is_an_error(tmp_path, settings, scheduler):
    path = ome_tiff(tmp_path / "c.ome.tif", random_image((2, 1, 20, 20)), "CZYX", {"x": 0.1, "y": 0.1})
    image, report = staged_image(tmp_path, settings, scheduler, path, "c.ome.tif",
                                 FileEntry(path="c.ome.tif", channel_names=["one", "two", "three"]))
    qc = check_metadata([image], [report], settings.qc)
    assert [(f.severity, f.check, f.image_id) for f in qc.findings] == [("error", "channel_count_matches_names", "c")]


def test_invalid_ngff_and_disallowed_dtype_are_errors(good, tmp_path, settings):
    image, report = good
    group = zarr.open_group(report.store, mode="r+")
    attrs = dict(group.attrs["ome"])
    attrs["multiscales"] = [{**attrs["multiscales"][0], "axes": []}]
    group.update_attributes({"ome": attrs})
    suite = load_suite(settings.qc)
    for exp in suite["expectations"]:
        if exp["meta"]["check"] == "dtype_allowed":
            exp["kwargs"]["value_set"] = ["uint8"]
    custom = tmp_path / "suite.json"
    custom.write_text(json.dumps(suite))
    qc = check_metadata([image], [report], QCSettings(suite=str(custom)))
    checks = {(f.severity, f.check) for f in qc.findings}
    assert checks == {("error", "ngff_valid"), ("error", "dtype_allowed")}
    assert qc.image_status(image.image_id) == "error"
    assert any("uint16" in f.message for f in qc.findings)


def test_metadata_conflicts_are_reported_as_warnings(tmp_path, settings, scheduler):
    from zarrchive.records import PixelSize

    path = ome_tiff(tmp_path / "k.ome.tif", random_image((1, 1, 20, 20)), "CZYX", {"x": 0.1, "y": 0.1})
    image, report = staged_image(tmp_path, settings, scheduler, path, "k.ome.tif",
                                 FileEntry(path="k.ome.tif", pixel_size=PixelSize(x=0.3, y=0.1)))
    qc = check_metadata([image], [report], settings.qc)
    assert [(f.severity, f.check) for f in qc.findings] == [("warning", "metadata_conflict")]
    assert "pixel_size.x" in qc.findings[0].message
