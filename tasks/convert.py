"""Convert: open a staged file with bioio and describe each series as an image of the archive.

The reader is chosen from the file's content. Axes are mapped to OME-NGFF order
(t, c, z, y, x; singleton t and z dropped), physical pixel sizes keep their
units, channel names are carried over. Metadata the submission gives wins;
where the file also has it and disagrees, the conflict is noted. The file's
OME-XML (or one generated for other formats) is kept in the work area, to be
stored beside the image.

Convert reads no pixels: it says where they are (``SourceLayout``) and the
compress stage's single streaming pass reads each region of the source once,
writing every level of the pyramid from it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import logging
import math
import os
import posixpath
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable

import fsspec
import numpy as np
import tifffile
from bioio import BioImage

from zarrchive import __version__
from zarrchive import batch, budget, faults, runlog
from zarrchive.budget import OverBudget
from zarrchive.config import ConvertSettings, ImageBudget
from zarrchive.errors import InputError, StageTimeout, UnsupportedFormat, ZarrchiveError
from zarrchive.identity import convert_key, json_sha256
from zarrchive.lineage import Traced, stage_task, traced
from zarrchive.ngff import image_attributes
from zarrchive.plates import ome_plate_positions
from zarrchive.records import (
    MICROMETERS, Axis, FileEntry, FileRecord, ImageRecord, Level, PixelSize, SourceLayout, WellPosition, series_label,
    slug,
)
from zarrchive.software import pixel_versions
from zarrchive.sources import layout_of, lazy_pixels, ome_tiff_set, own_images, zarr_level0
from zarrchive.units import OME_LENGTH, length_unit
from zarrchive.units import time_unit as normal_time_unit
from zarrchive.storage import is_zarr_store, sha256_stream, write_bytes_atomic

LOCAL = fsspec.filesystem("file")

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

@dataclass(frozen=True)
class SourceMetadata:
    """What the file itself says about one series."""

    pixel_size: dict[str, float | None]  # z, y, x in ``unit``
    unit: str | None
    time_increment: float | None
    time_unit: str | None
    channel_names: list[str] | None  # None when the file names no channel
    channel_colours: list[str] | None = None  # hex RRGGBB per channel; None when the file gives none
    channel_windows: list[tuple[float, float]] | None = None  # display window (start, end) per channel, if given


# ---------------------------------------------------------------- reader choice


# Formats read by optional bioio plugins: (a test of the file's first bytes, name, plugin module, pip name, extra,
# licence of the reader). Not installed by default; a file in one of them names the plugin to install.
VENDOR_FORMATS = (
    (lambda head: head[:4] == b"\xda\xce\xbe\x0a", "Nikon ND2", "bioio_nd2", "bioio-nd2", "nd2",
     "bioio-nd2: MIT; nd2: BSD-3-Clause"),
    (lambda head: head[:10] == b"ZISRAWFILE", "Zeiss CZI", "bioio_czi", "bioio-czi", "czi",
     "bioio-czi: GPL-3.0; aicspylibczi: GPL-3.0-or-later; pylibCZIrw: LGPL-3.0 (libCZI)"),
    (lambda head: head[:4] == b"\x70\x00\x00\x00" and head[8:9] == b"\x2a", "Leica LIF", "bioio_lif", "bioio-lif",
     "lif", "bioio-lif and liffile: BSD-3-Clause"),
)
PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


def _native_format(path: str) -> Any:
    """The zarrchive format (``zarrchive.formats``) of a file, from its first bytes and name; None for the formats
    bioio reads."""
    from zarrchive import formats

    with open(path, "rb") as fh:
        head = fh.read(1024)
    return formats.match(path, head) if head else None


VSI_PLUGIN = ("bioio_vsi", "bioio-vsi", "vsi", "bioio-vsi: BSD-3-Clause, pure Python (JPEG 2000 tiles need "
              "imagecodecs)")


def _vsi_reader(shown_as: str) -> type:
    """An Olympus/Evident cellSens VSI file is a TIFF holding only an overview: the image lies in the companion
    ``_<name>_/stack*/frame_t*.ets`` files. It is read with the bioio-vsi plugin, which reads those (and refuses
    what it cannot read, naming it), or refused: never archived as its overview."""
    module, package, extra, licence = VSI_PLUGIN
    try:
        return importlib.import_module(module).Reader
    except ImportError:
        raise UnsupportedFormat(shown_as, "Olympus/Evident cellSens VSI: the .vsi file holds only an overview, the "
                                          "image lies in its companion .ets files, which this installation cannot "
                                          f"read: it needs the reader plugin {package} (pip install "
                                          f"'zarrchive[{extra}]'; {licence})") from None


def choose_reader(path: str, shown_as: str) -> type:
    """The bioio reader for a file, chosen from its content (magic bytes, OME-XML, a Zarr store's metadata), not
    its name."""
    if os.path.isdir(path):
        if not is_zarr_store(LOCAL, path):
            raise UnsupportedFormat(shown_as, "a folder that is not a Zarr store (no zarr.json, .zgroup or .zarray)")
        if not image_attributes(path).get("multiscales"):
            raise UnsupportedFormat(shown_as, "a Zarr store without OME-NGFF multiscales metadata (not an OME-Zarr "
                                              "image; a bioformats2raw collection: list its images one by one)")
        import bioio_ome_zarr

        return bioio_ome_zarr.Reader
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        raise InputError(shown_as, "empty (0 bytes): not an image")
    if head[:4] in TIFF_MAGIC and shown_as.lower().endswith(".vsi"):
        return _vsi_reader(shown_as)
    if head[:4] in TIFF_MAGIC:
        try:
            with tifffile.TiffFile(path) as tif:
                is_ome = tif.is_ome
        except Exception as exc:
            raise InputError(shown_as, f"damaged TIFF: {exc}") from exc
        if is_ome:
            import bioio_ome_tiff

            return bioio_ome_tiff.Reader
        import bioio_tifffile

        return bioio_tifffile.Reader
    if head.startswith((PNG_MAGIC, JPEG_MAGIC)):
        import bioio_imageio

        return bioio_imageio.Reader
    for matches, name, module, package, extra, licence in VENDOR_FORMATS:
        if matches(head):
            try:
                return importlib.import_module(module).Reader
            except ImportError:
                raise UnsupportedFormat(shown_as, f"format not supported in this installation: {name} needs the "
                                                  f"reader plugin {package} (pip install 'zarrchive[{extra}]'; "
                                                  f"{licence})") from None
    raise UnsupportedFormat(shown_as, "format not supported in this installation (the content is none of OME-TIFF, "
                                      "TIFF, PNG, JPEG, ND2, CZI, LIF)")


# ---------------------------------------------------------------- metadata


def _ome_metadata(ome: Any, scene: int) -> SourceMetadata:
    """What an OME-XML document (an ``ome_types`` model) says about its image ``scene``."""
    pixels = ome.images[scene].pixels

    def unit_of(value: Any) -> str | None:
        return length_unit(value)

    sizes = {"z": pixels.physical_size_z, "y": pixels.physical_size_y, "x": pixels.physical_size_x}
    units = {ax: unit_of(getattr(pixels, f"physical_size_{ax}_unit")) for ax in "zyx" if sizes[ax] is not None}
    unit = units.get("x") or units.get("y") or units.get("z")
    # express every axis in the x unit so one unit serves all spatial axes
    for ax, u in units.items():
        if u and unit and u != unit and sizes[ax] is not None:
            sizes[ax] = sizes[ax] * MICROMETERS[u] / MICROMETERS[unit]
    names = [c.name for c in pixels.channels]
    colours = ["%02X%02X%02X" % c.color.as_rgb_tuple()[:3] if c.color is not None else "FFFFFF"
               for c in pixels.channels]
    time_unit = getattr(pixels.time_increment_unit, "value", None) if pixels.time_increment else None
    return SourceMetadata(
        pixel_size=sizes, unit=unit if any(sizes.values()) else None,
        time_increment=pixels.time_increment, time_unit=normal_time_unit(time_unit),
        channel_names=names if names and all(names) else None,
        channel_colours=colours if any(c != "FFFFFF" for c in colours) else None,  # white is OME's default
    )


def _ome_zarr_metadata(path: str, scene: int) -> SourceMetadata:
    """An OME-Zarr input's own metadata: level 0's scale with the axes' units (space in the x axis' unit), the time
    step, and the ``omero`` channel labels."""
    attrs = image_attributes(path)
    multiscale = attrs["multiscales"][scene]
    axes = [a["name"].lower() for a in multiscale["axes"]]
    scale = [1.0] * len(axes)
    for transforms in (multiscale["datasets"][0].get("coordinateTransformations", []),
                       multiscale.get("coordinateTransformations", [])):
        for t in transforms:
            if t.get("type") == "scale":
                scale = [a * b for a, b in zip(scale, t["scale"])]
    units = {a["name"].lower(): length_unit(a.get("unit")) for a in multiscale["axes"]}
    unit = units.get("x") or units.get("y") or units.get("z")
    sizes: dict[str, float | None] = {}
    for ax in "zyx":
        value = scale[axes.index(ax)] if ax in axes and units.get(ax) else None
        if value is not None and unit and units[ax] != unit:  # every spatial axis in the x unit
            value = value * MICROMETERS[units[ax]] / MICROMETERS[unit]
        sizes[ax] = value
    time = next((a for a in multiscale["axes"] if a["name"].lower() == "t"), None)
    channels = (attrs.get("omero") or {}).get("channels", [])
    names = [str(c.get("label") or "") for c in channels]
    colours = [str(c.get("color") or "").upper() for c in channels]
    return SourceMetadata(
        pixel_size=sizes, unit=unit if any(v is not None for v in sizes.values()) else None,
        time_increment=scale[axes.index("t")] if time and time.get("unit") else None,
        time_unit=normal_time_unit(time.get("unit")) if time else None,
        channel_names=names if names and all(names) else None,
        channel_colours=colours if colours and all(re.fullmatch(r"[0-9A-F]{6}", c) for c in colours) else None,
        channel_windows=_windows(channels),
    )


def _windows(channels: list[dict[str, Any]]) -> list[tuple[float, float]] | None:
    """The omero display windows (start, end) of every channel, when each gives a usable one."""
    try:
        windows = [(float(c["window"]["start"]), float(c["window"]["end"])) for c in channels]
    except (KeyError, TypeError, ValueError):
        return None
    return windows if windows and all(math.isfinite(a) and math.isfinite(b) and b > a for a, b in windows) else None


def _bioio_metadata(img: BioImage) -> SourceMetadata:
    """What any bioio reader says: physical pixel sizes (micrometres) and channel names (its generated
    ``Channel:i:j`` placeholders are no names)."""
    sizes = img.physical_pixel_sizes
    values = {"z": sizes.Z, "y": sizes.Y, "x": sizes.X}
    names = [str(n) for n in (img.channel_names or [])]
    named = bool(names) and not all(re.fullmatch(r"Channel:\d+:\d+", n) for n in names)
    return SourceMetadata(pixel_size=values, unit="micrometer" if any(values.values()) else None,
                          time_increment=None, time_unit=None, channel_names=names if named else None)


# The images a slide scanner stores beside the slide in a whole-slide file, by tifffile's series name: what each
# is, for its conversion note. Each is archived as an image of its own, named by its role, never as the slide.
ASSOCIATED = {
    "thumbnail": "a downsampled copy of the slide that the scanner made",
    "label": "a photograph of the slide's paper label, which may show a patient's name, a barcode or other "
             "personal data: check it before the study is released",
    "macro": "a low-magnification photograph of the whole slide, which may show its paper label (a patient's "
             "name, a barcode): check it before the study is released",
    "overview": "a low-magnification photograph of the whole slide, which may show its paper label: check it "
                "before the study is released",
    "map": "the scanner's map of the scanned area",
}
WHOLE_SLIDE = ("svs", "ndpi", "scn", "bif", "philips")


def slide_roles(path: str) -> list[str | None] | None:
    """For a whole-slide TIFF (Aperio SVS, Hamamatsu NDPI, Leica SCN, Ventana BIF, Philips), what each tifffile
    series is: ``""`` for the slide itself (its full-resolution pyramid), ``label``, ``macro``, ``thumbnail``…
    for the scanner's associated images, None for a series of no known role. None for any other file, or when
    the file does not hold exactly one slide (its series then keep their numbers)."""
    try:
        with tifffile.TiffFile(path) as tif:
            if not any(getattr(tif, f"is_{kind}", False) for kind in WHOLE_SLIDE):
                return None
            roles: list[str | None] = []
            for series in tif.series:
                name = (series.name or "").strip().lower()
                roles.append(name if name in ASSOCIATED else
                             "" if name == "baseline" or series.is_pyramidal else None)
    except (OSError, ValueError, tifffile.TiffFileError):
        return None
    return roles if roles.count("") == 1 and len(set(r for r in roles if r)) == sum(1 for r in roles if r) else None


def _svs_microns_per_pixel(tif: tifffile.TiffFile, series: int) -> float | None:
    """An Aperio slide's pixel size (``MPP`` in the baseline's description), for the slide only: the scanner's
    thumbnail repeats the slide's value though its pixels are larger."""
    if not tif.is_svs or (tif.series[series].name or "") != "Baseline":
        return None
    found = re.search(r"\|\s*MPP\s*=\s*([0-9.]+(?:[eE][-+]?[0-9]+)?)", tif.pages.first.description or "")
    mpp = float(found.group(1)) if found else None
    return mpp if mpp and math.isfinite(mpp) and 0 < mpp < 1e3 else None


