"""Real files' quirks, as a class: optional TIFF tags absent, units spelt every way, a screening file submitted
without the rest of its plate. Each converts exactly (level 0 against the file's own reader) or is refused
naming the file and the reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from builders import OPTIONAL_TIFF_TAGS, bare_tiff, plain_tiff, random_image, screening_files, staged, svs_file
from zarrchive.errors import InputError
from zarrchive.tasks.compress import compress_image
from zarrchive.tasks.convert import convert_file
from zarrchive.tasks.pyramid import build_pyramid


def convert_and_read(path, settings, tmp_path, rel=None, companions=None):
    """Every image of ``path`` converted and compressed; (image record, level 0 as stored, store path) each."""
    record = staged(path, rel)
    out = []
    for image in convert_file(record, None, str(tmp_path / "work"), settings.convert, companions):
        image = build_pyramid(image, settings.pyramid)
        report = compress_image(image, record, str(tmp_path / "work"), settings.compress, settings.cluster.address)
        out.append((image, zarr.open_array(f"{report.store}/0", mode="r")[...], report.store))
    return out


CASES = {f"without {name}": {tag} for tag, name in OPTIONAL_TIFF_TAGS.items()}
CASES["without any optional tag"] = set(OPTIONAL_TIFF_TAGS)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_a_tiff_without_optional_tags_converts_exactly(tmp_path, settings, case, dtype):
    data = random_image((3, 40, 36), dtype)
    path = bare_tiff(tmp_path / "bare.tif", data, CASES[case])
    [(image, level0, _store)] = convert_and_read(path, settings, tmp_path)
    with tifffile.TiffFile(path) as tif:  # the file's own reader
        expected = tif.asarray().reshape(data.shape)
    # without SampleFormat the bits are unsigned integers (its default) for every reader: for the archive too
    np.testing.assert_array_equal(level0.reshape(expected.shape), expected)
    assert image.lossy_source is None


def test_units_spelt_any_way_are_written_as_ome_ngff_names(tmp_path, settings):
    store = tmp_path / "in.ome.zarr"
    group = zarr.open_group(str(store), mode="w", zarr_format=3)
    group.create_array("0", shape=(3, 16, 16), chunks=(1, 16, 16), dtype="uint16")[...] = random_image((3, 16, 16))
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "t", "type": "time", "unit": "seconds"}, {"name": "y", "type": "space", "unit": "micron"},
                 {"name": "x", "type": "space", "unit": "µm"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.5, 0.5, 0.5]}]}]}]}
    [(image, _level0, out)] = convert_and_read(store, settings, tmp_path)
    axes = {a.name: a.unit for a in image.axes}
    assert axes == {"t": "second", "c": None, "y": "micrometer", "x": "micrometer"}
    written = json.loads((tmp_path / "work" / "compress" / out.rsplit("/", 1)[-1] / "zarr.json").read_text())
    units = {a["name"]: a.get("unit") for a in written["attributes"]["ome"]["multiscales"][0]["axes"]}
    assert units["t"] == "second" and units["x"] == "micrometer"


def test_imagej_units_and_frame_interval_units_are_normalised(tmp_path, settings):
    data = random_image((4, 2, 24, 24), "uint16")  # T C Y X
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(2.0, 2.0),
                     metadata={"axes": "TCYX", "unit": "micron", "finterval": 1.5, "tunit": "min"})
    [(image, level0, _)] = convert_and_read(path, settings, tmp_path)
    axes = {a.name: a.unit for a in image.axes}
    assert axes["t"] == "minute" and axes["x"] == "micrometer" and image.levels[0].scale[0] == 1.5
    np.testing.assert_array_equal(level0, data)


def test_a_screening_field_submitted_alone_converts_its_own_image_and_names_the_missing_files(tmp_path, settings):
    fields = [random_image((2, 24, 20), seed=i) for i in range(4)]
    names = [f"A1_f{i}.ome.tif" for i in range(4)]
    paths = screening_files(tmp_path / "plate", fields, names, {"x": 0.65, "y": 0.65})
    for p in paths[:2] + paths[3:]:
        p.unlink()  # only field 2 was submitted
    [(image, level0, _)] = convert_and_read(paths[2], settings, tmp_path, rel="plate/A1_f2.ome.tif")
    np.testing.assert_array_equal(level0.reshape(fields[2].shape), fields[2])
    assert image.series == 2 and image.layout.tiff_series == 0 and image.series_name
    assert image.levels[0].scale[-1] == pytest.approx(0.65)
    [note] = image.notes
    assert "plate/A1_f0.ome.tif" in note and "plate/A1_f3.ome.tif" in note and "not in the submission" in note


def test_a_set_image_with_planes_in_a_missing_file_is_still_an_error(tmp_path, settings):
    from builders import ome_tiff_file_set

    paths = ome_tiff_file_set(tmp_path / "set", random_image((4, 16, 16)), ["s_0.ome.tif", "s_1.ome.tif"])
    paths[1].unlink()
    with pytest.raises(InputError, match=r"set/s_0.ome.tif: .*member\(s\) set/s_1.ome.tif are not in the "
                                         r"submission, and none of its images lies in this file alone"):
        convert_file(staged(paths[0], "set/s_0.ome.tif"), None, str(tmp_path / "work"), settings.convert)


# ---------------------------------------------------------------- MRC (electron microscopy)

MRC_KINDS = {  # shape, stack?, the axes the archive gives the image
    "a micrograph": ((48, 40), False, ("c", "y", "x")),
    "a movie (image stack)": ((5, 48, 40), True, ("t", "c", "y", "x")),
    "a tomogram (volume)": ((6, 48, 40), False, ("c", "z", "y", "x")),
}


@pytest.mark.parametrize("kind", MRC_KINDS)
@pytest.mark.parametrize("dtype", ["int8", "int16", "uint16", "float32", "float16"])
def test_mrc_files_convert_exactly_with_their_voxel_size_in_angstrom(tmp_path, settings, kind, dtype):
    import mrcfile

    from builders import mrc_file

    shape, stack, axes = MRC_KINDS[kind]
    path = mrc_file(tmp_path / "emd.mrc", random_image(shape, dtype), (1.06, 1.06, 2.5), stack=stack)
    [(image, level0, store)] = convert_and_read(path, settings, tmp_path)
    with mrcfile.open(path, permissive=True) as mrc:  # the format's own reader
        expected = np.asarray(mrc.data)
    assert tuple(a.name for a in image.axes) == axes and image.reader == "zarrchive_mrc"
    np.testing.assert_array_equal(level0.reshape(expected.shape), expected)
    units = {a.name: a.unit for a in image.axes}
    assert units["x"] == "angstrom" and image.levels[0].scale[-1] == pytest.approx(1.06)
    if "z" in units:
        assert image.levels[0].scale[axes.index("z")] == pytest.approx(2.5)
    header = json.loads(open(f"{store}/OME/mrc-header.json").read())
    assert header["fields"]["nx"] == 40


def test_imod_unsigned_bytes_and_an_epu_extended_header(tmp_path, settings):
    from builders import mrc_file

    data = random_image((3, 32, 32), "uint8")
    path = mrc_file(tmp_path / "movie.mrcs", data, stack=True, fei_frames=3, imod_unsigned=True)
    [(image, level0, store)] = convert_and_read(path, settings, tmp_path)
    assert image.dtype == "uint8"
    np.testing.assert_array_equal(level0.reshape(data.shape), data)
    header = json.loads(open(f"{store}/OME/mrc-header.json").read())
    assert header["extended_header_type"] == "FEI1" and [r["Dose"] for r in header["extended_header"]] == [
        1.5, 2.5, 3.5]


def test_a_damaged_or_complex_mrc_is_refused_naming_the_file(tmp_path, settings):
    from builders import mrc_file
    from zarrchive.errors import UnsupportedFormat

    path = mrc_file(tmp_path / "cut.mrc", random_image((4, 32, 32), "float32"))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match=r"cut.mrc: truncated"):
        convert_file(staged(path), None, str(tmp_path / "work"), settings.convert)
    complex_map = tmp_path / "fft.mrc"
    import mrcfile

    with mrcfile.new(str(complex_map)) as mrc:
        mrc.set_data(np.zeros((8, 8), dtype=np.complex64))
    with pytest.raises(UnsupportedFormat, match=r"fft.mrc: an MRC map of complex numbers"):
        convert_file(staged(complex_map), None, str(tmp_path / "work"), settings.convert)


def test_electron_microscopy_gets_the_electron_modality_from_its_method(tmp_path):
    from zarrchive.config import load_settings
    from zarrchive.records import ImagingMethod
    from zarrchive.tasks.qc import choose_modality

    qc = load_settings().qc
    for name in ("cryo-electron microscopy", "cryo-electron tomography", "transmission electron microscopy"):
        assert choose_modality(qc, ImagingMethod(name=name)) == "electron", name


# ---------------------------------------------------------------- Imaris


def test_an_imaris_file_converts_level_0_cropped_with_its_channels_voxel_size_and_time_step(tmp_path, settings):
    from builders import imaris_file

    data = random_image((2, 2, 5, 30, 40), "uint16")
    path = imaris_file(tmp_path / "embryo.ims", data, voxel=(0.5, 0.2, 0.2), seconds=2.0)
    [(image, level0, store)] = convert_and_read(path, settings, tmp_path)
    np.testing.assert_array_equal(level0, data)  # the padding Imaris adds to whole chunks is not part of it
    assert tuple(a.name for a in image.axes) == ("t", "c", "z", "y", "x") and image.reader == "zarrchive_imaris"
    assert image.channel_names == ("DAPI", "GFP") and image.channel_colours == ("0000FF", "00FF00")
    assert image.levels[0].scale == pytest.approx((2.0, 1.0, 0.5, 0.2, 0.2))
    assert {a.name: a.unit for a in image.axes}["t"] == "second"
    info = json.loads(open(f"{store}/OME/imaris-DataSetInfo.json").read())
    assert info["Image"]["Name"] == "embryo"


def test_a_damaged_imaris_file_is_refused_naming_the_file(tmp_path, settings):
    import h5py

    from builders import imaris_file

    path = imaris_file(tmp_path / "bad.ims", random_image((1, 1, 4, 20, 20), "uint8"))
    with h5py.File(path, "a") as f:
        f["DataSetInfo/Image"].attrs["X"] = np.array([b"9", b"9", b"9"], dtype="S1")  # larger than its data
    with pytest.raises(InputError, match=r"bad.ims: damaged Imaris file"):
        convert_file(staged(path), None, str(tmp_path / "work"), settings.convert)


# ---------------------------------------------------------------- containers that hide the image elsewhere


def test_a_vsi_file_is_never_archived_as_its_overview(tmp_path, settings):
    """A cellSens .vsi is a TIFF holding an RGB overview; the image is in companion .ets files. Without them, or
    without the plugin that reads them, it is refused, named; it never becomes its overview."""
    path = tmp_path / "slide.vsi"
    tifffile.imwrite(path, random_image((64, 80, 3), "uint8"), photometric="rgb")  # what the .vsi itself holds
    with pytest.raises(InputError) as refused:
        convert_file(staged(path), None, str(tmp_path / "work"), settings.convert)
    assert str(refused.value).startswith("slide.vsi: ")


def test_a_vsi_file_without_its_plugin_names_the_plugin(tmp_path, settings, monkeypatch):
    import importlib

    from zarrchive.errors import UnsupportedFormat

    real = importlib.import_module

    def without_vsi(name, *args, **kwargs):
        if name == "bioio_vsi":
            raise ImportError("No module named 'bioio_vsi'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", without_vsi)
    path = tmp_path / "slide.vsi"
    tifffile.imwrite(path, random_image((64, 80, 3), "uint8"), photometric="rgb")
    with pytest.raises(UnsupportedFormat, match=r"slide.vsi: Olympus/Evident cellSens VSI: the .vsi file holds only "
                                                r"an overview.*bioio-vsi \(pip install 'zarrchive\[vsi\]'"):
        convert_file(staged(path), None, str(tmp_path / "work"), settings.convert)


# ---------------------------------------------------------------- whole-slide files


def test_an_aperio_slide_is_archived_calibrated_and_its_label_and_macro_beside_it_by_name(tmp_path, settings):
    slide = random_image((512, 768, 3), "uint8")
    path = svs_file(tmp_path / "slides" / "case7.svs", slide)
    converted = {image.image_id: (image, level0) for image, level0, _ in
                 convert_and_read(path, settings, tmp_path, "slides/case7.svs")}
    assert set(converted) == {"slides_case7", "slides_case7_thumbnail", "slides_case7_label", "slides_case7_macro"}
    image, level0 = converted["slides_case7"]
    np.testing.assert_array_equal(np.moveaxis(level0.reshape(3, 512, 768), 0, -1), slide)  # the slide, whole
    assert {a.name: (a.unit, s) for a, s in zip(image.axes, image.levels[0].scale)} == {
        "c": (None, 1.0), "y": ("micrometer", 0.499), "x": ("micrometer", 0.499)}
    thumbnail, _ = converted["slides_case7_thumbnail"]
    assert thumbnail.shape[-2:] == (128, 192) and not thumbnail.calibrated  # (its MPP is the slide's, not its own)
    label, level0 = converted["slides_case7_label"]
    assert level0.reshape(3, 60, 80).max() == 230 and not label.calibrated
    assert any("personal data" in note and "slides_case7_label" in note for note in label.notes)
    assert any("paper label" in note for note in converted["slides_case7_macro"][0].notes)
    assert not image.notes


@pytest.mark.parametrize("mpp, associated", [(None, ("label", "macro")), (0.25, ()), (0.25, ("macro",))])
def test_an_aperio_slide_without_its_pixel_size_or_associated_images_still_names_the_slide(
        tmp_path, settings, mpp, associated):
    path = svs_file(tmp_path / "s.svs", random_image((300, 400, 3), "uint8"), mpp, associated)
    images = {image.image_id: image for image in convert_file(staged(path), None, str(tmp_path / "work"),
                                                              settings.convert)}
    assert set(images) == {"s", "s_thumbnail", *(f"s_{a}" for a in associated)}
    assert images["s"].calibrated == (mpp is not None)
    if mpp:
        assert images["s"].levels[0].scale[-1] == mpp


def test_an_imagej_hyperstack_with_slice_labels_and_a_huge_info_block_converts_exactly(tmp_path, settings):
    data = random_image((4, 2, 64, 48))  # z, c, y, x
    info = "Camera = Orca Flash 4.0\n" + ("acquisition log line " * 5 + "\n") * 80_000  # about 8 MB
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.2, 1 / 0.2), metadata={
        "axes": "ZCYX", "unit": "micron", "spacing": 0.5, "Labels": [f"z{z} ch{c}" for z in range(4) for c in range(2)],
        "Info": info})
    [(image, level0, store)] = convert_and_read(path, settings, tmp_path)
    assert {a.name: (a.unit, s) for a, s in zip(image.axes, image.levels[0].scale)} == {
        "c": (None, 1.0), "z": ("micrometer", 0.5), "y": ("micrometer", 0.2), "x": ("micrometer", 0.2)}
    with tifffile.TiffFile(path) as tif:
        np.testing.assert_array_equal(level0, np.moveaxis(tif.asarray(), 1, 0))
    assert len(open(image.metadata_xml).read()) < 100_000  # the Info block is not carried (the original keeps it)


# ---------------------------------------------------------------- the format objects' contract


def _samples(tmp_path):
    """One small file of each kind a format object reads, with the reader's name it must be read by."""
    import imageio.v3 as iio
    import mrcfile

    from builders import ome_tiff, plain_tiff

    png = tmp_path / "figure.tif"  # a PNG named as a TIFF
    iio.imwrite(png, random_image((20, 24), "uint8"), extension=".png")
    jpeg = tmp_path / "photo.jpeg"
    iio.imwrite(jpeg, np.full((16, 16, 3), 90, "uint8"), extension=".jpg")
    with mrcfile.new(tmp_path / "map.mrc") as mrc:
        mrc.set_data(random_image((3, 16, 16), "int16"))
    return [(ome_tiff(tmp_path / "a.tif", random_image((2, 16, 16)), "CYX"), "bioio_ome_tiff"),
            (plain_tiff(tmp_path / "b.ome.tif", random_image((16, 16), "uint8"), ome=False), "bioio_tifffile"),
            (svs_file(tmp_path / "slide.svs", random_image((512, 512, 3), "uint8")), "bioio_tifffile"), (png, "bioio_imageio"),
            (jpeg, "bioio_imageio"), (tmp_path / "map.mrc", "zarrchive_mrc")]


