"""Imaris ``.ims`` files (HDF5; light-sheet and confocal), read with ``h5py`` (BSD-3-Clause).

Level 0 only (``DataSet/ResolutionLevel 0``: the file's own lower levels are not taken for the image, the
archive builds its pyramid from level 0), cropped to the image's size (``DataSetInfo/Image`` X, Y, Z): Imaris
pads every dataset to whole chunks. Channels, time points and z as the file has them; the voxel size from the
extents (ExtMax − ExtMin over the size) in the file's unit; channel names and colours from ``DataSetInfo/
Channel <c>``; the time step from the time points' stamps. Every ``DataSetInfo`` attribute is kept as
``OME/imaris-DataSetInfo.json`` beside the image.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any

import numpy as np

from zarrchive.errors import InputError
from zarrchive.formats import NativeFormat, Series
from zarrchive.units import length_unit

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _text(value: Any) -> str:
    """An Imaris attribute as text: Imaris stores them as arrays of one-byte strings."""
    if isinstance(value, np.ndarray):
        return b"".join(bytes(v) for v in value.ravel()).decode("utf-8", "replace")
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class ImarisFormat(NativeFormat):
    name = "zarrchive_imaris"
    description = "Imaris IMS (HDF5)"

    def matches(self, path: str, head: bytes) -> bool:
        if not head.startswith(HDF5_MAGIC):
            return False
        if path.lower().endswith(".ims"):
            return True
        try:
            import h5py

            with h5py.File(path, "r") as f:
                return "ImarisDataSet" in f.attrs or "DataSetInfo" in f
        except (OSError, ValueError):
            return False

    def describe(self, path: str, shown_as: str) -> list[Series]:
        import h5py

        try:
            with h5py.File(path, "r") as f:
                info = f["DataSetInfo"]
                image = info["Image"].attrs
                size = {ax: int(_text(image[ax.upper()])) for ax in "xyz"}
                level0 = f["DataSet/ResolutionLevel 0"]
                times = sorted(level0, key=lambda name: int(name.rsplit(" ", 1)[-1]))
                channels = sorted(level0[times[0]], key=lambda name: int(name.rsplit(" ", 1)[-1]))
                first = level0[times[0]][channels[0]]["Data"]
                stored = first.shape
                if any(s < n for s, n in zip(stored, (size["z"], size["y"], size["x"]))):
                    raise InputError(shown_as, f"damaged Imaris file: its data {stored} is smaller than the image "
                                               f"it declares (z={size['z']}, y={size['y']}, x={size['x']})")
                pixel = {}
                for i, ax in enumerate("xyz"):
                    low, high = float(_text(image[f"ExtMin{i}"])), float(_text(image[f"ExtMax{i}"]))
                    pixel[ax] = abs(high - low) / size[ax] if size[ax] and high != low else None
                unit = length_unit(_text(image["Unit"])) if "Unit" in image else "micrometer"
                names, colours = [], []
                for c in range(len(channels)):
                    attrs = info[f"Channel {c}"].attrs if f"Channel {c}" in info else {}
                    names.append(_text(attrs["Name"]) if "Name" in attrs else "")
                    colours.append(_colour(_text(attrs["Color"])) if "Color" in attrs else None)
                step = _time_step(info)
                documents = {"OME/imaris-DataSetInfo.json": json.dumps(
                    {group: {k: _text(v) for k, v in info[group].attrs.items()} for group in info},
                    indent=2, sort_keys=True).encode()}
                shape = (len(times), len(channels), size["z"], size["y"], size["x"])
                return [Series(
                    name=_text(image["Name"]) if "Name" in image else os.path.basename(shown_as), axes="tczyx",
                    shape=shape, dtype=str(first.dtype), pixel_size={"z": pixel["z"], "y": pixel["y"], "x": pixel["x"]},
                    unit=unit if any(v is not None for v in pixel.values()) else None,
                    time_increment=step, time_unit="second" if step else None,
                    channel_names=names if all(names) else None,
                    channel_colours=colours if all(colours) else None, documents=documents)]
        except InputError:
            raise
        except (KeyError, ValueError, OSError, IndexError) as exc:
            raise InputError(shown_as, f"damaged Imaris file: {type(exc).__name__}: {exc}") from None

    def array(self, path: str, series: int) -> Any:
        return ImarisArray(path)


class ImarisArray:
    """Level 0 of an Imaris file as one (t, c, z, y, x) array, cropped to the image's size, read lazily: indexing
    reads only the datasets and the region asked for."""

    def __init__(self, path: str):
        import h5py

        self.file = h5py.File(path, "r")
        image = self.file["DataSetInfo/Image"].attrs
        level0 = self.file["DataSet/ResolutionLevel 0"]
        self.times = sorted(level0, key=lambda name: int(name.rsplit(" ", 1)[-1]))
        self.channels = sorted(level0[self.times[0]], key=lambda name: int(name.rsplit(" ", 1)[-1]))
        self.level0 = level0
        first = level0[self.times[0]][self.channels[0]]["Data"]
        self.dtype = first.dtype
        self.shape = (len(self.times), len(self.channels), int(_text(image["Z"])), int(_text(image["Y"])),
                      int(_text(image["X"])))
        self.chunks = (1, 1, *first.chunks) if first.chunks else None  # the HDF5 dataset's (z, y, x) chunks

    def __getitem__(self, index: tuple) -> np.ndarray:
        index = tuple(index) + (slice(None),) * (5 - len(index))
        picks = [range(*i.indices(n)) if isinstance(i, slice) else [i] for i, n in zip(index[:2], self.shape[:2])]
        inner = tuple(slice(*i.indices(n)[:2]) if isinstance(i, slice) else i for i, n in zip(index[2:],
                                                                                               self.shape[2:]))
        block = np.stack([np.stack([self.level0[self.times[t]][self.channels[c]]["Data"][inner] for c in picks[1]])
                          for t in picks[0]])
        drop = tuple(0 if not isinstance(i, slice) else slice(None) for i in index[:2])
        return block[drop]


def _colour(text: str) -> str | None:
    try:
        rgb = [float(v) for v in text.split()[:3]]
    except ValueError:
        return None
    return "".join(f"{round(max(0.0, min(1.0, v)) * 255):02X}" for v in rgb) if len(rgb) == 3 else None


def _time_step(info: Any) -> float | None:
    """Seconds between the first two time points (their stamps: "2020-01-01 10:00:00.000"), None otherwise."""
    if "TimeInfo" not in info:
        return None
    attrs = info["TimeInfo"].attrs
    stamps = []
    for key in ("TimePoint1", "TimePoint2"):
        if key not in attrs:
            return None
        text = _text(attrs[key]).strip()
        try:
            stamps.append(dt.datetime.fromisoformat(text.replace(" ", "T")))
        except ValueError:
            return None
    seconds = (stamps[1] - stamps[0]).total_seconds()
    return seconds if seconds > 0 else None


FORMAT = ImarisFormat()