def _tiff_metadata(path: str, series: int) -> SourceMetadata:
    """Calibration of a plain TIFF from ImageJ metadata or the resolution tags (centimetre only), and of an
    Aperio slide from its description."""
    sizes: dict[str, float | None] = {"z": None, "y": None, "x": None}
    unit = None
    with tifffile.TiffFile(path) as tif:
        page = tif.series[series].keyframe
        ij = tif.imagej_metadata or {}
        xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
        res_unit = page.tags.get("ResolutionUnit")

        def size(tag: Any) -> float | None:
            if tag is None:
                return None
            num, den = tag.value
            return den / num if num else None

        if length_unit(ij.get("unit")) and xres is not None:
            unit = length_unit(ij["unit"])
            sizes["x"], sizes["y"] = size(xres), size(yres)
            sizes["z"] = float(ij["spacing"]) if ij.get("spacing") else None
        elif res_unit is not None and int(res_unit.value) == 3 and xres is not None:  # centimetre
            unit = "micrometer"
            sizes["x"], sizes["y"] = (s * 1e4 if s else None for s in (size(xres), size(yres)))
        elif mpp := _svs_microns_per_pixel(tif, series):
            unit = "micrometer"
            sizes["x"] = sizes["y"] = mpp
        finterval = ij.get("finterval")
        tunit = normal_time_unit(ij.get("tunit")) or "second"  # ImageJ's frame interval is in seconds unless told
    return SourceMetadata(pixel_size=sizes, unit=unit, time_increment=float(finterval) if finterval else None,
                          time_unit=tunit if finterval else None, channel_names=None)