def test_every_format_is_chosen_by_content_and_found_images_read_as_described(tmp_path, settings):
    """The protocol every format object keeps: identify chooses it from the content (never the name), its images
    are described from the headers (shape in t, c, z, y, x; a layout in the image's axes) and the pixels read
    through that layout are the file's."""
    from zarrchive import formats
    from zarrchive.pixels.sources import read_region

    for path, reader in _samples(tmp_path):
        assert formats.identify(str(path), path.name).name == reader, path
        assert formats.by_name(reader).name == reader
        with formats.Opened(staged(path, path.name), settings.convert.limits) as opened:
            found = formats.identify(str(path), path.name, opened).images(opened)
            assert found and all(f.reader in (reader, "bioio_tifffile") and len(f.tczyx) == 5 for f in found)
            for image in found:
                axes = tuple(a for a, n in zip("tczyx", image.tczyx) if n > 1 or a in "cyx")
                layout = image.layout(axes)
                shape = tuple(n for a, n in zip("tczyx", image.tczyx) if a in axes)
                block = read_region(str(path), layout, tuple(slice(0, n) for n in shape))
                assert block.shape == shape and str(block.dtype) == image.dtype, (path, image.index)


def test_a_tiff_is_opened_once_by_zarrchive_however_many_questions_convert_asks(tmp_path, settings, monkeypatch):
    """Format, budget, completeness, metadata, layout, compression, slide roles, plate positions and the OME-XML
    all come from one open TiffFile (the bioio reader opens its own)."""
    import traceback

    from builders import ome_tiff

    opened_by = []
    original = tifffile.TiffFile.__init__

    def counting(self, *args, **kwargs):
        caller = next(f for f in reversed(traceback.extract_stack()[:-1]) if "tifffile" not in f.filename)
        opened_by.append(caller.filename)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffFile, "__init__", counting)
    path = ome_tiff(tmp_path / "a.ome.tif", random_image((2, 3, 32, 32)), "CZYX", {"x": 0.5, "y": 0.5, "z": 1.0})
    [image] = convert_file(staged(path, "a.ome.tif"), None, str(tmp_path / "w"), settings.convert)
    ours = [f for f in opened_by if "/bioio" not in f]
    assert len(ours) == 1 and image.calibrated, opened_by


