"""Conversion fidelity, end to end: every input kind x pixel type x 2D/3D/time, through convert, pyramid and compress.

For each case the test writes the input with tifffile or imageio, converts it as an ingestion does, and checks:
level 0 equals the source pixels bit for bit; physical sizes, units, channel names and the time step are the
source's; every level has the planned shape, exact scale and translation, and equals the block mean of the level
above; and the output validates (ome-zarr-models) and opens, with the same pixels, in zarr-python, tensorstore,
ome-zarr-py's reader and bioio (bioio-ome-zarr).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import dask
import numpy as np
import pytest
import tifffile
import zarr

from builders import archive_images, ome_tiff, ome_zarr_input, plain_tiff, random_image
from zarrchive.pixels.blocks import bits, downsample_mean
from zarrchive.ngff import validate_image
from zarrchive.records import factors

SMALL = {"chunk_xy": 16}  # small chunks: several levels from small images


@dataclass(frozen=True)
class Case:
    """An input file and what its conversion must keep."""

    write: Callable[[Path], Path]
    pixels: np.ndarray  # level 0 as expected, in the image's NGFF axes
    axes: str  # NGFF axes, e.g. "czyx"
    scale: dict[str, float] = field(default_factory=dict)  # physical sizes (and the time step) expected
    units: dict[str, str] = field(default_factory=dict)
    channels: tuple[str, ...] | None = None
    colours: tuple[str, ...] | None = None  # the omero colours expected (None: not checked)


def ome(data: np.ndarray, axes: str, sizes: dict[str, float] | None = None, channels: list[str] | None = None,
        **extra) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        if not extra:
            return ome_tiff(path / "in.ome.tif", data, axes, sizes, channels)
        metadata = {"axes": axes, **{f"PhysicalSize{a.upper()}": v for a, v in (sizes or {}).items()},
                    **{f"PhysicalSize{a.upper()}Unit": "µm" for a in (sizes or {})}}
        if channels:
            metadata["Channel"] = {"Name": channels}
        options = dict(extra)
        metadata.update(options.pop("metadata", {}))
        tifffile.imwrite(path / "in.ome.tif", data, ome=True, photometric="minisblack", metadata=metadata, **options)
        return path / "in.ome.tif"
    return write


def pyramidal(data: np.ndarray) -> Callable[[Path], Path]:
    """An OME-TIFF whose sub-resolutions are SubIFDs of the full-resolution pages (as bioformats writes them)."""
    def write(path: Path) -> Path:
        target = path / "pyramid.ome.tif"
        with tifffile.TiffWriter(target, bigtiff=True) as tif:
            options = {"photometric": "minisblack", "tile": (16, 16), "compression": "zlib"}
            tif.write(data, subifds=2, metadata={"axes": "ZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5},
                      **options)
            for level in (1, 2):
                tif.write(data[:, :: 2**level, :: 2**level], subfiletype=1, **options)
        return target
    return write


def imagej(data_tzcyx: np.ndarray) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        return plain_tiff(path / "hyper.tif", data_tzcyx, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                          metadata={"axes": "TZCYX", "spacing": 0.5, "unit": "um", "finterval": 3.0})
    return write


def tiff(data: np.ndarray, **options) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        return plain_tiff(path / "plain.tif", data, **options)
    return write


def omezarr(data: np.ndarray, axes: str, scale: dict[str, float], channels: list[str] | None, version: str,
            units: dict[str, str] | None = None) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        store = ome_zarr_input(path / "in.ome.zarr", data, axes, scale, channels, version)
        if units:  # other units than micrometres, as the axes declare them
            group = zarr.open_group(str(store), mode="r+")
            attrs = group.attrs.asdict()
            multiscale = (attrs["ome"] if version == "0.5" else attrs)["multiscales"][0]
            for axis in multiscale["axes"]:
                if axis["name"] in units:
                    axis["unit"] = units[axis["name"]]
            group.attrs.put(attrs)
        return store
    return write


def png(data: np.ndarray) -> Callable[[Path], Path]:
    def write(path: Path) -> Path:
        import imageio.v3 as iio

        iio.imwrite(path / "figure.png", data, extension=".png")
        return path / "figure.png"
    return write


UM = "micrometer"
SIZES3 = {"x": 0.2, "y": 0.2, "z": 1.0}
CZYX = dict(axes="czyx", scale={"x": 0.2, "y": 0.2, "z": 1.0}, units={"x": UM, "y": UM, "z": UM},
            channels=("DAPI", "GFP"))


def _czyx(dtype: str, seed: int = 0) -> np.ndarray:
    return random_image((2, 3, 40, 36), dtype, seed)


CASES: dict[str, Case] = {
    # OME-TIFF, 3D, two channels, every pixel type
    **{f"ome-3d-{dtype}": Case(ome(_czyx(dtype), "CZYX", SIZES3, ["DAPI", "GFP"]), _czyx(dtype), **CZYX)
       for dtype in ("uint8", "uint16", "uint32", "int8", "int16", "int32", "float32", "float64")},
    "ome-2d-bool": Case(ome(random_image((40, 36), "bool"), "YX", {"x": 0.5, "y": 0.5}),
                        random_image((40, 36), "bool")[None], "cyx", {"x": 0.5, "y": 0.5}, {"x": UM, "y": UM}),
    "ome-time": Case(ome(random_image((3, 2, 24, 20), "uint16"), "TCYX", {"x": 0.3, "y": 0.3},
                         metadata={"TimeIncrement": 2.5, "TimeIncrementUnit": "s"}),
                     random_image((3, 2, 24, 20), "uint16"), "tcyx", {"x": 0.3, "y": 0.3, "t": 2.5},
                     {"x": UM, "y": UM, "t": "second"}),
    "ome-colours": Case(ome(_czyx("uint16"), "CZYX", SIZES3, ["DAPI", "GFP"],
                            metadata={"Channel": {"Name": ["DAPI", "GFP"], "Color": [-16776961, 16711935]}}),
                        _czyx("uint16"), **CZYX, colours=("FF0000", "00FF00")),  # OME's signed RGBA integers
    # TIFF layouts and compressions
    "ome-tiled": Case(ome(_czyx("uint16"), "CZYX", SIZES3, ["DAPI", "GFP"], tile=(16, 16)), _czyx("uint16"), **CZYX),
    "ome-bigtiff": Case(ome(_czyx("uint16"), "CZYX", SIZES3, ["DAPI", "GFP"], bigtiff=True), _czyx("uint16"),
                        **CZYX),
    **{f"ome-{codec}": Case(ome(_czyx("uint16"), "CZYX", SIZES3, ["DAPI", "GFP"], compression=codec),
                            _czyx("uint16"), **CZYX) for codec in ("zlib", "lzw", "zstd")},
    "ome-pyramidal": Case(pyramidal(random_image((3, 40, 36), "uint16")), random_image((3, 40, 36), "uint16")[None],
                          "czyx", {"x": 0.5, "y": 0.5}, {"x": UM, "y": UM}),
    "imagej-hyperstack": Case(imagej(random_image((2, 3, 2, 24, 20), "uint16")),
                              np.moveaxis(random_image((2, 3, 2, 24, 20), "uint16"), 2, 1), "tczyx",
                              {"x": 0.25, "y": 0.25, "z": 0.5, "t": 3.0},
                              {"x": UM, "y": UM, "z": UM, "t": "second"}),
    "tiff-stack-striped": Case(tiff(random_image((4, 40, 36), "int16"), rowsperstrip=8, photometric="minisblack"),
                               random_image((4, 40, 36), "int16")[None], "czyx"),
    "tiff-2d-float32-tiled-deflate": Case(tiff(random_image((40, 48), "float32"), tile=(16, 16), compression="zlib"),
                                          random_image((40, 48), "float32")[None], "cyx"),
    # OME-Zarr inputs (written by another tool), re-chunked and re-compressed
    "omezarr-0.5-3d": Case(omezarr(_czyx("uint16"), "CZYX", SIZES3, ["DAPI", "GFP"], "0.5"), _czyx("uint16"), **CZYX,
                           colours=("FF00FF", "00FFFF")),  # as the input's omero block gives them
    "omezarr-0.4-3d-float32": Case(omezarr(_czyx("float32"), "CZYX", SIZES3, ["DAPI", "GFP"], "0.4"),
                                   _czyx("float32"), **CZYX),
    "omezarr-0.5-time-nm": Case(omezarr(random_image((3, 1, 24, 20), "uint8"), "TCYX", {"t": 4.0, "y": 80.0, "x": 80.0},
                                        None, "0.5", {"t": "second", "y": "nanometer", "x": "nanometer"}),
                                random_image((3, 1, 24, 20), "uint8"), "tcyx", {"t": 4.0, "y": 80.0, "x": 80.0},
                                {"t": "second", "y": "nanometer", "x": "nanometer"}),
    "omezarr-0.4-2d-no-channel-axis": Case(omezarr(random_image((40, 36), "int16"), "YX", {"y": 0.5, "x": 0.5}, None,
                                                   "0.4"),
                                           random_image((40, 36), "int16")[None], "cyx", {"y": 0.5, "x": 0.5},
                                           {"y": UM, "x": UM}),
    "png-gray-uint16": Case(png(random_image((40, 36), "uint16")), random_image((40, 36), "uint16")[None], "cyx"),
    "png-rgba": Case(png(random_image((40, 36, 4), "uint8")), np.moveaxis(random_image((40, 36, 4), "uint8"), -1, 0),
                     "cyx", channels=("R", "G", "B", "A"), colours=("FF0000", "00FF00", "0000FF", "FFFFFF")),
}


@pytest.fixture(scope="module")
def converted(tmp_path_factory, scheduler):
    """Each case converted once (NGFF 0.5, the fixed codec so stores are comparable): (case, image, store)."""
    from zarrchive.config import load_settings

    settings = load_settings(overrides={"cluster": {"address": scheduler}})
    out = {}
    for name, case in CASES.items():
        folder = tmp_path_factory.mktemp(name)
        path = case.write(folder)
        before = _content(path)
        [(image, report)] = archive_images(path, folder / "work", settings, scheduler, convert=SMALL,
                                           compress={"profile": "fixed"})
        assert _content(path) == before  # the original is only ever read
        out[name] = (case, image, report.store)
    return out


def _content(path: Path) -> dict[str, bytes]:
    """Every byte of a file, or of every object of a store."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(bits(a), bits(b))