def merge_metadata(
    source: SourceMetadata, entry: FileEntry | None, n_channels: int, shown_as: str
) -> tuple[dict[str, float | None], str | None, list[str], int | None, list[str]]:
    """Combine file and submission metadata: the submission wins; disagreements become notes.

    Returns pixel sizes (z, y, x), their unit, channel names (one per channel),
    the number of names the submission gave (None if it gave none), and notes.
    """
    notes: list[str] = []
    sizes = dict(source.pixel_size)
    unit = source.unit
    given: PixelSize | None = entry.pixel_size if entry else None
    if given is not None:
        for ax in "zyx":
            value = getattr(given, ax)
            if value is None:
                continue
            file_value = sizes.get(ax)
            if file_value is not None and unit is not None:
                in_um = file_value * MICROMETERS[unit]
                given_um = value * MICROMETERS[given.unit]
                if not math.isclose(in_um, given_um, rel_tol=1e-6):
                    notes.append(f"{shown_as}: pixel_size.{ax}: the file says {file_value} {unit}, "
                                 f"submission.yaml says {value} {given.unit}; using submission.yaml")
        if unit and unit != given.unit:  # bring the file's own values into the submission's unit
            sizes = {ax: (v * MICROMETERS[unit] / MICROMETERS[given.unit] if v is not None else None)
                     for ax, v in sizes.items()}
        unit = given.unit
        for ax in "zyx":
            if getattr(given, ax) is not None:
                sizes[ax] = getattr(given, ax)
    names_given = entry.channel_names if entry else None
    if names_given is not None and len(names_given) == n_channels:
        if source.channel_names and list(source.channel_names) != list(names_given):
            notes.append(f"{shown_as}: channel_names: the file says {source.channel_names}, "
                         f"submission.yaml says {names_given}; using submission.yaml")
        names = list(names_given)
    elif source.channel_names and len(source.channel_names) == n_channels:
        names = list(source.channel_names)
    else:
        names = [f"C{i}" for i in range(n_channels)]
    return sizes, unit, names, (len(names_given) if names_given is not None else None), notes


# ---------------------------------------------------------------- identity


def conversion_id(source_sha256: str, series: int, settings: ConvertSettings, entry: FileEntry | None) -> str:
    """Deterministic identity of one conversion: input bytes, series, settings, metadata given, software."""
    payload = {
        "source": source_sha256, "series": series, "settings": settings.identity(),
        "entry": entry.model_dump(mode="json") if entry else None, "software": pixel_versions(),
    }
    return json_sha256(payload)[:20]