def test_each_series_of_a_file_is_read_through_its_own_layout(tmp_path, settings, scheduler):
    """The layout of every series is decided while that series is the reader's current one: a file whose series
    differ in shape reads each one's own pixels straight from the file (not the last series', not through a
    fallback that would read another series)."""
    from builders import archive_images

    first, second = random_image((40, 48), "uint16", 1), random_image((3, 24, 32), "uint16", 2)
    path = tmp_path / "two.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(first)
        tw.write(second)
    done = archive_images(path, tmp_path / "w", settings, scheduler, convert={"chunk_xy": 16})
    assert [image.layout.tiff_axes for image, _ in done] == ["YX", "SYX"]  # both read straight by tifffile
    for (image, report), data in zip(done, (first, second)):
        np.testing.assert_array_equal(zarr.open_array(f"{report.store}/0", mode="r")[...].reshape(data.shape), data)


def test_a_tiff_whose_first_page_points_past_its_end_is_refused(tmp_path, settings):
    """What tifffile complains of while opening a file (here a tag whose value lies past the end of the file)
    refuses it, naming it: it is never converted from what tifffile could still read."""
    import struct

    path = tmp_path / "soft.tif"
    tifffile.imwrite(path, random_image((32, 32), "uint8"), software="x" * 40, metadata=None)
    with tifffile.TiffFile(path) as tif:
        entry = tif.pages[0].tags["Software"].offset
    damaged = bytearray(path.read_bytes())
    damaged[entry + 8:entry + 12] = struct.pack("<I", len(damaged) + 1000)
    path.write_bytes(bytes(damaged))
    with pytest.raises(InputError, match="damaged TIFF") as caught:
        convert_file(staged(path, "scans/soft.tif"), None, str(tmp_path / "w"), settings.convert)
    assert caught.value.file == "scans/soft.tif"


