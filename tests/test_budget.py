"""The image budget: a file declaring more than the configured limits is refused from its headers, quickly, with
what it declares and the limit — never streamed until killed, never a bare MemoryError."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import zarr

from builders import declaring_tiff, ome_tiff, ome_tiff_declaring, plain_tiff, random_image, staged, submission
from zarrchive.budget import OverBudget, check_shape
from zarrchive.config import ImageBudget, load_settings
from zarrchive.tasks.convert import convert_file

SETTINGS = load_settings().convert


def convert_quickly(path: Path, settings=SETTINGS, seconds: float = 30):
    """``convert_file`` on ``path`` in a thread: its images, or the exception it raised; fails when it hangs."""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(convert_file(staged(path), None, str(path.parent / "work"), settings))
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(seconds)
    assert outcome, f"converting {path.name} did not finish in {seconds} s"
    return outcome[0], time.monotonic() - started


def limits(**changes) -> object:
    return SETTINGS.model_copy(update={"limits": SETTINGS.limits.model_copy(update=changes)})


def test_a_tiny_tiff_declaring_20_tb_is_refused_from_its_tags(tmp_path):
    path = declaring_tiff(tmp_path / "bomb.tif", 100_000, 100_000, depth=1000)
    assert path.stat().st_size < 2000
    error, _seconds = convert_quickly(path)
    assert isinstance(error, OverBudget), error
    message = str(error)
    assert message.startswith("bomb.tif: declares 1000 × 100000 × 100000")
    assert "20.0 TB" in message and "convert.limits.max_bytes" in message and "before any pixel was read" in message


def test_an_ome_xml_declaring_a_billion_planes_is_refused_before_tifffile_builds_its_series(tmp_path):
    error, seconds = convert_quickly(ome_tiff_declaring(tmp_path / "planes.ome.tif", size_z=1_000_000_000))
    assert isinstance(error, OverBudget) and "1,000,000,000 planes" in str(error) and "max_planes" in str(error)
    assert seconds < 20  # tifffile alone takes over a minute and gigabytes to list them


def test_too_many_series_are_refused(tmp_path):
    error, _ = convert_quickly(ome_tiff_declaring(tmp_path / "many.ome.tif", images=30), limits(max_series=20))
    assert isinstance(error, OverBudget) and "30 series" in str(error)


def test_too_many_tiff_pages_are_refused(tmp_path):
    path = plain_tiff(tmp_path / "pages.tif", random_image((12, 8, 8), "uint8"), photometric="minisblack")
    error, _ = convert_quickly(path, limits(max_ifds=10))
    assert isinstance(error, OverBudget) and "more than 10 TIFF pages" in str(error)


def test_a_decompression_bomb_is_refused_for_its_expansion(tmp_path):
    path = declaring_tiff(tmp_path / "sparse.tif", 40_000, 40_000)  # 3.2 GB declared in a file of ~1 KB
    error, _ = convert_quickly(path, limits(max_bytes=1 << 50))
    assert isinstance(error, OverBudget) and "times its size" in str(error) and "max_expansion" in str(error)


def test_an_ome_zarr_declaring_huge_sizes_is_refused_from_its_metadata(tmp_path):
    store = tmp_path / "huge.ome.zarr"
    group = zarr.open_group(str(store), mode="w", zarr_format=3)
    group.create_array("0", shape=(1_000_000, 1_000_000, 1_000_000), chunks=(1, 1024, 1024), dtype="uint16")
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": n, "type": "space"} for n in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1]}]}]}]}
    error, _ = convert_quickly(store)
    assert isinstance(error, OverBudget) and "1000000 × 1000000 × 1000000" in str(error)


def test_an_image_within_the_budget_converts(tmp_path):
    images, _ = convert_quickly(ome_tiff(tmp_path / "ok.ome.tif", random_image((2, 3, 32, 32)), "CZYX"))
    assert not isinstance(images, BaseException) and images[0].shape == (2, 3, 32, 32)


@pytest.mark.parametrize("shape, itemsize, words", [
    ((3, 70_000, 70_000), 2, "4,900,000,000 pixels in one plane"),
    ((20_000_000, 4, 4), 1, "20,000,000 planes"),
    ((5, 1 << 20, 1 << 20), 8, "max_bytes"),
    ((1, -4, 4), 1, "negative size"),
])
def test_each_limit_is_named_with_what_was_declared(shape, itemsize, words):
    budget = ImageBudget(max_plane_pixels=1 << 32, max_bytes=1 << 40)
    with pytest.raises(OverBudget, match=words):
        check_shape("x.tif", shape, itemsize, budget, None)


def test_a_file_over_budget_fails_alone_and_the_others_are_published(tmp_path, config_file, prefect_server):
    from zarrchive.flows.ingest import ingest

    sub = submission(tmp_path / "sub", [{"path": "bomb.tif"}, {"path": "good.ome.tif"}])
    declaring_tiff(sub / "bomb.tif", 100_000, 100_000, depth=1000)
    ome_tiff(sub / "good.ome.tif", random_image((1, 1, 24, 24)), "CZYX", {"x": 0.5, "y": 0.5})
    before = (sub / "bomb.tif").read_bytes()
    pub = ingest(submission=str(sub), archive=str(tmp_path / "archive"),
                                          config=config_file(publish={"on_image_error": "skip_image"}))
    fates = {o.source_path: o for o in pub.images}
    assert fates["good.ome.tif"].status == "published"
    assert fates["bomb.tif"].status == "failed" and "20.0 TB" in fates["bomb.tif"].error
    manifest = json.loads((Path(pub.version_uri) / "manifest.json").read_text())
    assert any(i["source_path"] == "bomb.tif" and "max_bytes" in i["error"] for i in manifest["images"])
    assert (sub / "bomb.tif").read_bytes() == before  # the original is never modified