# ---------------------------------------------------------------- conversion


def chunk_shape(axes: list[str], shape: tuple[int, ...], dtype: str, settings: ConvertSettings) -> tuple[int, ...]:
    """One plane tile per chunk: 1 along t and c, ``chunk_z`` along z (when the image has z), ``chunk_xy`` along y
    and x — for ``auto``, the largest power of two (64 to 4096) whose chunk holds at most ``chunk_bytes``."""
    depth = settings.chunk_z if "z" in axes else 1
    xy = settings.chunk_xy
    if xy == "auto":
        pixels = settings.chunk_bytes / (np.dtype(dtype).itemsize * depth)
        xy = int(min(4096, max(64, 2 ** int(np.floor(np.log2(np.sqrt(pixels)))))))
    edge = {"t": 1, "c": 1, "z": settings.chunk_z, "y": xy, "x": xy}
    return tuple(max(1, min(edge[a], n)) for a, n in zip(axes, shape))


def companions(files: list[FileRecord]) -> Callable[[FileRecord], dict[str, str]]:
    """For each file, the sha256 of the staged files in its folder (itself included): the members a multi-file
    OME-TIFF set may have (they are part of its conversion's identity). One mapping per folder, shared by its
    files: a folder of 10,000 fields costs one mapping of 10,000, not 10,000 of them."""
    folders: dict[str, dict[str, str]] = {}
    for f in files:
        folders.setdefault(posixpath.dirname(f.path), {})[f.path] = f.sha256
    return lambda file: folders.get(posixpath.dirname(file.path), {})


def _set_members(file: FileRecord, members: list[str], companions: dict[str, str] | None
                 ) -> tuple[tuple[str, ...], list[str]]:
    """The submitted paths of a multi-file set's members (in the order of their planes) and those missing from the
    submission."""
    folder = posixpath.dirname(file.path)
    paths = tuple(posixpath.normpath(posixpath.join(folder, name)) for name in members)
    here = os.path.dirname(file.staged_path)
    missing = [p for p, name in zip(paths, members) if p != file.path and (
        not os.path.isfile(os.path.join(here, name)) or (companions is not None and p not in companions))]
    return paths, missing


def _set_digest(file: FileRecord, members: list[str], paths: tuple[str, ...],
                companions: dict[str, str] | None) -> str:
    """The identity of a complete multi-file set: the sha256 of every member's sha256."""
    here = os.path.dirname(file.staged_path)
    digests = [file.sha256 if p == file.path else
               companions[p] if companions is not None else sha256_stream(LOCAL, os.path.join(here, name))[1]
               for p, name in zip(paths, members)]
    return hashlib.sha256(" ".join(digests).encode()).hexdigest()


def convert_file(
    file: FileRecord, entry: FileEntry | None, work: str, settings: ConvertSettings,
    companions: dict[str, str] | None = None,
) -> list[ImageRecord]:
    """Every image of a staged file (``describe_file``); a plate's field is one image, placed at its well."""
    images = describe_file(file, entry, work, settings, companions)
    if not images or file.kind != "image":
        return images
    declared = entry.well if entry else None
    if declared and len(images) == 1:
        return [images[0].model_copy(update={"well": declared})]
    positions = _ome_plate(file) if images[0].reader in ("bioio_ome_tiff", "bioio_tifffile") else {}
    if declared and not (images[0].source_set and positions):
        raise InputError(file.path, f"is field {declared.field} of well {declared.row}{declared.column} of plate "
                                    f"{declared.plate}, and a field is one image, but it "
                                    + (f"gives the {len(images)} images of the OME-TIFF set of "
                                       f"{_listing(list(images[0].source_set))} (their OME-XML names no plate): "
                                       "submit the set without a plate, or files that hold their own images"
                                       if images[0].source_set else
                                       f"holds {len(images)} series: list each field as a file of its own"))
    return [i.model_copy(update={"well": positions[i.series]}) if i.series in positions else i for i in images]


def _ome_plate(file: FileRecord) -> dict[int, WellPosition]:
    """The well of each image of an OME-TIFF whose OME-XML describes a screening plate (by image index); {} when
    it describes none, or a layout that cannot be read (the images are then archived as images of their own)."""
    try:
        with tifffile.TiffFile(file.staged_path) as tif:
            xml = tif.ome_metadata
        return ome_plate_positions(xml, posixpath.dirname(file.path)) if xml and "<Plate" in xml else {}
    except Exception as exc:
        runlog.logger().warning("%s: its OME-XML's plate layout cannot be read (%s): its images are archived "
                                "outside a plate", file.path, exc)
        return {}