def test_a_malformed_ome_xml_is_refused_naming_the_file(tmp_path, settings):
    path = tmp_path / "bad.ome.tif"
    xml = ("<?xml version='1.0'?><!--" + "x" * 5000 + "--><OME xmlns='http://www.openmicroscopy.org/Schemas/OME/"
           "2016-06'><Image ID='Image:0'><Pixels broken</OME>")
    tifffile.imwrite(path, random_image((32, 32), "uint8"), description=xml, metadata=None)
    with pytest.raises(InputError, match="damaged OME-XML") as caught:
        convert_file(staged(path, "bad.ome.tif"), None, str(tmp_path / "w"), settings.convert)
    assert caught.value.file == "bad.ome.tif"


def test_a_series_that_cannot_be_described_is_named_by_its_file(tmp_path, settings):
    path = tmp_path / "ij.tif"  # ImageJ metadata with a negative z spacing: no valid OME-XML can be made of it
    tifffile.imwrite(path, random_image((3, 32, 32), "uint8"), imagej=True, resolution=(10, 10),
                     metadata={"axes": "ZYX", "spacing": -2, "unit": "um"})
    with pytest.raises(InputError) as caught:
        convert_file(staged(path, "sub/ij.tif"), None, str(tmp_path / "w"), settings.convert)
    assert caught.value.file == "sub/ij.tif"


