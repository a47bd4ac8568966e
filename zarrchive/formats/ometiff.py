"""OME-TIFF (read by bioio-ome-tiff): the OME-XML describes every image, and may spread them over files.

Physical sizes, time step, channel names and colours come from the OME-XML, which is kept whole beside the
image. A multi-file set (the OME-XML's ``UUID FileName``s name other files) is one image, made from the file
holding its first planes; every member's sha256 is part of its identity, and the other members give no image.
A file whose OME-XML describes a larger acquisition than the files submitted (screening software writes one
file per field, each naming the whole plate) gives the images whose planes it holds itself, read by tifffile;
an image with planes in a missing file is an error naming them. A screening file's OME-XML places its images
on their plate (``tiff.plate_positions``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import posixpath
from typing import Any
from xml.etree import ElementTree

from zarrchive.errors import InputError
from zarrchive.formats import Found, Opened, SourceMetadata
from zarrchive.formats.tiff import FORMAT as TIFF
from zarrchive.formats.tiff import TiffFormat
from zarrchive.records import MICROMETERS
from zarrchive.units import length_unit
from zarrchive.units import time_unit as normal_time_unit


class OmeTiffFormat(TiffFormat):
    name = "bioio_ome_tiff"
    description = "OME-TIFF (single files, multi-file sets, screening fields)"

    def metadata(self, opened: Opened, img: Any, index: int) -> SourceMetadata:
        return ome_metadata(img.ome_metadata, index)

    def images(self, opened: Opened) -> list[Found]:
        self.check_declared(opened)
        try:
            members = set_members(opened.path, opened.tiff.ome_metadata)
        except ElementTree.ParseError as exc:
            raise InputError(opened.shown_as, f"damaged OME-XML: {exc}") from None
        if not members:
            return self.scenes(opened, self.reader(opened.shown_as))
        paths, missing = _member_paths(opened, members)
        if not missing:
            if paths[0] != opened.shown_as:
                return []  # its planes belong to the image of the set's first file
            return self.scenes(opened, self.reader(opened.shown_as), digest=_set_digest(opened, members, paths),
                               source_set=paths)
        own = own_images(opened)
        if not own:
            raise InputError(opened.shown_as, f"a multi-file OME-TIFF set of {len(paths)} files whose member(s) "
                                              f"{listing(missing)} are not in the submission, and none of its images "
                                              "lies in this file alone: list every file of the set")
        # bioio-ome-tiff reads no scene past the ones this file holds: tifffile does, by series, described by the
        # OME-XML
        img, names = self.open(opened, self.reader(opened.shown_as))
        ome = img.ome_metadata
        tiff_img, _seen = TIFF.open(opened, TIFF.reader(opened.shown_as))
        found = TIFF.scenes(opened, TIFF.reader(opened.shown_as), img=tiff_img, names=names, chosen=own,
                            missing=missing, metadata_of=lambda index: ome_metadata(ome, index))
        note = (f"{opened.shown_as}: its OME-XML describes a larger acquisition whose file(s) {listing(missing)} are "
                f"not in the submission; the {len(own)} image(s) whose planes this file holds were archived")
        return [dataclasses.replace(f, notes=f.notes + (note,)) for f in found]


def listing(paths: list[str], shown: int = 5) -> str:
    return ", ".join(paths[:shown]) + (f" and {len(paths) - shown} more" if len(paths) > shown else "")


def ome_metadata(ome: Any, scene: int) -> SourceMetadata:
    """What an OME-XML document (an ``ome_types`` model) says about its image ``scene``."""
    pixels = ome.images[scene].pixels
    sizes = {"z": pixels.physical_size_z, "y": pixels.physical_size_y, "x": pixels.physical_size_x}
    units = {ax: length_unit(getattr(pixels, f"physical_size_{ax}_unit")) for ax in "zyx" if sizes[ax] is not None}
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


def ome_tiff_set(path: str) -> list[str]:
    """The files of the multi-file OME-TIFF set ``path`` belongs to (names relative to its folder, in the order
    of their planes); [] for a file that holds its own planes, or is no OME-TIFF."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return set_members(path, tif.ome_metadata)
    except Exception:  # not a TIFF at all
        return []


def set_members(path: str, xml: str | None) -> list[str]:
    """``ome_tiff_set`` from the file's OME-XML (None: no OME-TIFF)."""
    if not xml:
        return []
    names: list[str] = []
    for element in ElementTree.fromstring(xml).iter():
        name = element.get("FileName") if element.tag.rsplit("}", 1)[-1] == "UUID" else None
        if name and name not in names:
            names.append(name)
    return names if any(n != os.path.basename(path) for n in names) else []


def own_images(opened: Opened) -> list[int]:
    """The images (their indices in the file's OME-XML) whose planes all lie in the file itself: every TiffData of
    the image names this file (by UUID FileName) or no file. A screening acquisition writes one file per field,
    each naming the whole plate: submitted alone, such a file holds complete images of its own."""
    xml = opened.tiff.pages.first.description or ""
    if "<OME" not in xml[:4096]:
        return []
    name = os.path.basename(opened.path)
    own = []
    images = [e for e in ElementTree.fromstring(xml) if e.tag.rsplit("}", 1)[-1] == "Image"]
    for index, image in enumerate(images):
        files = {uuid.get("FileName") or name for element in image.iter()
                 if element.tag.rsplit("}", 1)[-1] == "TiffData"
                 for uuid in ([u for u in element if u.tag.rsplit("}", 1)[-1] == "UUID"] or [element])}
        if files <= {name}:
            own.append(index)
    return own


def _member_paths(opened: Opened, members: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """The submitted paths of a multi-file set's members (in the order of their planes) and those missing from the
    submission."""
    folder = posixpath.dirname(opened.shown_as)
    paths = tuple(posixpath.normpath(posixpath.join(folder, name)) for name in members)
    here = os.path.dirname(opened.path)
    companions = opened.companions
    missing = [p for p, name in zip(paths, members) if p != opened.shown_as and (
        not os.path.isfile(os.path.join(here, name)) or (companions is not None and p not in companions))]
    return paths, missing


def _set_digest(opened: Opened, members: list[str], paths: tuple[str, ...]) -> str:
    """The identity of a complete multi-file set: the sha256 of every member's sha256."""
    import fsspec

    from zarrchive.archive.storage import sha256_stream

    here, record, companions = os.path.dirname(opened.path), opened.record, opened.companions
    digests = [record.sha256 if p == record.path else
               companions[p] if companions is not None else
               sha256_stream(fsspec.filesystem("file"), os.path.join(here, name))[1]
               for p, name in zip(paths, members)]
    return hashlib.sha256(" ".join(digests).encode()).hexdigest()


FORMAT = OmeTiffFormat()