def describe_file(
    file: FileRecord, entry: FileEntry | None, work: str, settings: ConvertSettings,
    companions: dict[str, str] | None = None,
) -> list[ImageRecord]:
    """Describe every series of a staged file as an image (metadata, level 0, source layout); keep its OME-XML
    under ``<work>/convert/<conversion id>.ome.xml``.

    A file of a multi-file OME-TIFF set gives the set's images when it holds the set's first planes, and no image
    otherwise (the set is one image, not one per file); ``companions`` (the sha256 of the other staged files of
    its folder, itself included: ``companions``) make the members part of the conversion's identity. A file whose OME-XML
    describes a larger acquisition whose other files are not in the submission (screening software writes one
    file per field, each naming the whole plate) gives the images whose planes it holds itself, with a note
    naming the missing files; an image with planes in a missing file is an error naming them."""
    faults.point("convert.start")
    if not os.path.isdir(file.staged_path) and (native := _native_format(file.staged_path)):
        return _convert_native(native, file, entry, work, settings)
    reader = choose_reader(file.staged_path, file.path)
    check_declared(file.staged_path, reader.__module__.split(".")[0], file.path, settings.limits)
    source_digest, source_set, own, missing = file.sha256, (), None, []
    if reader.__module__.startswith("bioio_ome_tiff") and (members := ome_tiff_set(file.staged_path)):
        paths, missing = _set_members(file, members, companions)
        if not missing:
            source_digest, source_set = _set_digest(file, members, paths, companions), paths
            if source_set[0] != file.path:
                return []  # its planes belong to the image of the set's first file
        elif not (own := own_images(file.staged_path)):
            raise InputError(file.path, f"a multi-file OME-TIFF set of {len(paths)} files whose member(s) "
                                        f"{_listing(missing)} are not in the submission, and none of its images "
                                        "lies in this file alone: list every file of the set")
    ome = None
    try:
        img = BioImage(file.staged_path, reader=reader)
        scenes = list(img.scenes)
        if own is not None:  # bioio-ome-tiff reads no scene past the ones this file holds: tifffile does, by series
            ome = img.ome_metadata
            import bioio_tifffile

            reader = bioio_tifffile.Reader
            img = BioImage(file.staged_path, reader=reader)
    except MemoryError:
        raise OverBudget(file.path, f"{reader.__module__} ran out of memory reading its headers: it declares more "
                                    "than this machine can describe") from None
    except Exception as exc:
        raise InputError(file.path, f"cannot be read by {reader.__module__}: {exc}") from exc
    budget.check_series_count(file.path, len(scenes), settings.limits)
    base_id = slug(file.path)
    images = []
    chosen = own if own is not None else range(len(scenes))  # tifffile lists only the series this file holds
    for tiff_index, index in enumerate(chosen):
        scene = scenes[index]
        shown_as = series_label(file.path, index, len(scenes))
        try:
            img.set_scene(index if ome is None else tiff_index)
            budget.check_shape(shown_as, img.shape, np.dtype(img.dtype).itemsize, settings.limits, file.size)
            if reader.__module__.startswith(("bioio_ome_tiff", "bioio_tifffile")):
                with tiff_must_be_whole(shown_as, allowed=missing):
                    check_complete(file.staged_path, tiff_index, shown_as, bool(source_set))
            image = _convert_series(img, reader, index, scene, len(scenes), file, entry, work, settings, base_id,
                                    source_digest, tiff_index, ome)
            if missing:
                image = image.model_copy(update={"notes": image.notes + (
                    f"{file.path}: its OME-XML describes a larger acquisition whose file(s) {_listing(missing)} are "
                    f"not in the submission; the {len(chosen)} image(s) whose planes this file holds were archived",)})
            images.append(image.model_copy(update={"source_set": source_set}) if source_set else image)
        except (ZarrchiveError, ConnectionError, TimeoutError):
            raise
        except MemoryError:
            raise OverBudget(shown_as, "ran out of memory describing it: it declares more than this machine can "
                                       "describe") from None
        except Exception as exc:
            if type(exc).__module__.startswith("distributed"):  # the cluster failed, not the file
                raise
            raise InputError(shown_as, f"cannot be converted: {type(exc).__name__}: {exc}") from exc
    if file.kind == "label":
        return [as_label(image, entry, len(scenes)) for image in images]
    return images


def _listing(paths: list[str], shown: int = 5) -> str:
    return ", ".join(paths[:shown]) + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


def _convert_series(img, reader, index, scene, n_scenes, file, entry, work, settings, base_id, source_digest,
                    tiff_index=None, ome=None):
    """One series a bioio reader opened (the current scene of ``img``) as an image of the archive."""
    shown_as = series_label(file.path, index, n_scenes)
    data, sample_names = lazy_pixels(img, shown_as)
    reader_name = reader.__module__.split(".")[0]
    if ome is not None:  # an OME-TIFF holding some of its images, read by tifffile, described by its OME-XML
        source = _ome_metadata(ome, index)
    elif reader_name == "bioio_ome_tiff":
        source = _ome_metadata(img.ome_metadata, index)
    elif reader_name == "bioio_ome_zarr":
        source = _ome_zarr_metadata(file.staged_path, index)
    else:
        source = _tiff_metadata(file.staged_path, index) if reader_name == "bioio_tifffile" else _bioio_metadata(img)
    if sample_names:  # colour samples: red, green, blue (and alpha)
        source = SourceMetadata(source.pixel_size, source.unit, source.time_increment, source.time_unit, sample_names,
                                ["FF0000", "00FF00", "0000FF", "FFFFFF"][: len(sample_names)])
    tiff_series = index if tiff_index is None else tiff_index

    def layout(axis_names: tuple[str, ...]) -> SourceLayout:
        return layout_of(file.staged_path, img, reader_name, index, axis_names, bool(sample_names), tiff_series)

    def xml(shape, axis_names, names, sizes, unit) -> bytes:
        return ome_xml(file.staged_path, "bioio_ome_tiff" if ome is not None else reader_name, str(scene), shape,
                       axis_names, data.dtype, names, sizes, unit, source)

    roles = slide_roles(file.staged_path) if reader_name == "bioio_tifffile" else None
    role = roles[tiff_series] if roles and tiff_series < len(roles) else None
    notes = (f"{shown_as}: {ASSOCIATED[role]}; archived as {base_id}_{role} beside the slide ({base_id})",) \
        if role else ()
    return _image_record(file, entry, work, settings, index, str(scene), n_scenes, base_id, source_digest,
                         tuple(int(n) for n in data.shape), str(np.dtype(data.dtype)), source, reader_name, layout,
                         xml, lossy_compression(file.staged_path, tiff_series, reader_name), notes=notes, role=role)