def test_ome_xml_parsed_through_one_shared_context_gives_what_a_fresh_parser_gives(tmp_path):
    """Every OME-XML parse shares one xsdata context (``formats.bioio.share_xml_context``: building a context's
    class metadata was most of a small OME-TIFF's conversion); a document read through it is the same model as one
    read through a parser of its own, document after document of different shapes."""
    from ome_types import _conversion, from_xml
    from xsdata_pydantic_basemodel.bindings import XmlContext

    from zarrchive.formats.bioio import share_xml_context

    share_xml_context()
    assert _conversion.XmlParser().context is _conversion.XmlParser().context
    from concurrent.futures import ThreadPoolExecutor  # one context a thread: a context is not made to be shared

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(lambda: _conversion.XmlParser().context).result() is not _conversion.XmlParser().context
    documents = []
    for i, (shape, axes) in enumerate([((2, 3, 16, 16), "TCYX"), ((4, 16, 16), "ZYX"), ((16, 16, 3), "YXS")]):
        path = tmp_path / f"d{i}.ome.tif"
        tifffile.imwrite(path, np.zeros(shape, np.uint8), ome=True, photometric="rgb" if "S" in axes else None,
                         metadata={"axes": axes, "Channel": {"Name": [f"c{k}" for k in range(shape[1])]}
                                   if axes == "TCYX" else {}, "PhysicalSizeX": 0.25 + i})
        documents.append(tifffile.TiffFile(path).pages[0].description)
    for xml in documents + documents:
        shared = from_xml(xml)
        fresh = _conversion.XmlParser(context=XmlContext()).parse(
            _conversion.ensure_2016(xml, as_tree=True), type(shared))
        assert shared == fresh and shared.images[0].pixels.physical_size_x == fresh.images[0].pixels.physical_size_x


def test_mrc_files_read_in_many_threads_leave_the_process_warnings_as_they_were(tmp_path):
    """Reading MRC files hides or records mrcfile's warnings (``warnings.catch_warnings``, which swaps the process's
    filters): a worker's threads reading several at once must not leave one's filters or recorder installed."""
    import threading
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    from builders import mrc_file
    from zarrchive.formats.mrc import MrcFormat

    paths = [mrc_file(tmp_path / f"m{i}.mrc", random_image((2, 16, 16), "int16")) for i in range(4)]
    for path in paths[:2]:  # a header whose map size does not match its data: mrcfile warns, permissively
        data = bytearray(path.read_bytes())
        data[24:28] = (0).to_bytes(4, "little")  # mx 0
        path.write_bytes(bytes(data))
    fmt = MrcFormat()
    filters, shown = list(warnings.filters), warnings.showwarning
    start = threading.Barrier(8)

    def read(i: int) -> None:
        start.wait() if i < 8 else None
        for _ in range(15):
            path = str(paths[i % len(paths)])
            fmt.describe(path, path)
            fmt.array(path, 0)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(read, range(32)))
    assert warnings.showwarning is shown
    assert warnings.filters == filters


def _tiff_kinds(folder):
    """Every kind of TIFF the tifffile-alone description must answer as bioio-tifffile does (or leave to it)."""
    two = folder / "two-series.tif"
    with tifffile.TiffWriter(two) as tw:
        tw.write(random_image((40, 48), "uint16", 1))
        tw.write(random_image((3, 24, 32), "uint16", 2))
        tw.write(random_image((2, 5, 24, 32), "uint8", 3))
    kinds = {"two-series.tif": two, "slide.svs": svs_file(folder / "slide.svs", random_image((512, 512, 3), "uint8"))}
    writes = {
        "gray.tif": (random_image((32, 48), "uint8"), {}),
        "float.tif": (random_image((32, 48), "float32"), {"tile": (16, 16), "compression": "zlib"}),
        "big-endian.tif": (random_image((3, 32, 48), "uint16"), {"byteorder": ">", "metadata": {"axes": "ZYX"}}),
        "shaped-q.tif": (random_image((5, 32, 48), "uint16"), {}),
        "shaped-qq.tif": (random_image((2, 5, 32, 48), "uint16"), {}),
        "shaped-6d.tif": (random_image((2, 1, 2, 3, 16, 16), "uint8"), {}),
        "generic-pages.tif": (random_image((4, 32, 48), "uint16"), {"metadata": None}),
        "planar-rgb.tif": (random_image((3, 32, 48), "uint8"), {"photometric": "rgb", "planarconfig": "separate"}),
        "rgb.tif": (random_image((32, 48, 3), "uint8"), {"photometric": "rgb"}),
        "rgba.tif": (random_image((32, 48, 4), "uint8"), {"photometric": "rgb", "extrasamples": ["unassalpha"]}),
        "extra-sample.tif": (random_image((32, 48, 2), "uint16"), {"photometric": "minisblack", "planarconfig":
                                                                   "contig"}),
        "ordered.tif": (random_image((2, 3, 4, 16, 16), "uint16"), {"metadata": {"axes": "TCZYX"}}),
        "reordered.tif": (random_image((3, 2, 16, 16), "uint16"), {"metadata": {"axes": "ZCYX"}}),
        "other-letters.tif": (random_image((2, 3, 16, 16), "uint16"), {"metadata": {"axes": "RHYX"}}),
        "twice.tif": (random_image((2, 3, 16, 16), "uint16"), {"metadata": {"axes": "ZZYX"}}),
        "rgb-stack.tif": (random_image((4, 32, 48, 3), "uint8"), {"photometric": "rgb"}),
        "imagej.tif": (random_image((2, 3, 2, 16, 16), "uint16"), {"imagej": True, "metadata": {"axes": "TZCYX"}}),
        "imagej-z.tif": (random_image((5, 16, 16), "float32"), {"imagej": True, "metadata": {"axes": "ZYX"}}),
        "imagej-rgb.tif": (random_image((3, 16, 16, 3), "uint8"), {"imagej": True, "metadata": {"axes": "ZYXS"}}),
        "rgb-channels.tif": (random_image((2, 16, 16, 3), "uint8"), {"photometric": "rgb",
                                                                     "metadata": {"axes": "CYXS"}}),
    }
    for name, (data, kwargs) in writes.items():
        kinds[name] = plain_tiff(folder / name, data, **kwargs)
    # damaged: an ImageJ stack declaring 5 planes holding 1; a second page whose tag points past the end
    kinds["imagej-short.tif"] = plain_tiff(folder / "imagej-short.tif", random_image((16, 16), "uint16"),
                                           description="ImageJ=1.11a\nimages=5\nslices=5\n", metadata=None)
    kinds["bad-second-page.tif"] = path = folder / "bad-second-page.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(random_image((16, 16), "uint16"), metadata=None)
        tw.write(random_image((8, 8), "uint16"), metadata=None, datetime="2026:01:01 00:00:00")
    with tifffile.TiffFile(path) as tif:
        entry = tif.pages[1].tags["DateTime"].offset
    damaged = bytearray(path.read_bytes())
    damaged[entry + 8:entry + 12] = (len(damaged) + 1000).to_bytes(4, "little")
    path.write_bytes(bytes(damaged))
    kinds["unnamed-and-other.tif"] = plain_tiff(folder / "unnamed-and-other.tif", random_image((3, 3, 16, 16)),
                                                metadata={"axes": "QHYX"})
    return kinds


