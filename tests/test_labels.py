"""Label images: the submission format, mode downsampling, plans that follow the image, NGFF labels published
inside the image's store (through the real flow), and a label that does not fit its image."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from builders import AUTHOR, crate_problems, ome_tiff, plain_tiff, random_image, staged, submission
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from zarrchive.tasks.convert import convert_file
from zarrchive.tasks.intake import template_for
from zarrchive.tasks.publish import image_outcomes
from zarrchive.tasks.pyramid import build_pyramid

from zarrchive.config import PublishSettings, load_settings
from zarrchive.errors import InputError
from zarrchive.pixels.blocks import downsample, downsample_mean, downsample_mode
from zarrchive.records import Failure, FileEntry, QCReport
from zarrchive.submission_checks import check_submission

CHECKS = load_settings().submission


# ---------------------------------------------------------------- mode downsampling


def blocks(a: np.ndarray, axes: tuple[int, ...]):
    """Every output index of a 2-block reduction over ``axes`` with the values its block holds."""
    out_shape = [-(-n // 2) if i in axes else n for i, n in enumerate(a.shape)]
    for index in itertools.product(*map(range, out_shape)):
        window = tuple(slice(2 * k, 2 * k + 2) if i in axes else slice(k, k + 1) for i, k in enumerate(index))
        yield index, a[window].ravel().tolist()


def check_mode(a: np.ndarray, axes: tuple[int, ...]) -> None:
    got = downsample_mode(a, axes)
    assert got.dtype == a.dtype
    assert got.shape == tuple(-(-n // 2) if i in axes else n for i, n in enumerate(a.shape))
    for index, values in blocks(a, axes):
        counts = Counter(values)
        value = got[index].item()
        assert value in counts, f"{value} is not in its block {values}"  # never a value absent from the block
        top = max(counts.values())
        assert counts[value] == top, f"{value} is not the most frequent of {values}"
        assert value == min(v for v, n in counts.items() if n == top)  # a tie goes to the smallest value


@given(arrays(np.uint16, st.tuples(st.integers(1, 9), st.integers(1, 9)), elements=st.integers(0, 3)))
@hsettings(max_examples=150, deadline=None)
def test_mode_is_the_most_frequent_value_of_each_2x2_block(a):
    check_mode(a, (0, 1))


@given(arrays(np.int32, st.tuples(st.integers(1, 2), st.integers(1, 6), st.integers(1, 6), st.integers(1, 6)),
              elements=st.integers(-2, 2)))
@hsettings(max_examples=80, deadline=None)
def test_mode_over_z_too_is_the_most_frequent_value_of_each_2x2x2_block(a):
    check_mode(a, (1, 2, 3))


@given(arrays(np.uint64, st.tuples(st.integers(1, 7), st.integers(1, 7)),
              elements=st.sampled_from([0, 1, 2**40, 2**64 - 1])))
@hsettings(max_examples=60, deadline=None)
def test_mode_keeps_large_label_ids_exactly(a):
    check_mode(a, (0, 1))


def test_mode_never_averages_and_the_dispatcher_picks_the_method():
    labels = np.array([[1, 3], [3, 7]], dtype=np.uint8)
    assert downsample_mode(labels).tolist() == [[3]]
    assert downsample_mean(labels).tolist() == [[4]]  # a label id no pixel of the block has: why labels use mode
    assert downsample(labels, (0, 1), "mode").tolist() == [[3]]
    assert downsample(labels, (0, 1), "mean").tolist() == [[4]]
    tie = np.array([[9, 2], [2, 9]], dtype=np.uint16)
    assert downsample_mode(tie).tolist() == [[2]]
    mask = np.array([[True, False, True], [False, True, True]])
    assert downsample_mode(mask).tolist() == [[False, True]]  # tie -> False (the smaller); edge block: its mode


# ---------------------------------------------------------------- convert and plan


def label_entry(path: str, of: str, name: str | None = None) -> FileEntry:
    return FileEntry(path=path, kind="label", label_of=of, label_name=name)


def blobs(shape: tuple[int, ...], dtype: str = "uint16") -> np.ndarray:
    """Label-like content: blocks of constant ids, background 0 in places."""
    grid = np.indices(shape)
    ids = (grid[-2] // 5) * 7 + grid[-1] // 3 + (grid[0] if len(shape) == 3 else 0)
    return np.where(ids % 4 == 0, 0, ids % 11).astype(dtype)


def planned(tmp_path: Path, settings, image_data, label_data, image_axes="CZYX", label_axes="ZYX",
            entry: FileEntry | None = None, chunk_xy: int = 16):
    conv = settings.convert.model_copy(update={"chunk_xy": chunk_xy})
    image_path = ome_tiff(tmp_path / "images/cell01.ome.tif", image_data, image_axes, {"x": 0.2, "y": 0.2, "z": 0.2})
    label_path = ome_tiff(tmp_path / "labels/cell01_nuclei.tif", label_data, label_axes)
    entry = entry or label_entry("labels/cell01_nuclei.tif", "images/cell01.ome.tif", "nuclei")
    [image] = convert_file(staged(image_path, "images/cell01.ome.tif"), None, str(tmp_path / "w"), conv)
    label_file = staged(label_path, "labels/cell01_nuclei.tif").model_copy(update={"kind": "label"})
    [label] = convert_file(label_file, entry, str(tmp_path / "w"), conv)
    return build_pyramid(image, settings.pyramid), label


def test_a_label_converts_without_channels_and_its_plan_follows_the_image(tmp_path, settings):
    image, label = planned(tmp_path, settings, random_image((2, 4, 40, 36)), blobs((4, 40, 36)))
    assert (label.kind, label.label_of, label.label_name) == ("label", "images_cell01", "nuclei")
    assert [a.name for a in label.axes] == ["z", "y", "x"] and label.dtype == "uint16"
    label = build_pyramid(label, settings.pyramid, image)
    assert len(label.levels) == len(image.levels) == 3
    for image_level, label_level in zip(image.levels, label.levels):
        assert label_level.path == image_level.path
        assert label_level.shape == image_level.shape[1:] and label_level.chunks == image_level.chunks[1:]
        assert label_level.scale == image_level.scale[1:]  # the label takes the image's pixel size
        assert label_level.translation == image_level.translation[1:]
        assert (image_level.downsampling, label_level.downsampling) == ("mean", "mode")
    assert [a.unit for a in label.axes] == ["micrometer"] * 3 and label.calibrated
    assert (image.downsampling, label.downsampling) == ("mean", "mode")


def test_a_label_of_another_shape_fails_naming_its_file(tmp_path, settings):
    image, label = planned(tmp_path, settings, random_image((2, 4, 40, 36)), blobs((4, 40, 35)))
    with pytest.raises(InputError, match=r"labels/cell01_nuclei.tif: the label's shape \(z=4 × y=40 × x=35\) must "
                                         r"equal .* images/cell01.ome.tif, without channels \(z=4 × y=40 × x=36\)"):
        build_pyramid(label, settings.pyramid, image)
    with pytest.raises(InputError, match="labels/cell01_nuclei.tif: the image it annotates .images_cell01. was not"):
        build_pyramid(label, settings.pyramid, None)


@pytest.mark.parametrize("data, axes, words", [
    (random_image((4, 40, 36), "float32"), "ZYX", "holds integer label values; this one holds float32"),
    (random_image((2, 40, 36), "uint8"), "CYX", "has one channel of label values; this one has 2"),
])
def test_what_is_not_a_label_image_fails_naming_its_file(tmp_path, settings, data, axes, words):
    with pytest.raises(InputError, match=f"labels/cell01_nuclei.tif: a label image {words}"):
        planned(tmp_path, settings, random_image((2, 4, 40, 36)), data, label_axes=axes)


def test_a_bool_mask_is_stored_as_uint8_labels(tmp_path, settings):
    mask = blobs((40, 36)) > 3
    path = plain_tiff(tmp_path / "labels/cell01_mask.tif", mask)
    record = staged(path, "labels/cell01_mask.tif").model_copy(update={"kind": "label"})
    [label] = convert_file(record, label_entry("labels/cell01_mask.tif", "images/cell01.tif"), str(tmp_path),
                           settings.convert)
    assert label.dtype == "uint8" and label.layout.dtype == "uint8" and label.label_name == "cell01_mask"
    from zarrchive.pixels.sources import read_region

    block = read_region(record.staged_path, label.layout, (slice(0, 40), slice(0, 36)))
    assert block.dtype == np.uint8 and np.array_equal(block, mask.astype(np.uint8))


# ---------------------------------------------------------------- submission format


def doc(files: list[dict]) -> dict:
    return {"title": "Nuclear envelope dynamics in HeLa cells", "description": "Labels.", "license": "CC-BY-4.0",
            "release_date": "2026-01-01", "authors": [dict(AUTHOR)],
            "organism": {"scientific_name": "Homo sapiens"}, "imaging_method": {"name": "confocal microscopy"},
            "files": files}


IMAGE = {"path": "images/cell01.ome.tif"}


def label_findings(files: list[dict]) -> list[tuple[str, str, str]]:
    _doc, findings = check_submission(doc(files), CHECKS)
    return [(f.check, f.field, f.message) for f in findings if f.severity == "error"]


def test_a_valid_label_entry_has_no_findings():
    files = [IMAGE, {"path": "labels/a.tif", "kind": "label", "label_of": "images/cell01.ome.tif",
                     "label_name": "nuclei"},
             {"path": "labels/cell01_cells.tif", "kind": "label", "label_of": "./images/cell01.ome.tif"}]
    parsed, findings = check_submission(doc(files), CHECKS)
    assert [f for f in findings if f.severity == "error"] == []
    assert parsed.files[1].label == "nuclei" and parsed.files[2].label == "cell01_cells"
    assert parsed.files[2].label_of == "images/cell01.ome.tif"  # normalised like every path


@pytest.mark.parametrize("files, field, words", [
    ([IMAGE, {"path": "l.tif", "kind": "label"}], "files[1] (l.tif).label_of", "required for a label"),
    ([IMAGE, {"path": "l.tif", "kind": "label", "label_of": "images/other.tif"}], "files[1] (l.tif).label_of",
     "images/other.tif is not listed under files"),
    ([IMAGE, {"path": "n.txt", "kind": "attachment"}, {"path": "l.tif", "kind": "label", "label_of": "n.txt"}],
     "files[2] (l.tif).label_of", "n.txt is listed as kind: attachment; a label annotates an image file"),
    ([IMAGE, {"path": "i.tif", "label_of": "images/cell01.ome.tif"}], "files[1] (i.tif).label_of",
     "only a label file (kind: label) has label_of; this file is kind: image"),
    ([IMAGE, {"path": "n.txt", "kind": "attachment", "label_name": "x"}], "files[1] (n.txt).label_name",
     "only a label file (kind: label) has label_name"),
    ([IMAGE, {"path": "l.tif", "kind": "label", "label_of": "images/cell01.ome.tif", "label_name": "../up"}],
     "files[1] (l.tif).label_name", "'../up' is not a usable label name"),
    ([IMAGE, {"path": "l.tif", "kind": "label", "label_of": "images/cell01.ome.tif", "label_name": "zarr.json"}],
     "files[1] (l.tif).label_name", "not zarr.json"),
    ([IMAGE, {"path": "a/n.tif", "kind": "label", "label_of": "images/cell01.ome.tif"},
      {"path": "b/n.tif", "kind": "label", "label_of": "images/cell01.ome.tif"}], "files[2] (b/n.tif).label_name",
     "the label name 'n' is taken by a/n.tif, another label of images/cell01.ome.tif"),
    ([IMAGE, {"path": "a.tif", "kind": "label", "label_of": "images/cell01.ome.tif", "label_name": "Nuclei"},
      {"path": "b.tif", "kind": "label", "label_of": "images/cell01.ome.tif", "label_name": "nuclei"}],
     "files[2] (b.tif).label_name", "'nuclei' is taken by a.tif"),
    ([IMAGE, {"path": "l.tif", "kind": "label", "label_of": "../x.tif"}], "files[1] (l.tif).label_of",
     "escapes the submission folder"),
])
def test_label_fields_are_checked_naming_the_field(files, field, words):
    found = label_findings(files)
    assert any(f == field and words in m for _c, f, m in found), found
    assert len(found) == 1, found


def test_two_images_may_each_have_a_label_of_the_same_name():
    files = [IMAGE, {"path": "images/cell02.ome.tif"},
             {"path": "l1/nuclei.tif", "kind": "label", "label_of": "images/cell01.ome.tif"},
             {"path": "l2/nuclei.tif", "kind": "label", "label_of": "images/cell02.ome.tif"}]
    assert label_findings(files) == []


def test_the_template_proposes_files_in_a_labels_folder_as_labels_of_their_image(tmp_path):
    for rel in ("images/cell01.ome.tif", "images/cell010.ome.tif", "labels/cell01_nuclei.tif", "masks/other.tif"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    text = template_for(str(tmp_path))
    files = {f["path"]: f for f in yaml.safe_load(text)["files"]}
    assert files["images/cell01.ome.tif"] == {"path": "images/cell01.ome.tif"}
    assert files["labels/cell01_nuclei.tif"] == {"path": "labels/cell01_nuclei.tif", "kind": "label",
                                                 "label_of": "images/cell01.ome.tif"}
    assert files["masks/other.tif"]["label_of"].startswith("TODO")  # no image's name fits: the depositor says
    assert "label_of" in text.split("title:")[0]  # the header explains the fields


# ---------------------------------------------------------------- outcomes


def test_a_label_is_published_only_with_its_image():
    from test_publish import image  # a minimal planned image record

    cell = image("cell", "cell.tif")
    nuclei = image("nuc", "nuc.tif").model_copy(update={"kind": "label", "label_of": "cell", "label_name": "nuclei"})
    orphan = image("orph", "orph.tif").model_copy(update={"kind": "label", "label_of": "gone", "label_name": "x"})
    gone = Failure(stage="convert", source_path="gone.tif", image_id="gone", error="gone.tif: damaged")
    qc = QCReport(suite="s", rows=[], findings=[])
    skip = {o.image_id: o for o in image_outcomes([cell, nuclei, orphan], [gone], qc,
                                                  PublishSettings(on_image_error="skip_image"))}
    assert (skip["cell"].status, skip["cell"].labels) == ("published", ["nuclei"])
    assert (skip["nuc"].status, skip["nuc"].label_of, skip["nuc"].label_name) == ("published", "cell", "nuclei")
    assert skip["orph"].status == "failed" and "the image it annotates (gone) failed" in skip["orph"].error

    from zarrchive.records import Finding

    blocked = QCReport(suite="s", rows=[], findings=[Finding(severity="error", check="x", message="bad",
                                                             image_id="cell")])
    out = {o.image_id: o for o in image_outcomes([cell, nuclei], [], blocked,
                                                 PublishSettings(on_image_error="skip_image"))}
    assert out["cell"].status == "blocked" and out["nuc"].status == "blocked" and out["cell"].labels == []
    assert "is blocked" in out["nuc"].error


# ---------------------------------------------------------------- through the flow


def levels_of(group: zarr.Group) -> list[np.ndarray]:
    datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
    return [group[d["path"]][...] for d in datasets]


def halved_axes(group: zarr.Group, k: int) -> tuple[int, ...]:
    datasets = group.attrs["ome"]["multiscales"][0]["datasets"]
    above, below = (datasets[i]["coordinateTransformations"][0]["scale"] for i in (k - 1, k))
    return tuple(i for i, (a, b) in enumerate(zip(above, below)) if b > a)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, scheduler, prefect_server):
    """A submission of one image with two labels (a uint16 label and a bool mask), ingested once."""
    from conftest import WORK
    from zarrchive.flows.ingest import ingest

    root = tmp_path_factory.mktemp("labels")
    sub = root / "sub"
    ome_tiff(sub / "images/cell01.ome.tif", random_image((2, 4, 40, 36)), "CZYX", {"x": 0.2, "y": 0.2, "z": 0.2},
             ["DAPI", "GFP"])
    nuclei = blobs((4, 40, 36))
    mask = nuclei > 5
    ome_tiff(sub / "labels/cell01_nuclei.tif", nuclei, "ZYX")
    ome_tiff(sub / "labels/cell01_mask.tif", mask, "ZYX")
    submission(sub, [{"path": "images/cell01.ome.tif"},
                     {"path": "labels/cell01_nuclei.tif", "kind": "label", "label_of": "images/cell01.ome.tif",
                      "label_name": "nuclei"},
                     {"path": "labels/cell01_mask.tif", "kind": "label", "label_of": "images/cell01.ome.tif"}])
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({"cluster": {"address": scheduler}, "staging": {"work": WORK},
                                      "convert": {"chunk_xy": 16}, "compress": {"shard_xy": 32}}))
    pub = ingest(submission=str(sub), archive=str(root / "archive"), config=str(config))
    return pub, {"nuclei": nuclei, "cell01_mask": mask.astype(np.uint8)}, str(config)


def test_labels_are_published_inside_their_image_store(labelled):
    pub, sources, _cfg = labelled
    assert pub.status == "published", pub.reasons
    outcomes = {o.image_id: o for o in pub.images}
    store = "images/images_cell01.ome.zarr"
    assert (outcomes["images_cell01"].path, outcomes["images_cell01"].labels) == (store, ["cell01_mask", "nuclei"])
    assert outcomes["labels_cell01_nuclei"].path == f"{store}/labels/nuclei"
    assert outcomes["labels_cell01_mask"].path == f"{store}/labels/cell01_mask"
    assert {o.label_of for o in pub.images} == {None, "images_cell01"}
    vdir = Path(pub.version_uri)
    assert not (vdir / "images" / "labels_cell01_nuclei.ome.zarr").exists()  # never published on its own
    labels = zarr.open_group(str(vdir / store / "labels"), mode="r")
    assert labels.attrs["ome"] == {"version": "0.5", "labels": ["cell01_mask", "nuclei"]}
    image_levels = levels_of(zarr.open_group(str(vdir / store), mode="r"))
    for name, source in sources.items():
        group = zarr.open_group(str(vdir / store / "labels" / name), mode="r")
        ome = group.attrs["ome"]
        assert ome["image-label"]["source"] == {"image": "../../"} and ome["image-label"]["version"] == "0.5"
        assert ome["multiscales"][0]["type"] == "mode" and "omero" not in ome
        assert [a["name"] for a in ome["multiscales"][0]["axes"]] == ["z", "y", "x"]
        levels = levels_of(group)
        assert levels[0].dtype == source.dtype
        np.testing.assert_array_equal(levels[0], source)  # level 0 is the label source exactly
        assert len(levels) == len(image_levels) >= 3
        for k in range(1, len(levels)):
            assert levels[k].shape == image_levels[k].shape[1:]
            np.testing.assert_array_equal(levels[k], downsample_mode(levels[k - 1], halved_axes(group, k)))
            assert set(np.unique(levels[k])) <= set(np.unique(levels[k - 1]))  # no label id invented


def test_published_labels_validate_and_readers_find_them(labelled):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    from ome_zarr_models.v05 import Image
    from ome_zarr_models.v05.labels import Labels

    store = Path(labelled[0].version_uri) / "images/images_cell01.ome.zarr"
    model = Image.from_zarr(zarr.open_group(str(store), mode="r"))  # validates the labels group it finds, too
    assert set(model.members["labels"].members) == {"cell01_mask", "nuclei"}
    labels = Labels.from_zarr(zarr.open_group(str(store / "labels"), mode="r"))  # label types and metadata
    assert sorted(labels.label_paths) == ["cell01_mask", "nuclei"]
    nuclei = labels.get_image_labels_group("nuclei")
    assert nuclei.attributes.ome.image_label.source.image == "../../"
    assert nuclei.attributes.ome.multiscales[0].type == "mode"
    nodes = list(Reader(parse_url(str(store)))())
    found = {n.zarr.basename(): n for n in nodes if any(isinstance(s, Label) for s in n.specs)}
    assert set(found) == {"nuclei", "cell01_mask"}
    assert [d.shape for d in found["nuclei"].data][0] == (4, 40, 36)


def test_manifest_crate_qc_and_landing_page_cover_the_labels(labelled):
    from zarrchive.archive.storage import tree_digest

    pub = labelled[0]
    vdir = Path(pub.version_uri)
    manifest = json.loads((vdir / "manifest.json").read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    store = "images/images_cell01.ome.zarr/"
    assert f"{store}labels/zarr.json" in listed and f"{store}labels/nuclei/0/zarr.json" in listed
    on_disk = {p.relative_to(vdir).as_posix() for p in vdir.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(listed) == on_disk
    for rel in (r for r in listed if r.startswith(store)):
        assert listed[rel]["sha256"] == hashlib.sha256((vdir / rel).read_bytes()).hexdigest()
    images = {i["image_id"]: i for i in manifest["images"]}
    assert images["labels_cell01_nuclei"]["label_of"] == "images_cell01"

    nodes = {n["@id"]: n for n in json.loads((vdir / "ro-crate-metadata.json").read_text())["@graph"]}
    nuclei = f"{store}labels/nuclei/"
    objects = [(p[len(nuclei):], e["sha256"]) for p, e in listed.items() if p.startswith(nuclei)]
    assert nodes[nuclei]["@type"] == "Dataset" and nodes[nuclei]["zarrchive:treeDigest"] == tree_digest(objects)
    assert {"@id": nuclei} in nodes[store]["hasPart"] and {"@id": f"{store}labels/zarr.json"} in nodes[store]["hasPart"]
    own = [(p[len(store):], e["sha256"]) for p, e in listed.items() if p.startswith(store) and "/labels/" not in p]
    assert nodes[store]["zarrchive:treeDigest"] == tree_digest(own)  # the image's digest, as compress verified it
    compress = [n for n in nodes.values() if n.get("zarrchive:stage") == "compress"]
    assert {"@id": nuclei} in [r for n in compress for r in n["result"]]

    qc = json.loads((vdir / "qc" / "report.json").read_text())
    rows = {r["image_id"]: r for r in qc["images"]}
    assert rows["labels_cell01_nuclei"]["kind"] == "label" and rows["labels_cell01_nuclei"]["ngff_valid"]
    assert rows["labels_cell01_nuclei"]["level0_checksum_matched"] and qc["errors"] == 0
    assert {c["image_id"] for c in qc["channels"]} == {"images_cell01"}  # label values are not intensities
    landing = (vdir / "index.html").read_text()
    assert "labels: " in landing and f"href='{store}labels/nuclei/zarr.json'" in landing


def test_show_lists_the_labels_under_their_image(labelled, capsys):
    from zarrchive.cli import main

    pub = labelled[0]
    assert main(["show", pub.accession, "--archive", pub.archive]) == 0
    lines = capsys.readouterr().out.splitlines()
    image = next(i for i, line in enumerate(lines) if "images_cell01 " in line)
    assert "labels: cell01_mask, nuclei" in lines[image]
    assert "label cell01_mask" in lines[image + 1] and "label nuclei" in lines[image + 2]
    assert "images/images_cell01.ome.zarr/labels/nuclei" in lines[image + 2]


def test_a_label_of_the_wrong_shape_fails_and_the_policy_decides_for_the_image(tmp_path, config_file,
                                                                                prefect_server):
    from zarrchive.flows import ingest as ingest_flow

    sub = tmp_path / "sub"
    ome_tiff(sub / "images/cell01.ome.tif", random_image((1, 30, 28)), "CYX", {"x": 0.2, "y": 0.2})
    ome_tiff(sub / "labels/cell01_nuclei.tif", blobs((30, 27)), "YX")
    submission(sub, [{"path": "images/cell01.ome.tif"},
                     {"path": "labels/cell01_nuclei.tif", "kind": "label", "label_of": "images/cell01.ome.tif"}])

    def ingest(**sections):
        return ingest_flow.ingest(submission=str(sub), archive=str(tmp_path / "archive"),
                                  config=config_file(convert={"chunk_xy": 16}, **sections))

    blocked = ingest()  # block_submission (the default): the failed label blocks the version
    assert blocked.status == "blocked"
    outcomes = {o.image_id: o for o in blocked.images}
    label = outcomes["labels_cell01_nuclei"]
    assert label.status == "failed" and label.label_of == "images_cell01"
    assert "labels/cell01_nuclei.tif: the label's shape (y=30 × x=27)" in label.error
    assert outcomes["images_cell01"].status == "blocked"

    published = ingest(publish={"on_image_error": "skip_image"})
    assert published.status == "published"
    outcomes = {o.image_id: o for o in published.images}
    assert (outcomes["images_cell01"].status, outcomes["images_cell01"].labels) == ("published", [])
    assert outcomes["labels_cell01_nuclei"].status == "failed" and "labels/cell01_nuclei.tif" in \
        outcomes["labels_cell01_nuclei"].error
    assert not (Path(published.version_uri) / "images/images_cell01.ome.zarr/labels").exists()


def test_lineage_leads_a_label_back_to_its_file_and_the_crate_passes_the_profile(labelled, tmp_path):
    from zarrchive.archive.provenance import lineage_of

    pub = labelled[0]
    [info] = lineage_of(pub.archive, pub.accession, image="labels_cell01_nuclei")["images"]
    assert info["path"] == "images/images_cell01.ome.zarr/labels/nuclei/"
    assert info["original"]["path"] == "originals/labels/cell01_nuclei.tif" and info["sources"]
    stages = [s["stage"] for s in info["stages"]]  # the label's, and the image's conversion its plan follows
    assert stages[-1] == "compress" and {"fetch", "convert", "pyramid"} <= set(stages)

    assert crate_problems(Path(pub.version_uri), tmp_path) == []


def test_with_ngff_0_4_the_labels_are_zarr_v2_and_ome_zarr_readers_find_them(tmp_path, config_file, prefect_server):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader
    from ome_zarr_models.v04 import Image
    from ome_zarr_models.v04.labels import Labels
    from zarrchive.flows.ingest import ingest

    sub = tmp_path / "sub"
    ome_tiff(sub / "images/cell01.ome.tif", random_image((1, 40, 36)), "CYX", {"x": 0.2, "y": 0.2})
    nuclei = blobs((40, 36))
    ome_tiff(sub / "labels/cell01_nuclei.tif", nuclei, "YX")
    submission(sub, [{"path": "images/cell01.ome.tif"},
                     {"path": "labels/cell01_nuclei.tif", "kind": "label", "label_of": "images/cell01.ome.tif",
                      "label_name": "nuclei"}])
    pub = ingest(submission=str(sub), archive=str(tmp_path / "archive"), config=config_file(
        convert={"chunk_xy": 16}, compress={"ngff": "0.4"}))
    assert pub.status == "published", pub.reasons
    store = Path(pub.version_uri) / "images/images_cell01.ome.zarr"
    assert json.loads((store / "labels/.zattrs").read_text()) == {"labels": ["nuclei"]}
    assert json.loads((store / "labels/.zgroup").read_text()) == {"zarr_format": 2}
    assert not (store / "labels/zarr.json").exists() and not (store / "labels/nuclei/zarr.json").exists()
    label = zarr.open_group(str(store / "labels/nuclei"), mode="r")
    assert label.attrs["image-label"]["version"] == "0.4" and label.attrs["multiscales"][0]["version"] == "0.4"
    np.testing.assert_array_equal(label["0"][...], nuclei)
    Image.from_zarr(zarr.open_group(str(store), mode="r"))
    assert Labels.from_zarr(zarr.open_group(str(store / "labels"), mode="r")).attributes.labels == ["nuclei"]
    nodes = list(Reader(parse_url(str(store)))())
    found = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert [n.zarr.basename() for n in found] == ["nuclei"] and found[0].data[0].shape == (40, 36)
    assert "OME-Zarr (OME-NGFF 0.4, Zarr v2)" in (Path(pub.version_uri) / "index.html").read_text()