def _image_record(file: FileRecord, entry: FileEntry | None, work: str, settings: ConvertSettings, index: int,
                  series_name: str, n_scenes: int, base_id: str, source_digest: str, tczyx: tuple[int, ...],
                  dtype: str, source: SourceMetadata, reader_name: str,
                  make_layout: Callable[[tuple[str, ...]], SourceLayout],
                  make_xml: Callable[..., bytes], lossy: str | None,
                  documents: dict[str, bytes] | None = None, notes: tuple[str, ...] = (),
                  role: str | None = None) -> ImageRecord:
    """The image record of one series of shape ``tczyx``: its metadata merged with the submission's, its axes in
    OME-NGFF order (singleton t and z dropped), level 0, and its OME-XML (and other original metadata
    ``documents``) kept in the work area under its conversion id. A whole-slide file's series are named by
    their ``role`` (the slide: the file's id; ``<id>_label``, ``<id>_macro``…), other files' by number."""
    shown_as = series_label(file.path, index, n_scenes)
    t, c, z, _y, _x = tczyx
    sizes, unit, names, names_given, merge_notes = merge_metadata(source, entry, c, shown_as)
    keep = [t > 1, True, z > 1, True, True]
    axis_names = tuple(a for a, k in zip("tczyx", keep) if k)
    axes, scale = [], []
    for name in axis_names:
        if name == "t":
            axes.append(Axis(name="t", type="time", unit=source.time_unit if source.time_increment else None))
            scale.append(float(source.time_increment or 1.0))
        elif name == "c":
            axes.append(Axis(name="c", type="channel"))
            scale.append(1.0)
        else:
            value = sizes.get(name)
            axes.append(Axis(name=name, type="space", unit=unit if value is not None else None))
            scale.append(float(value) if value is not None else 1.0)

    cid = conversion_id(source_digest, index, settings, entry)
    shape = tuple(n for n, k in zip(tczyx, keep) if k)
    xml = make_xml(shape, axis_names, names, sizes, unit)
    xml_path = f"{work.rstrip('/')}/convert/{cid}.ome.xml"
    os.makedirs(os.path.dirname(xml_path), exist_ok=True)
    write_bytes_atomic(LOCAL, xml_path, xml)
    kept = []
    for name, content in sorted((documents or {}).items()):
        kept_path = f"{work.rstrip('/')}/convert/{cid}.{name.replace('/', '.')}"
        write_bytes_atomic(LOCAL, kept_path, content)
        kept.append((name, kept_path))
    return ImageRecord(
        image_id=(base_id if n_scenes == 1 or role == "" else f"{base_id}_{role}" if role else f"{base_id}_s{index}"),
        conversion_id=cid, source_path=file.path,
        source_sha256=file.sha256, series=index, series_name=series_name, series_count=n_scenes, reader=reader_name,
        layout=make_layout(axis_names), metadata_xml=xml_path, metadata_sha256=hashlib.sha256(xml).hexdigest(),
        documents=tuple(kept), axes=tuple(axes), dtype=dtype, channel_names=tuple(names),
        channel_names_given=names_given,
        channel_colours=tuple(source.channel_colours) if source.channel_colours and len(source.channel_colours) == c
        else None,
        channel_windows=tuple(source.channel_windows) if source.channel_windows and len(source.channel_windows) == c
        else None,
        calibrated=any(v is not None for v in sizes.values()),
        levels=(Level(path="0", shape=shape, chunks=chunk_shape(list(axis_names), shape, dtype, settings),
                      scale=tuple(scale), translation=tuple(0.0 for _ in scale)),),
        notes=tuple(merge_notes) + tuple(notes), lossy_source=lossy,
    )


def _convert_native(fmt: Any, file: FileRecord, entry: FileEntry | None, work: str,
                    settings: ConvertSettings) -> list[ImageRecord]:
    """Every series of a file in one of zarrchive's own formats (``zarrchive.formats``), from its headers."""
    described = fmt.describe(file.staged_path, file.path)
    budget.check_series_count(file.path, len(described), settings.limits)
    images = []
    for index, series in enumerate(described):
        shown_as = series_label(file.path, index, len(described))
        budget.check_shape(shown_as, series.shape, np.dtype(series.dtype).itemsize, settings.limits, file.size)
        dims = dict(zip(series.axes, series.shape))
        source = SourceMetadata(pixel_size=series.pixel_size, unit=series.unit, time_increment=series.time_increment,
                                time_unit=series.time_unit, channel_names=series.channel_names,
                                channel_colours=series.channel_colours)

        def layout(axis_names: tuple[str, ...], index: int = index, stored: str = series.axes) -> SourceLayout:
            return SourceLayout(reader=fmt.name, series=index, axes=axis_names, stored_axes=stored)

        def xml(shape, axis_names, names, sizes, unit, name: str = series.name, dtype: str = series.dtype) -> bytes:
            return ome_xml(file.staged_path, fmt.name, name, shape, axis_names, dtype, names, sizes, unit, source)

        image = _image_record(file, entry, work, settings, index, series.name, len(described), slug(file.path),
                              file.sha256, tuple(dims.get(a, 1) for a in "tczyx"), series.dtype, source, fmt.name,
                              layout, xml, None, series.documents, series.notes)
        images.append(image)
    return [as_label(image, entry, len(images)) for image in images] if file.kind == "label" else images


def check_complete(path: str, series: int, shown_as: str, own_set: bool) -> None:
    """Every plane a TIFF series declares is in the file, and every strip or tile of it lies inside the file
    (tifffile would read the planes of missing pages, or past the end, as zeros). ``own_set``: a multi-file
    OME-TIFF set, whose other members hold pages of their own (checked when those files are read)."""
    size = os.path.getsize(path)
    with tifffile.TiffFile(path) as tif:
        pages = tif.series[series].pages
        missing = sum(page is None for page in pages)
        if missing and not own_set:
            raise InputError(shown_as, f"incomplete: it declares {len(pages)} planes but holds {len(pages) - missing}"
                                       " (a truncated file, or part of a multi-file set not submitted)")
        for page in pages:
            if page is None or getattr(page, "parent", tif) is not tif:
                continue
            ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n]
            if ends and max(ends) > size:
                raise InputError(shown_as, f"truncated: its pixels end at byte {max(ends):,}, the file at {size:,}")