def _described(path, settings):
    from zarrchive import formats

    try:
        with formats.Opened(staged(path, path.name), settings.convert.limits) as opened:
            found = formats.identify(str(path), path.name, opened).images(opened)
    except InputError as exc:
        return ("error", exc.file, str(exc))
    shapes = [tuple(a for a, n in zip("tczyx", f.tczyx) if n > 1 or a in "cyx") for f in found]
    return [({k: v for k, v in vars(f).items() if k != "layout"}, f.layout(axes)) for f, axes in zip(found, shapes)]


def test_a_lif_file_described_by_liffile_alone_is_described_as_bioio_lif_describes_it(tmp_path, settings,
                                                                                       monkeypatch):
    """``LifScenes`` stands in for bioio-lif (whose import costs 2.4 s) only where it gives what bioio gives: on
    each kind of LIF file (channels named by their LUT or by a WideFieldChannelInfo, one plane or a stack, 8 and
    16 bits, a length in another unit than metres) the images found (shape, dtype, names, pixel sizes, channel
    names, how they are read) are the same either way; what is not a LIF file it leaves to others."""
    pytest.importorskip("bioio_lif", reason="the LIF reader plugin (zarrchive[lif]) is not installed")
    from builders import lif_file

    from zarrchive.formats.plugins import LifScenes

    info = '<WideFieldChannelInfo LUT="Green" ContrastingMethodName="FLUO" FluoCubeName="GFP"/>'
    kinds = {
        "stack.lif": lif_file(tmp_path / "stack.lif", random_image((2, 3, 40, 48)), (1.5, 0.2, 0.2),
                              ["Green", "Red"]),
        "plane.lif": lif_file(tmp_path / "plane.lif", random_image((1, 1, 30, 20), "uint8"), (1.0, 0.3, 0.3),
                              ["Gray"]),
        "named.lif": lif_file(tmp_path / "named.lif", random_image((2, 4, 16, 24)), (2.0, 0.1, 0.1),
                              ["Green", "Blue"], extra=info),
        "microns.lif": lif_file(tmp_path / "microns.lif", random_image((1, 2, 16, 16)), (0.5, 0.25, 0.25),
                                ["Gray"], unit="um"),
    }
    alone = {name: _described(path, settings) for name, path in kinds.items()}
    assert all(LifScenes.of(str(path)) is not None for path in kinds.values())
    assert LifScenes.of(str(plain_tiff(tmp_path / "not.tif", random_image((2, 8, 8))))) is None
    monkeypatch.setattr(LifScenes, "of", classmethod(lambda cls, path: None))
    for name, path in kinds.items():
        assert alone[name] == _described(path, settings), name
    [(found, layout)] = alone["named.lif"]
    assert found["metadata"].channel_names == ["Green--FLUO--GFP", "Blue"] and layout.stored_axes == "zcyx"
    assert found["metadata"].pixel_size["z"] == pytest.approx(2.0)