@pytest.mark.parametrize("name", CASES)
def test_level_0_is_the_source_bit_for_bit(converted, name):
    case, image, store = converted[name]
    assert [a.name for a in image.axes] == list(case.axes)
    level0 = zarr.open_array(f"{store}/0", mode="r")[...]
    expected = case.pixels.astype(np.uint8) if case.pixels.dtype == np.bool_ and level0.dtype == np.uint8 \
        else case.pixels
    assert _same_bits(level0, expected)


@pytest.mark.parametrize("name", CASES)
def test_physical_sizes_units_and_channel_names_are_the_sources(converted, name):
    case, image, store = converted[name]
    attrs = zarr.open_group(store, mode="r").attrs["ome"]
    axes = {a["name"]: a for a in attrs["multiscales"][0]["axes"]}
    scale = dict(zip(case.axes, attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"]))
    for axis in case.axes:
        assert scale[axis] == pytest.approx(case.scale.get(axis, 1.0)), axis
        assert axes[axis].get("unit") == case.units.get(axis), axis
    if case.channels:
        assert [c["label"] for c in attrs["omero"]["channels"]] == list(case.channels)
    if case.colours:
        assert [c["color"] for c in attrs["omero"]["channels"]] == list(case.colours)
    if name.startswith("omezarr") and case.channels:  # the input's display windows are kept
        assert [(c["window"]["start"], c["window"]["end"]) for c in attrs["omero"]["channels"]] == \
            [(0.0, 4000.0)] * len(case.channels)
    assert image.calibrated == bool(case.units)


@pytest.mark.parametrize("name", CASES)
def test_every_level_is_the_block_mean_of_the_one_above_with_exact_transforms(converted, name):
    case, image, store = converted[name]
    datasets = zarr.open_group(store, mode="r").attrs["ome"]["multiscales"][0]["datasets"]
    assert len(datasets) == len(image.levels) >= 2
    above = None
    for level, dataset in zip(image.levels, datasets):
        array = zarr.open_array(f"{store}/{level.path}", mode="r")
        assert array.shape == level.shape
        scale, translation = (t[k] for t, k in zip(dataset["coordinateTransformations"], ("scale", "translation")))
        assert scale == pytest.approx(level.scale, rel=1e-12) and translation == pytest.approx(level.translation)
        data = array[...]
        if above is not None:
            upper, upper_data = above
            halved = tuple(i for i, f in enumerate(factors(upper, level)) if f == 2)
            assert set(halved) >= {len(level.shape) - 2, len(level.shape) - 1}  # y and x always
            for i in halved:
                assert level.shape[i] == -(-upper.shape[i] // 2)
                assert scale[i] == pytest.approx(2 * upper.scale[i])
                assert translation[i] == pytest.approx(upper.translation[i] + upper.scale[i] / 2)
            assert _same_bits(data, downsample_mean(upper_data, halved))
            if data.dtype.kind in "ui":  # and that is the float mean, rounded
                reference = upper_data.astype(np.float64)
                for i in halved:
                    reference = np.pad(reference, [(0, reference.shape[i] % 2 if j == i else 0)
                                                   for j in range(reference.ndim)], mode="edge")
                    reference = (reference.take(range(0, reference.shape[i], 2), axis=i)
                                 + reference.take(range(1, reference.shape[i], 2), axis=i)) / 2
                assert np.abs(data - reference).max() <= 0.5
        above = (level, data)


@pytest.mark.parametrize("name", CASES)
def test_the_output_validates_and_every_reader_opens_it(converted, name):
    case, image, store = converted[name]
    assert validate_image(store) == []
    level0 = zarr.open_array(f"{store}/0", mode="r")[...]
    with dask.config.set(scheduler="synchronous"):  # the readers' lazy arrays, computed here
        _opens_everywhere(case, image, store, level0)


def _opens_everywhere(case: Case, image, store: str, level0: np.ndarray) -> None:
    import bioio_ome_zarr
    import tensorstore as ts
    from bioio import BioImage
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    opened = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{store}/0"}}, read=True).result()
    assert _same_bits(opened.read().result(), level0)
    [node] = [n for n in Reader(parse_url(store))() if n.specs]
    assert _same_bits(np.asarray(node.data[0]), level0) and len(node.data) == len(image.levels)
    img = BioImage(store, reader=bioio_ome_zarr.Reader)
    tczyx = img.get_image_data("TCZYX")
    expected = level0
    for axis in "tczyx":  # bioio gives all five axes: the singletons the image drops come back as 1
        if axis not in case.axes:
            expected = np.expand_dims(expected, "tczyx".index(axis))
    assert _same_bits(tczyx, expected)
    if "x" in case.scale:
        assert img.physical_pixel_sizes.X == pytest.approx(case.scale["x"])


@pytest.mark.parametrize("name", ["ome-3d-uint16", "ome-time", "imagej-hyperstack", "png-rgba", "omezarr-0.4-3d-float32"])
def test_ngff_04_output_keeps_the_same_pixels_and_opens_in_tensorstore_and_ome_zarr(tmp_path, settings, scheduler,
                                                                                   name):
    import tensorstore as ts
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    case = CASES[name]
    path = case.write(tmp_path)
    [(image, report)] = archive_images(path, tmp_path / "work", settings, scheduler, convert=SMALL,
                                       compress={"profile": "fixed", "ngff": "0.4"})
    assert validate_image(report.store) == []
    attrs = zarr.open_group(report.store, mode="r").attrs
    assert attrs["multiscales"][0]["version"] == "0.4"
    for level in image.levels:
        v2 = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": f"{report.store}/{level.path}"}},
                     read=True).result().read().result()
        assert _same_bits(v2, zarr.open_array(f"{report.store}/{level.path}", mode="r")[...])
    assert _same_bits(zarr.open_array(f"{report.store}/0", mode="r")[...], case.pixels)
    [node] = [n for n in Reader(parse_url(report.store))() if n.specs]
    assert len(node.data) == len(image.levels)


def test_a_pyramidal_ome_tiff_is_one_series_at_full_resolution(converted):
    _case, image, _store = converted["ome-pyramidal"]
    assert image.series == 0 and image.image_id == "pyramid" and image.levels[0].shape == (1, 3, 40, 36)


def test_an_ome_zarr_input_is_read_with_zarr_from_its_level_0_array(converted):
    for name in ("omezarr-0.5-3d", "omezarr-0.4-2d-no-channel-axis"):
        _case, image, _store = converted[name]
        assert image.reader == "bioio_ome_zarr" and image.layout.zarr_array == "s0"
    assert converted["omezarr-0.4-2d-no-channel-axis"][1].layout.zarr_axes == "yx"