class _TiffComplaints(logging.Handler):
    """Collects what tifffile logs as an error while it parses a file: a tag or page pointing past the end, a
    looping or broken IFD chain. tifffile goes on reading what it can (a truncated OME-TIFF loses its OME-XML
    and reads as a smaller plain TIFF), so zarrchive treats any such complaint as a damaged file."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []
        self.thread = threading.get_ident()  # conversions run side by side in threads: only this one's parse

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


@contextlib.contextmanager
def tiff_must_be_whole(shown_as: str, allowed: list[str] = ()):
    """Refuse, naming the file, a TIFF whose structure tifffile complained about while the block parsed it
    (complaints about the ``allowed`` companion files, known to be missing, aside)."""
    complaints = _TiffComplaints()
    log = logging.getLogger("tifffile")
    log.addHandler(complaints)
    try:
        yield
    finally:
        log.removeHandler(complaints)
    names = [posixpath.basename(p) for p in allowed]
    messages = [m for m in complaints.messages if not (names and ("failed to read" in m)
                                                           and (any(n in m for n in names) or "files" in m))]
    if messages:
        detail = re.sub(r"<tifffile\.\w+ [^>]*> ?", "", messages[0])
        raise InputError(shown_as, f"damaged TIFF (truncated, or its structure is broken): {detail}")


def check_declared(path: str, reader: str, shown_as: str, limits: ImageBudget) -> None:
    """The sizes a file declares, checked against the image budget from its headers alone, before a reader builds
    anything from them (``budget``); a TIFF's structure must be whole (``tiff_must_be_whole``)."""
    if reader in ("bioio_ome_tiff", "bioio_tifffile"):
        try:
            with tiff_must_be_whole(shown_as):
                budget.check_tiff(path, shown_as, limits)
        except (InputError, MemoryError):
            raise
        except Exception as exc:
            raise InputError(shown_as, f"damaged TIFF: {type(exc).__name__}: {exc}") from exc
    elif reader == "bioio_ome_zarr" and (level0 := zarr_level0(path, 0)):
        for name in ("zarr.json", ".zarray"):
            document = os.path.join(path, level0[0], name)
            if os.path.isfile(document):
                with open(document, "rb") as fh:
                    meta = json.load(fh)
                size = sum(os.path.getsize(os.path.join(base, f)) for base, _d, files in os.walk(path) for f in files)
                budget.check_zarr_level(meta, shown_as, limits, size)
                break


def as_label(image: ImageRecord, entry: FileEntry | None, n_series: int) -> ImageRecord:
    """A converted series as a label image: one channel of integer (or bool) labels, the channel axis dropped,
    annotating the image of ``entry.label_of`` (its series of the same index when the label file has several).

    A bool mask is stored as uint8 (0 and 1): OME-NGFF labels are integers.
    Raises ``InputError`` naming the file when it is not a label image.
    """
    shown_as = image.shown_as
    if entry is None or entry.label_of is None:
        raise InputError(shown_as, "a label file names the image it annotates (label_of)")
    axes = [a.name for a in image.axes]
    channels = image.shape[axes.index("c")]
    if channels != 1:
        raise InputError(shown_as, f"a label image has one channel of label values; this one has {channels}")
    dtype = np.dtype(image.dtype)
    if dtype.kind not in "uib":
        raise InputError(shown_as, f"a label image holds integer label values; this one holds {dtype} pixels")
    keep = [i for i, name in enumerate(axes) if name != "c"]

    def drop_c(values: tuple) -> tuple:
        return tuple(values[i] for i in keep)

    stored = "uint8" if dtype == np.bool_ else str(dtype)
    level0 = image.levels[0]
    annotates = slug(entry.label_of) + (f"_s{image.series}" if n_series > 1 else "")
    return image.model_copy(update={
        "kind": "label", "label_of": annotates, "label_name": entry.label, "dtype": stored,
        "axes": drop_c(image.axes), "channel_names": (entry.label,), "channel_names_given": None,
        "layout": image.layout.model_copy(update={"axes": drop_c(image.layout.axes),
                                                  "dtype": stored if stored != image.dtype else None}),
        "levels": (Level(path="0", shape=drop_c(level0.shape), chunks=drop_c(level0.chunks),
                         scale=drop_c(level0.scale), translation=drop_c(level0.translation), downsampling="mode"),),
    })


LOSSY_TIFF = {"JPEG", "OJPEG", "WEBP", "JPEGXR", "JPEGXR_NDPI"}  # TIFF compressions that are lossy in practice


def lossy_compression(path: str, series: int, reader: str) -> str | None:
    """The lossy compression the source's pixels went through (the name of a TIFF compression such as JPEG),
    or None: the archive keeps the decoded pixels exactly, which can take more room than the lossy original."""
    if reader == "bioio_imageio":
        with open(path, "rb") as fh:
            return "JPEG" if fh.read(3) == JPEG_MAGIC else None
    if reader not in ("bioio_ome_tiff", "bioio_tifffile"):
        return None
    with tifffile.TiffFile(path) as tif:
        name = tiff_compression(tif.series[series].keyframe)
    return name if name in LOSSY_TIFF else None


def tiff_compression(page: Any) -> str:
    """The name of a TIFF page's compression; the Compression tag is optional (absent: 1, none), and tifffile
    then gives a plain number rather than its enumeration."""
    value = page.compression
    if isinstance(value, tifffile.COMPRESSION):
        return value.name
    try:
        return tifffile.COMPRESSION(int(value)).name
    except ValueError:
        return f"compression {int(value)}"