def test_a_czi_file_described_from_its_subblocks_and_metadata_is_described_as_bioio_czi_describes_it(
        tmp_path, settings, monkeypatch):
    """``CziScenes`` stands in for bioio-czi (whose import costs 2 s) only where it gives what bioio gives: on each
    kind of CZI file of one subblock per plane (named, unnamed and empty-named channels, a time lapse, 8 and 16
    bits and float, a z scale, one of 0 and none, two described scenes) the images found (shape, dtype, names,
    pixel sizes, channel names, how they are read) are the same either way; what it cannot be sure of it leaves
    to bioio-czi: a mosaic, scenes not described, planes whose indices do not start at 0 (bioio-czi counts from
    0), scenes of two pixel types (bioio-czi gives the file one), a file libCZI cannot read."""
    pytest.importorskip("bioio_czi", reason="the CZI reader plugin (zarrchive[czi]) is not installed")
    from builders import czi_file, czi_kinds

    from zarrchive.formats.plugins import CziScenes

    kinds = {name: Path(path) for name, (path, _scenes) in czi_kinds(tmp_path).items()}
    grey, plane = random_image((20, 24), "uint16"), {"C": 0, "Z": 0, "T": 0}
    left = {"mosaic": [(plane, grey, (0, 0), 0, None), (plane, grey, (24, 0), 0, None)],
            "undescribed": [(plane, grey, (0, 0), 0, None), (plane, grey, (0, 0), 1, None)],
            "late-channels": [({**plane, "C": c}, grey, (0, 0), 0, None) for c in (1, 2)],
            "late-planes": [({**plane, "Z": z}, grey, (0, 0), 0, None) for z in (2, 3)]}
    kinds.update({f"{name}.czi": Path(czi_file(tmp_path / f"{name}.czi", planes)) for name, planes in left.items()})
    kinds["two-types.czi"] = Path(czi_file(tmp_path / "two-types.czi", [
        (plane, grey, (0, 0), 0, None), (plane, (grey >> 8).astype("uint8"), (0, 0), 1, None)], scenes=2))
    damaged = tmp_path / "damaged.czi"
    damaged.write_bytes(b"ZISRAWFILE" + bytes(200))
    kinds["damaged.czi"] = damaged
    alone = {name: _described(path, settings) for name, path in kinds.items()}
    stood_in = {name for name, path in kinds.items() if CziScenes.of(str(path)) is not None}
    assert stood_in == set(kinds) - {f"{name}.czi" for name in [*left, "two-types", "damaged"]}
    monkeypatch.setattr(CziScenes, "of", classmethod(lambda cls, path: None))
    for name, path in kinds.items():
        assert alone[name] == _described(path, settings), name
    [(found, layout)] = alone["channels"]
    assert found["metadata"].channel_names == ["DAPI", "GFP"] and layout.stored_axes == "tczyx"
    assert found["metadata"].pixel_size == {"z": pytest.approx(1.0), "y": pytest.approx(0.2), "x": pytest.approx(0.2)}
    assert [f["name"] for f, _layout in alone["scenes"]] == ["P1", "P2"]
    assert alone["float"][0][0]["metadata"].pixel_size["z"] is None
    assert alone["empty-name"][0][0]["metadata"].channel_names == ["", "B"]
    assert alone["undescribed.czi"][0] == "error" and "2 scenes" in alone["undescribed.czi"][2]


def test_a_czi_of_jpeg_or_jpeg_xr_subblocks_is_reported_as_a_lossy_source(tmp_path, settings, monkeypatch):
    """ZEN stores JPEG XR subblocks (lossy unless set to lossless), slide scanners JPEG: such a scene is
    reported as a lossy source, named by its compression (as a TIFF of such tiles is); raw and zstd ones are not;
    in a file of two scenes, only the scene that holds them; in a file whose S indices leave a gap (which
    bioio-czi counts otherwise), every scene; in a file of more subblocks than are recorded, still."""
    pytest.importorskip("bioio_czi", reason="the CZI reader plugin (zarrchive[czi]) is not installed")
    from builders import czi_declaring_compression, czi_file

    grey, plane = random_image((20, 24), "uint16"), {"C": 0, "Z": 0, "T": 0}
    kinds = {}
    for name, code in (("jpegxr", 4), ("jpeg", 1), ("raw", None)):
        path = czi_file(tmp_path / f"{name}.czi", [(plane, grey, (0, 0), 0, None)])
        kinds[name] = Path(czi_declaring_compression(path, code) if code else path)
    kinds["zstd"] = Path(czi_file(tmp_path / "zstd.czi", [(plane, grey, (0, 0), 0, "zstd0:ExplicitLevel=1")]))
    described = {name: _described(path, settings) for name, path in kinds.items()}
    assert {name: [found["lossy"] for found, _layout in images] for name, images in described.items()} == {
        "jpegxr": ["JPEGXR"], "jpeg": ["JPEG"], "raw": [None], "zstd": [None]}
    two = czi_file(tmp_path / "two.czi", [(plane, grey, (0, 0), 0, None), (plane, grey, (0, 0), 1, None)], scenes=2)
    assert [found["lossy"] for found, _layout in _described(Path(two), settings)] == [None, None]
    czi_declaring_compression(two, 4, scene=1)
    assert [found["lossy"] for found, _layout in _described(Path(two), settings)] == [None, "JPEGXR"]
    gap = czi_file(tmp_path / "gap.czi", [(plane, grey, (0, 0), s, None) for s in (0, 2)], scenes=3)
    czi_declaring_compression(gap, 1, scene=2)
    assert [found["lossy"] for found, _layout in _described(Path(gap), settings)] == ["JPEG"] * 3
    from zarrchive.pixels import czi

    monkeypatch.setattr(czi, "MOST_SUBBLOCKS", 0)
    czi._scenes_of.cache_clear()
    assert [found["lossy"] for found, _layout in _described(kinds["jpegxr"], settings)] == ["JPEGXR"]


def test_converting_a_czi_z_stack_imports_no_bioio(tmp_path):
    """A CZI z-stack of one subblock per plane converts, exactly, without bioio, bioio-czi, xarray or ome-types
    in the process (their imports cost a ``zarrchive convert`` 2 s)."""
    pytest.importorskip("bioio_czi", reason="the CZI reader plugin (zarrchive[czi]) is not installed")
    from builders import czi_kinds

    path, [data] = czi_kinds(tmp_path)["channels"]
    kept = ("bioio", "bioio_base", "bioio_czi", "xarray", "ome_types", "aicspylibczi")
    assert _imported_by_a_conversion(path, tmp_path / "out.ome.zarr", kept) == []
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out.ome.zarr" / "0"), mode="r")[...], data[0])


