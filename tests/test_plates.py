"""High-content screening plates: declared by a pattern or by the OME-XML of a screening set, published as one
OME-NGFF plate that independent readers open, each field an image with its own QC and lineage."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
import tifffile
from builders import ome_tiff, random_image, screening_files, staged, submission
from zarrchive.flows.ingest import ingest
from zarrchive.tasks.intake import template_for

from zarrchive.config import load_settings
from zarrchive.plates import compile_pattern, detect, ome_plate_positions, place_fields, plate_documents, row_name
from zarrchive.records import FileEntry, PlateDeclaration
from zarrchive.submission_checks import check_submission

PATTERN = "plate1/{row}{column}_f{field}.ome.tif"
WELLS = [("B", 3, 1), ("B", 3, 2), ("C", 10, 1), ("C", 10, 4)]  # two wells, two fields each (numbered 1 and 2 / 1 and 4)


def doc(files: list[dict], plates: list[dict]) -> dict:
    return {"title": "A screen of HeLa cells on one plate", "description": "d", "license": "CC-BY-4.0",
            "release_date": "2026-01-01", "authors": [{"name": "J", "email": "j@example.org"}], "files": files,
            "plates": plates}


def findings(files: list[dict], plates: list[dict]) -> list[str]:
    parsed, found = check_submission(doc(files, plates), load_settings().submission, dt.date(2026, 6, 1))
    return [f.line() for f in found if f.severity == "error"]


# ---------------------------------------------------------------- the submission format


def test_a_pattern_places_each_file_at_its_well_and_numbers_the_fields_of_each_well():
    files = [FileEntry(path=f"plate1/{r}{c:02d}_f{f}.ome.tif") for r, c, f in WELLS]
    files += [FileEntry(path="plate1/notes.txt", kind="attachment"), FileEntry(path="overview.tif")]
    placed = {e.path: e.well for e in place_fields([PlateDeclaration(name="plate1", pattern=PATTERN)], files)}
    assert {p: w.path for p, w in placed.items() if w} == {
        "plate1/B03_f1.ome.tif": "B/3/0", "plate1/B03_f2.ome.tif": "B/3/1",
        "plate1/C10_f1.ome.tif": "C/10/0", "plate1/C10_f4.ome.tif": "C/10/1"}
    assert placed["overview.tif"] is None and placed["plate1/notes.txt"] is None


@pytest.mark.parametrize(("value", "row"), [("a", "A"), ("B", "B"), ("1", "A"), ("02", "B"), ("26", "Z"),
                                            ("27", "AA"), ("aa", "AA")])
def test_rows_are_letters_whether_named_by_letter_or_number(value, row):
    assert row_name(value) == row


def test_rows_numbered_as_operetta_names_them_and_acquisitions_are_kept():
    files = [FileEntry(path=f"r{r:02d}c{c:02d}f{f:02d}a{a}.tiff") for r, c, f, a in
             [(1, 1, 1, 1), (1, 1, 2, 1), (1, 1, 1, 2), (16, 24, 1, 1)]]
    placed = place_fields([PlateDeclaration(name="p", pattern="r{row}c{column}f{field}a{acquisition}.tiff")], files)
    assert [(e.well.path, e.well.acquisition) for e in placed] == [("A/1/0", 1), ("A/1/1", 1), ("A/1/2", 2),
                                                                   ("P/24/0", 1)]


@pytest.mark.parametrize(("files", "plates", "expected"), [
    ([{"path": "a/B03.tif"}], [{"name": "p1", "pattern": "b/{row}{column}.tif"}],
     "plates (p1): pattern 'b/{row}{column}.tif' names none of the image files listed under files"),
    ([{"path": "a/B03.tif"}], [{"name": "p1", "pattern": "a/{row}{well}.tif"}], "{well} is not a placeholder"),
    ([{"path": "a/B03.tif"}], [{"name": "p1", "pattern": "a/{column}.tif"}], "needs {row} and {column}"),
    ([{"path": "a/B03_f1.tif"}, {"path": "a/B03-f1.tif"}], [{"name": "p1", "pattern": "a/{row}{column}*f{field}.tif"}],
     "a/B03_f1.tif and a/B03-f1.tif are both field B/3/0"),
    ([{"path": "a/B03.tif"}], [{"name": "p1", "pattern": "a/{row}{column}.tif"},
                               {"name": "p2", "pattern": "a/B{column}.tif"}], "needs {row} and {column}"),
    ([{"path": "a/B03.tif"}], [{"name": "p1", "pattern": "a/{row}{column}.tif"},
                               {"name": "p2", "pattern": "*/{row}{column}.tif"}],
     "a/B03.tif is named by the patterns of both p1 and p2"),
    ([{"path": "a/B03.tif"}], [{"name": "p1", "pattern": "a/{row}{column}.tif"}, {"name": "p1", "pattern": "x"}],
     "p1 declared twice"),
    ([{"path": "a/00_03.tif"}], [{"name": "p1", "pattern": "a/{row}_{column}.tif"}], "rows are counted from 1"),
    ([{"path": "a.tif", "well": {"plate": "p9", "row": "A", "column": "1"}}], [],
     "a.tif: its well names plate 'p9', which plates does not declare"),
    ([{"path": "a.tif"}], [{"name": "bad/name", "pattern": "a.tif"}], "plates[0].name"),
    ([{"path": "a.tif", "well": {"plate": "p", "row": "A-1", "column": "1"}}], [{"name": "p"}], "row"),
])
def test_a_wrong_plate_is_refused_naming_the_plate_and_the_files(files, plates, expected):
    errors = findings(files, plates)
    assert any(expected in e for e in errors), errors


def test_a_file_may_give_its_well_itself():
    errors = findings([{"path": "a.tif", "well": {"plate": "p", "row": "H", "column": "12", "field": 2}}],
                      [{"name": "p"}])
    assert errors == []


@pytest.mark.parametrize(("names", "pattern"), [
    ([f"A{c:02d}_s{f}.tif" for c in (1, 2) for f in (1, 2)], "screen/{row}{column}_s{field}.tif"),  # MetaXpress
    ([f"r{r:02d}c{c:02d}f{f:02d}p01-ch1sk1fk1fl1.tiff" for r in (1, 2) for c in (1, 2) for f in (1, 2)],
     "screen/r{row}c{column}f{field}p01-ch1sk1fk1fl1.tiff"),  # Operetta, one channel
    (["B03.tif", "B04.tif", "C03.tif"], "screen/{row}{column}.tif"),
])
def test_submission_new_proposes_the_plate_a_folder_is_named_as(tmp_path, names, pattern):
    import yaml

    (tmp_path / "screen").mkdir()
    for name in names:
        tifffile.imwrite(tmp_path / "screen" / name, np.zeros((4, 4), "uint8"))
    (tmp_path / "other.tif").write_bytes(b"")
    assert detect([f"screen/{n}" for n in names]) == [{"name": "screen", "pattern": pattern}]
    proposed = yaml.safe_load(template_for(str(tmp_path)))
    assert proposed["plates"] == [{"name": "screen", "pattern": pattern}]


def test_no_plate_is_proposed_where_names_do_not_give_one_field_per_file():
    per_channel = [f"r01c01f01p01-ch{ch}sk1fk1fl1.tiff" for ch in (1, 2)]
    assert detect([f"s/{n}" for n in per_channel]) == []
    assert detect(["s/cell1.tif", "s/cell2.tif"]) == [] and detect(["s/A01_s1.tif"]) == []


# ---------------------------------------------------------------- the plate's OME-NGFF


def test_the_plate_metadata_lists_rows_columns_wells_and_fields_in_plate_order():
    files = [FileEntry(path=f"plate1/{r}{c:02d}_f{f}.ome.tif") for r, c, f in WELLS + [("B", 11, 1)]]
    wells = [e.well for e in place_fields([PlateDeclaration(name="plate1", pattern=PATTERN)], files)]
    docs = plate_documents("plate1", wells)
    plate = docs["zarr.json"]["attributes"]["ome"]["plate"]
    assert [r["name"] for r in plate["rows"]] == ["B", "C"] and [c["name"] for c in plate["columns"]] == ["3", "10",
                                                                                                          "11"]
    assert plate["wells"] == [{"path": "B/3", "rowIndex": 0, "columnIndex": 0},
                              {"path": "B/11", "rowIndex": 0, "columnIndex": 2},
                              {"path": "C/10", "rowIndex": 1, "columnIndex": 1}]
    assert plate["field_count"] == 2
    assert docs["B/3/zarr.json"]["attributes"]["ome"]["well"] == {"images": [{"path": "0"}, {"path": "1"}]}
    assert docs["B/zarr.json"] == {"zarr_format": 3, "node_type": "group", "attributes": {}}
    v04 = plate_documents("plate1", wells, "0.4")
    assert v04[".zattrs"]["plate"]["version"] == "0.4" and v04["B/3/.zattrs"]["well"]["version"] == "0.4"
    assert set(v04) >= {".zgroup", "B/.zgroup", "B/3/.zgroup"}


def test_a_screening_ome_xml_places_its_images_at_their_wells(tmp_path):
    fields = [random_image((16, 16), seed=i) for i in range(3)]
    paths = screening_files(tmp_path, fields, ["a.ome.tif", "b.ome.tif", "c.ome.tif"],
                            wells=[(1, 2, 0), (1, 2, 1), (7, 11, 0)], plate="Screen #1")
    positions = ome_plate_positions(tifffile.TiffFile(paths[0]).ome_metadata)
    assert {i: (w.plate, w.path) for i, w in positions.items()} == {
        0: ("Screen_1", "B/3/0"), 1: ("Screen_1", "B/3/1"), 2: ("Screen_1", "H/12/0")}


def test_compile_pattern_matches_whole_paths_only():
    regex = compile_pattern("p/{row}{column}.tif")
    assert regex.fullmatch("p/B03.tif") and not regex.fullmatch("x/p/B03.tif") and not regex.fullmatch("p/B03.tiff")


@pytest.mark.parametrize(("pattern", "name", "place"), [
    ("*{row}{column}.tif", "x_B13.tif", ("B", "13")),        # a star takes as little as it can
    ("*{row}{column}.tif", "plateB03.tif", ("B", "03")),     # rows are capitals: "eB" is no row
    ("{row}{column}.tif", "0102.tif", None),                 # a row beside a number is a letter
    ("{column}{row}.tif", "03B.tif", ("B", "03")),
    ("r{row}c{column}.tif", "r12c3.tif", ("12", "3")),       # a numbered row needs a separator after it
    ("{row}_{column}.tif", "12_3.tif", ("12", "3")),
])
def test_patterns_read_rows_and_columns_without_guessing(pattern, name, place):
    found = compile_pattern(pattern).fullmatch(name)
    assert (found and (found["row"], found["column"])) == (place if place else None)


@pytest.mark.parametrize("pattern", ["{row}{column}{field}.tif", "r{row}c{column}{acquisition}.tif"])
def test_two_numbers_with_nothing_between_are_refused(pattern):
    with pytest.raises(ValueError, match="two numbers with nothing between them"):
        compile_pattern(pattern)


def test_given_positions_are_normalised_and_one_place_holds_one_field_whatever_its_acquisition():
    from zarrchive.records import WellPosition

    assert WellPosition(plate="p", row="b", column="03").path == "B/3/0"
    assert WellPosition(plate="p", row="2", column=3).well == "B/3"
    errors = findings([{"path": "a.tif", "well": {"plate": "p", "row": "A", "column": "1", "acquisition": 1}},
                       {"path": "b.tif", "well": {"plate": "p", "row": "a", "column": "01", "acquisition": 2}}],
                      [{"name": "p"}])
    assert any("a.tif and b.tif are both field A/1/0" in e for e in errors), errors


def test_published_fields_are_numbered_without_gaps():
    from zarrchive.plates import renumber_fields
    from zarrchive.records import ImageOutcome, WellPosition

    def field(i, n, status="published"):
        return ImageOutcome(image_id=f"f{i}", source_path=f"f{i}.tif", status=status,
                            well=WellPosition(plate="p", row="A", column="1", field=n))

    out = renumber_fields([field(0, 0, "failed"), field(1, 1), field(2, 2)])
    assert [o.well.field for o in out] == [0, 0, 1]


def test_two_folders_named_alike_are_proposed_as_two_plates():
    names = [f"{folder}/screen/A0{c}_s1.tif" for folder in ("a", "b") for c in (1, 2)]
    assert [p["name"] for p in detect(names)] == ["screen", "screen_2"]


def test_a_screening_set_declared_by_a_pattern_takes_its_wells_from_its_ome_xml(tmp_path, settings):
    from zarrchive.tasks.convert import convert_file

    from zarrchive.errors import InputError

    fields = [random_image((16, 16), seed=i) for i in range(2)]
    names = ["A01_s1.ome.tif", "A01_s2.ome.tif"]
    entry = place_fields([PlateDeclaration(name="p", pattern="plate/{row}{column}_s{field}.ome.tif")],
                         [FileEntry(path=f"plate/{n}") for n in names])
    paths = screening_files(tmp_path / "with" / "plate", fields, names, wells=[(0, 0, 0), (0, 0, 1)])
    images = convert_file(staged(paths[0], f"plate/{names[0]}"), entry[0], str(tmp_path / "work"), settings.convert,
                          {f"plate/{names[1]}": staged(paths[1], f"plate/{names[1]}").sha256})
    assert sorted(i.well.path for i in images) == ["A/1/0", "A/1/1"]
    paths = screening_files(tmp_path / "without" / "plate", fields, names)  # no plate in its OME-XML
    with pytest.raises(InputError, match=r"gives the 2 images of the OME-TIFF set of plate/A01_s1.ome.tif, "
                                         r"plate/A01_s2.ome.tif \(their OME-XML names no plate\)"):
        convert_file(staged(paths[0], f"plate/{names[0]}"), entry[0], str(tmp_path / "work"), settings.convert,
                     {f"plate/{names[1]}": staged(paths[1], f"plate/{names[1]}").sha256})


def test_a_screening_ome_tiff_needs_no_declaration_so_none_is_proposed(tmp_path):
    import yaml

    screening_files(tmp_path / "plate", [random_image((16, 16), seed=i) for i in range(2)],
                    ["A01_s1.ome.tif", "A01_s2.ome.tif"], wells=[(0, 0, 0), (0, 0, 1)])
    assert "plates" not in yaml.safe_load(template_for(str(tmp_path)))


# ---------------------------------------------------------------- through the flow


@pytest.fixture()
def screen(tmp_path):
    """A plate of four fields in two wells (two channels each, calibrated), a label of one field, and an image
    that is not on the plate."""
    from test_labels import blobs

    sub = tmp_path / "screen"
    data = {}
    files = []
    for i, (r, c, f) in enumerate(WELLS):
        path = f"plate1/{r}{c:02d}_f{f}.ome.tif"
        data[path] = random_image((2, 1, 48, 64), seed=i)
        ome_tiff(sub / path, data[path], "CZYX", {"x": 0.65, "y": 0.65})
        files.append({"path": path, "channel_names": ["DAPI", "GFP"]})
    ome_tiff(sub / "masks/B03_f1_nuclei.tif", blobs((48, 64)), "YX")
    files.append({"path": "masks/B03_f1_nuclei.tif", "kind": "label", "label_of": "plate1/B03_f1.ome.tif",
                  "label_name": "nuclei"})
    ome_tiff(sub / "overview.ome.tif", random_image((1, 1, 32, 32), seed=9), "CZYX", {"x": 5.0, "y": 5.0})
    files.append({"path": "overview.ome.tif"})
    return sub, files, data


def test_a_plate_is_published_as_one_ome_ngff_plate_that_plate_readers_open(screen, tmp_path, config_file):
    import zarr
    from builders import crate_problems
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Plate, Reader
    from ome_zarr_models.v05.hcs import HCS

    from zarrchive.archive.provenance import lineage_of

    sub, files, data = screen
    archive, config = tmp_path / "archive", config_file()
    submission(sub, files, plates=[{"name": "plate1", "pattern": PATTERN}])
    pub = ingest(str(sub), str(archive), config)
    assert pub.status == "published", pub.reasons
    by_id = {o.image_id: o for o in pub.images}
    assert by_id["plate1_C10_f4"].path == "plates/plate1.ome.zarr/C/10/1"
    assert by_id["overview"].path == "images/overview.ome.zarr"
    vdir = archive / pub.accession / "v1"
    plate_dir = vdir / "plates" / "plate1.ome.zarr"

    HCS.from_zarr(zarr.open_group(str(plate_dir), mode="r"))  # an independent validator, wells and fields included
    [node] = [n for n in Reader(parse_url(str(plate_dir)))() if any(isinstance(s, Plate) for s in n.specs)]
    plate = next(s for s in node.specs if isinstance(s, Plate))
    assert (plate.row_names, plate.col_names, plate.well_paths) == (["B", "C"], ["3", "10"], ["B/3", "C/10"])
    for r, c, f in WELLS:  # every field bit-exact, calibrated, its channels named
        out = by_id[f"plate1_{r}{c:02d}_f{f}"]
        group = zarr.open_group(str(vdir / out.path), mode="r")
        np.testing.assert_array_equal(np.asarray(group["0"]), data[out.source_path].reshape(2, 48, 64))
        ome = group.attrs["ome"]
        assert ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"][-1] == pytest.approx(0.65)
        assert [ch["label"] for ch in ome["omero"]["channels"]] == ["DAPI", "GFP"]
        assert out.well.plate == "plate1" and out.qc in ("ok", "warning")
    labels = zarr.open_group(str(vdir / by_id["plate1_B03_f1"].path / "labels" / "nuclei"), mode="r")
    assert "image-label" in labels.attrs["ome"]

    manifest = json.loads((vdir / "manifest.json").read_text())
    listed = {e["path"] for e in manifest["files"]}
    assert {"plates/plate1.ome.zarr/zarr.json", "plates/plate1.ome.zarr/B/zarr.json",
            "plates/plate1.ome.zarr/B/3/zarr.json"} <= listed
    qc = json.loads((vdir / "qc" / "report.json").read_text())
    assert {"plate1_B03_f1", "plate1_B03_f2", "plate1_C10_f1", "plate1_C10_f4"} <= {r["image_id"] for r in qc["images"]}
    crate = {n["@id"]: n for n in json.loads((vdir / "ro-crate-metadata.json").read_text())["@graph"]}
    field = crate["plates/plate1.ome.zarr/B/3/0/"]
    assert field["@type"] == "Dataset" and {"@id": "plates/plate1.ome.zarr/B/3/0/labels/nuclei/"} in field["hasPart"]
    assert crate["plates/plate1.ome.zarr/zarr.json"]["@type"] == "File"
    (tmp_path / "crate").mkdir()
    assert crate_problems(vdir, tmp_path / "crate") == []
    [traced] = lineage_of(str(archive), pub.accession, image="plate1_C10_f4")["images"]
    assert {"convert", "pyramid", "compress"} <= {s["stage"] for s in traced["stages"]} and traced["tree_digest"]
    page = (vdir / "index.html").read_text()
    assert "Plate <a href='plates/plate1.ome.zarr/zarr.json'>plate1</a>" in page and "2 well(s), 4 field(s)" in page

    # a metadata-only version shares the plate whole, and its fields open at the same paths
    submission(sub, files, plates=[{"name": "plate1", "pattern": PATTERN}],
               title="A screen of HeLa cells on one plate, corrected")
    second = ingest(str(sub), str(archive), config)
    assert (second.status, second.version) == ("published", 2)
    assert not (archive / pub.accession / "v2" / "plates").exists()
    again = {o.image_id: o for o in second.images}
    assert again["plate1_B03_f2"].path == "../v1/plates/plate1.ome.zarr/B/3/1"
    from zarrchive.archive.fixity import audit

    checked = audit(str(archive), f"{pub.accession}/v2")
    assert checked.problems == [] and checked.hashed > 0


def test_a_screening_set_is_published_as_the_plate_its_ome_xml_describes_in_ngff_04(tmp_path, config_file):
    import zarr
    from ome_zarr_models.v04.hcs import HCS

    sub = tmp_path / "set"
    fields = [random_image((24, 20), seed=i) for i in range(3)]
    names = [f"field{i}.ome.tif" for i in range(3)]
    screening_files(sub / "run1", fields, names, {"x": 0.65, "y": 0.65}, wells=[(0, 0, 0), (0, 0, 1), (2, 5, 0)],
                    plate="Screen 1")
    submission(sub, [{"path": f"run1/{n}"} for n in names])
    pub = ingest(str(sub), str(tmp_path / "archive"), config_file(compress={"ngff": "0.4"}))
    assert pub.status == "published", pub.reasons
    paths = sorted(o.path for o in pub.images)
    assert paths == ["plates/run1_Screen_1.ome.zarr/A/1/0", "plates/run1_Screen_1.ome.zarr/A/1/1",
                     "plates/run1_Screen_1.ome.zarr/C/6/0"]  # (named after its folder too: two folders, two plates)
    plate = tmp_path / "archive" / pub.accession / "v1" / "plates" / "run1_Screen_1.ome.zarr"
    HCS.from_zarr(zarr.open_group(str(plate), mode="r", zarr_format=2))
    well = json.loads((plate / "A" / "1" / ".zattrs").read_text())["well"]
    assert well == {"images": [{"path": "0"}, {"path": "1"}], "version": "0.4"}
    for i, path in enumerate(["A/1/0", "A/1/1", "C/6/0"]):
        level0 = np.asarray(zarr.open_array(str(plate / path / "0"), mode="r"))
        np.testing.assert_array_equal(level0.reshape(fields[i].shape), fields[i])


def test_a_file_that_is_a_field_must_hold_one_image(tmp_path, settings):
    from zarrchive.tasks.convert import convert_file

    from zarrchive.errors import InputError

    path = tmp_path / "B03.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(random_image((16, 16), seed=1), metadata={"axes": "YX"})
        tif.write(random_image((16, 16), seed=2), metadata={"axes": "YX"})
    entry = FileEntry(path="B03.ome.tif", well={"plate": "p", "row": "B", "column": "3"})
    with pytest.raises(InputError, match=r"B03.ome.tif: is field 0 of well B3 of plate p, and a field is one "
                                         r"image, but it holds 2 series"):
        convert_file(staged(path, "B03.ome.tif"), entry, str(tmp_path / "work"), settings.convert)
