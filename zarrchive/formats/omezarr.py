"""OME-Zarr inputs (NGFF 0.4 and 0.5; read by bioio-ome-zarr, pixels by zarr from level 0).

A submitted Zarr store is one entry. Its first multiscale's level 0 is re-chunked, re-compressed and
re-pyramided like any image: its scale (in each axis' unit, space expressed in the x axis' unit), time step and
``omero`` channel labels, colours and display windows are carried over; bioformats2raw's ``OME/METADATA.ome.xml``
is kept as its OME-XML. A folder that is no Zarr store, or a Zarr store without multiscales, is refused.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

from zarrchive import budget
from zarrchive.errors import UnsupportedFormat
from zarrchive.formats import Opened, SourceMetadata
from zarrchive.formats.bioio import ReaderFormat
from zarrchive.ngff import image_attributes
from zarrchive.records import MICROMETERS
from zarrchive.units import length_unit
from zarrchive.units import time_unit as normal_time_unit

NGFF_ORDER = "tczyx"


class OmeZarrFormat(ReaderFormat):
    name = "bioio_ome_zarr"
    description = "OME-Zarr (NGFF 0.4, 0.5)"

    def check_store(self, path: str, shown_as: str) -> OmeZarrFormat:
        import fsspec

        from zarrchive.archive.storage import is_zarr_store

        if not is_zarr_store(fsspec.filesystem("file"), path):
            raise UnsupportedFormat(shown_as, "a folder that is not a Zarr store (no zarr.json, .zgroup or .zarray)")
        if not image_attributes(path).get("multiscales"):
            raise UnsupportedFormat(shown_as, "a Zarr store without OME-NGFF multiscales metadata (not an OME-Zarr "
                                              "image; a bioformats2raw collection: list its images one by one)")
        return self

    def check_declared(self, opened: Opened) -> None:
        if not (level0 := zarr_level0(opened.path, 0)):
            return
        for name in ("zarr.json", ".zarray"):
            document = os.path.join(opened.path, level0[0], name)
            if os.path.isfile(document):
                with open(document, "rb") as fh:
                    meta = json.load(fh)
                size = sum(os.path.getsize(os.path.join(base, f))
                           for base, _d, files in os.walk(opened.path) for f in files)
                budget.check_zarr_level(meta, opened.shown_as, opened.limits, size)
                break

    def metadata(self, opened: Opened, img: Any, index: int) -> SourceMetadata:
        return ome_zarr_metadata(opened.path, index)

    def layout(self, opened: Opened, img: Any, index: int, samples: bool, position: int) -> dict[str, Any]:
        level0 = zarr_level0(opened.path, index)
        return {**super().layout(opened, img, index, samples, position),
                "zarr_array": level0[0] if level0 else None, "zarr_axes": level0[1] if level0 else None}

    def own_xml(self, opened: Opened) -> bytes | None:
        document = os.path.join(opened.path, "OME", "METADATA.ome.xml")  # bioformats2raw's own OME-XML
        if os.path.isfile(document):
            with open(document, "rb") as fh:
                return fh.read()
        return None


def zarr_level0(path: str, series: int) -> tuple[str, str] | None:
    """An OME-Zarr input's level-0 array (its path in the store) and that array's axes, for zarr to read regions
    of directly; None when its axes are not NGFF's t, c, z, y, x (bioio's reader then reads the pixels)."""
    try:
        multiscale = image_attributes(path)["multiscales"][series]
        axes = "".join(a["name"].lower() for a in multiscale["axes"])
        array = multiscale["datasets"][0]["path"]
    except (KeyError, IndexError, TypeError):
        return None
    if len(set(axes)) != len(axes) or not set(axes) <= set(NGFF_ORDER) or not {"y", "x"} <= set(axes):
        return None
    return array, axes


def ome_zarr_metadata(path: str, scene: int) -> SourceMetadata:
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


FORMAT = OmeZarrFormat()