def _imported_by_a_conversion(path, out, kept: tuple[str, ...]) -> list[str]:
    """The modules of the packages ``kept`` that a fresh process converting ``path`` to ``out`` has imported."""
    import ast
    import subprocess
    import sys

    script = ("import sys; from zarrchive.config import load_settings; "
              "from zarrchive.standalone import convert_to_ome_zarr; "
              f"convert_to_ome_zarr({str(path)!r}, {str(out)!r}, load_settings()); "
              f"print(sorted(m for m in sys.modules if m.split('.')[0] in {kept!r}))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return ast.literal_eval(done.stdout.strip().splitlines()[-1])


def test_a_plain_tiff_described_by_tifffile_alone_is_described_as_bioio_describes_it(tmp_path, settings, monkeypatch):
    """``TiffScenes`` stands in for bioio-tifffile only where it gives what bioio gives: on every kind of TIFF
    (series, unnamed and reordered axes, colour samples, ImageJ hyperstacks, pyramids, big-endian pixels) the
    images found (shape, dtype, names, metadata, how they are read) or the error are the same either way; where
    its axes are not TCZYXS each once, bioio describes the file."""
    from zarrchive.formats.tiff import TiffScenes

    kinds = _tiff_kinds(tmp_path)
    alone = {name: _described(path, settings) for name, path in kinds.items()}
    stood_in = {name for name, path in kinds.items() if TiffScenes.of(tifffile.TiffFile(path)) is not None}
    monkeypatch.setattr(TiffScenes, "of", classmethod(lambda cls, tif: None))
    with_bioio = {name: _described(path, settings) for name, path in kinds.items()}
    colour_stacks = {"rgb-stack.tif"}  # the one deliberate difference: bioio refuses them (test below)
    for name in set(kinds) - colour_stacks:
        assert alone[name] == with_bioio[name], name
    assert all(with_bioio[name][0] == "error" and alone[name][0] != "error" for name in colour_stacks)
    assert stood_in == set(kinds) - {"other-letters.tif", "twice.tif", "shaped-6d.tif", "unnamed-and-other.tif"}
    for name in ("imagej-short.tif", "bad-second-page.tif"):  # refused, never archived in part
        assert alone[name][0] == "error" and "damaged TIFF" in alone[name][2], alone[name]
    assert alone["rgb-channels.tif"][0] == "error"  # named channels and colour samples: refused either way
    # axes with no place among TCZYXS: refused, never archived as their first plane (bioio reads only that)
    assert alone["other-letters.tif"][:2] == ("error", "other-letters.tif") and "R of 2, H of 3" in alone[
        "other-letters.tif"][2]
    assert "axis H of 3 (of CHYX)" in alone["unnamed-and-other.tif"][2]  # its unnamed axis is read: C
    assert [f["tczyx"] for f, _layout in alone["shaped-qq.tif"]] == [(1, 2, 5, 32, 48)]
    assert [f["tczyx"] for f, _layout in alone["two-series.tif"]] == [(1, 1, 1, 40, 48), (1, 3, 1, 24, 32),
                                                                     (1, 2, 5, 24, 32)]


def test_converting_a_plain_tiff_imports_no_bioio(tmp_path):
    """A plain TIFF (tiled, compressed, a z-stack) converts without bioio or ome-types in the process: their
    imports cost a ``zarrchive convert`` 0.6 s and 64 MiB, and 1.3 s and 40 MiB."""
    data = random_image((4, 64, 64), "uint16")
    path = plain_tiff(tmp_path / "stack.tif", data, tile=(32, 32), compression="zlib", metadata={"axes": "ZYX"})
    kept = ("bioio", "bioio_base", "xarray", "ome_types")
    assert _imported_by_a_conversion(path, tmp_path / "out.ome.zarr", kept) == []
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out.ome.zarr" / "0"), mode="r")[...], data[None])


def test_a_tiff_description_with_control_characters_is_kept_escaped(tmp_path, settings):
    """Some acquisition software leaves control characters in a TIFF's description, which XML 1.0 cannot hold:
    the image converts, and the description kept in its generated OME-XML writes them as escapes."""
    from xml.etree import ElementTree

    path = plain_tiff(tmp_path / "ctl.tif", random_image((2, 16, 16), "uint16"), metadata=None,
                      description="scan\x01\x02 gain=3\x1f <ok> & done")
    [image] = convert_file(staged(path, "ctl.tif"), None, str(tmp_path / "w"), settings.convert)
    value = ElementTree.parse(image.metadata_xml).getroot().find(".//{*}CommentAnnotation/{*}Value").text
    assert value == "scan\\x01\\x02 gain=3\\x1f <ok> & done"


@pytest.mark.parametrize("shape, tczyx", [((4, 32, 48, 3), (1, 3, 4, 32, 48)), ((2, 3, 16, 24, 4), (2, 4, 3, 16, 24)),
                                          ((5, 16, 24, 3), (1, 3, 5, 16, 24))])
def test_a_stack_of_colour_planes_saved_without_axis_names_converts_as_z_planes(tmp_path, settings, shape, tczyx):
    """tifffile saves a stack of RGB(A) planes with unnamed axes (``QYXS``); bioio-tifffile names the unnamed axis
    C, and the image had channels and colour samples both, and was refused. It is now a z-stack (or a time series
    of z-stacks) whose colours are its channels, read exactly."""
    from zarrchive.pixels.sources import read_region

    data = random_image(shape, "uint8")
    path = plain_tiff(tmp_path / "colour.tif", data, photometric="rgb")
    [image] = convert_file(staged(path, "colour.tif"), None, str(tmp_path / "w"), settings.convert)
    assert tuple(image.channel_names) == ("R", "G", "B", "A")[: shape[-1]]
    assert tuple(n for n in tczyx if n > 1) == tuple(n for n in image.shape if n > 1)
    block = read_region(str(path), image.layout, tuple(slice(0, n) for n in image.shape))
    expected = np.moveaxis(data, -1, 1 if len(shape) == 5 else 0)  # colours first (after t)
    np.testing.assert_array_equal(block.reshape(expected.shape), expected)