def ome_xml(path: str, reader: str, name: str, shape: tuple[int, ...], axes: tuple[str, ...],
            dtype: Any, channels: list[str], sizes: dict[str, float | None], unit: str | None,
            source: SourceMetadata) -> bytes:
    """The OME-XML kept beside the image: an OME file's own document, whole (every series, every annotation);
    for other files one generated from what was read, with the file's own description kept as an annotation."""
    if reader == "bioio_ome_tiff":
        with tifffile.TiffFile(path) as tif:
            if tif.ome_metadata:
                return tif.ome_metadata.encode()
    if reader == "bioio_ome_zarr" and os.path.isfile(os.path.join(path, "OME", "METADATA.ome.xml")):
        with open(os.path.join(path, "OME", "METADATA.ome.xml"), "rb") as fh:  # bioformats2raw's own OME-XML
            return fh.read()
    from ome_types import model

    dims = dict(zip(axes, shape))
    ome_type = {"bool": "bit", "float16": "float", "float32": "float", "float64": "double"}.get(
        str(np.dtype(dtype)), str(np.dtype(dtype)))
    pixels: dict[str, Any] = {
        "id": "Pixels:0", "dimension_order": "XYZCT", "type": ome_type, "metadata_only": True,
        "size_x": dims["x"], "size_y": dims["y"], "size_z": dims.get("z", 1), "size_c": dims["c"],
        "size_t": dims.get("t", 1),
        "channels": [model.Channel(id=f"Channel:0:{i}", name=n, samples_per_pixel=1) for i, n in enumerate(channels)],
    }
    for ax in "xyz":
        if sizes.get(ax) is not None and unit in OME_LENGTH:
            pixels[f"physical_size_{ax}"] = sizes[ax]
            pixels[f"physical_size_{ax}_unit"] = OME_LENGTH[unit]
    if source.time_increment:
        pixels["time_increment"] = source.time_increment
    annotations = []
    description = _tiff_description(path) if reader == "bioio_tifffile" else None
    if description:
        annotations.append(model.CommentAnnotation(id="Annotation:0", namespace="zarrchive/source-description",
                                                   value=description))
    doc = model.OME(
        creator=f"zarrchive {__version__} (generated from {reader})",
        images=[model.Image(id="Image:0", name=name, pixels=model.Pixels(**pixels),
                            annotation_refs=[model.AnnotationRef(id=a.id) for a in annotations])],
        structured_annotations=model.StructuredAnnotations(comment_annotations=annotations) if annotations else None,
    )
    return doc.to_xml().encode()


def _tiff_description(path: str) -> str | None:
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags.get("ImageDescription")
        return str(tag.value) if tag is not None and str(tag.value).strip() else None


@stage_task(name="convert", task_run_name="convert: {file.path}", tags=["pixels"], cache_key_fn=convert_key,
            persist_result=True)
def convert(
    file: FileRecord, entry: FileEntry | None, work: str, settings: ConvertSettings,
    companions: dict[str, str] | None = None,
) -> Traced[list[ImageRecord]]:
    from prefect.utilities.timeout import timeout

    try:
        with timeout(settings.timeout_seconds):
            result = traced("convert", convert_file, file, entry, work, settings, companions)
    except TimeoutError:
        raise StageTimeout(file.path, f"reading its headers took longer than convert.timeout_seconds "
                                      f"({settings.timeout_seconds:.0f} s): refused") from None
    log = runlog.logger()
    if not result.output:
        log.info("convert %s: its planes belong to the image of another file of its set", file.path)
    for image in result.output:
        calibration = ", ".join(f"{a.name} {s:g} {a.unit}" for a, s in zip(image.axes, image.levels[0].scale)
                                if a.unit) or "no physical size"
        log.info("convert %s: %s, %s %s, %s (%s), channels %s", file.path, image.image_id, " × ".join(
            f"{a.name}={n}" for a, n in zip(image.axes, image.shape)), image.dtype, calibration, image.reader,
            ", ".join(image.channel_names))
    return result


@stage_task(name="convert", task_run_name="convert: {name}", tags=["pixels", "batch"],
            cache_policy="none")  # (its inputs can be large; its items are small: redone on a rerun)
def convert_batch(items: list[tuple[FileRecord, FileEntry | None, dict[str, str]]], work: str,
                  settings: ConvertSettings, name: str) -> list[Traced[list[ImageRecord]] | batch.ItemFailed]:
    """``convert`` for many small files (file, entry, companions) in one task run (``zarrchive.batch``)."""
    return batch.run("convert", items, lambda file, entry, companions: convert.__wrapped__(
        file, entry, work, settings, companions), lambda item: item[0].path)


def probe_file(path: str, rel: str, entry: FileEntry, settings: ConvertSettings) -> str | None:
    """Why the ingest would fail to convert the local file ``path`` (submitted as ``rel``), or None: empty, not an
    image, a format no installed reader has, over the image budget, unreadable headers, or pixels the file
    declares but does not hold (truncated). Reads headers and the last plane's first tile, nothing more;
    ``zarrchive validate`` runs it on every listed image and label."""
    import tempfile

    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return "empty (0 bytes): not an image"
    record = FileRecord(path=rel, source_uri=path, staged_path=path, size=os.path.getsize(path) if os.path.isfile(
        path) else 0, sha256="0" * 64, kind=entry.kind if entry.kind != "attachment" else "image")
    try:
        with tempfile.TemporaryDirectory(prefix="zarrchive-probe-") as work:
            images = convert_file(record, entry, work, settings)
            for image in images:
                _probe_pixels(path, image)
    except InputError as exc:
        return exc.reason
    except Exception as exc:  # what convert would report as the file's failure
        return f"cannot be read: {type(exc).__name__}: {exc}"
    return None


def _probe_pixels(path: str, image: ImageRecord) -> None:
    """The pixels the image declares are in the file: every TIFF page's strips or tiles lie inside it; for other
    formats, the first tile of the last plane can be read."""
    from zarrchive.sources import read_region

    shown_as = image.shown_as
    if image.reader in ("bioio_ome_tiff", "bioio_tifffile"):
        return  # convert checked that every page of the series is there and inside the file
    level = image.levels[0]
    region = tuple(slice(n - 1, n) if a.name in "tcz" else slice(0, min(c, n))
                   for a, n, c in zip(image.axes, level.shape, level.chunks))
    try:
        read_region(path, image.layout, region)
    except Exception as exc:
        raise InputError(shown_as, f"its last plane cannot be read (truncated or damaged): "
                                   f"{type(exc).__name__}: {exc}") from exc
