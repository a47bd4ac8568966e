"""Input formats zarrchive reads with its own code, one module per kind, behind one small protocol.

A format says whether a file is one of its kind (from its first bytes and name), describes every series of it
from the headers alone (``Series``: axes, shape, type, physical sizes, channels, the original metadata to keep
beside the image), and gives a lazily indexed array of a series' pixels in its stored axis order (only the
region asked for is read). ``tasks/convert.py`` turns a description into the archive's image record, and
``sources.read_region`` reads the pixels through ``array``. Formats bioio reads (OME-TIFF, TIFF, OME-Zarr,
PNG/JPEG, the vendor plugins) are not here yet: they move behind the same protocol as the architecture step
goes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Series:
    """One series of a file, as its headers describe it."""

    name: str
    axes: str  # its stored axis order, OME-NGFF letters (a subset of "tczyx"), e.g. "zyx"
    shape: tuple[int, ...]
    dtype: str
    pixel_size: dict[str, float | None]  # z, y, x in ``unit``
    unit: str | None  # an OME-NGFF length name
    time_increment: float | None = None
    time_unit: str | None = None
    channel_names: list[str] | None = None
    channel_colours: list[str] | None = None  # hex RRGGBB
    documents: dict[str, bytes] = field(default_factory=dict)  # original metadata kept beside the image, by name
    notes: tuple[str, ...] = ()


class Format(Protocol):
    name: str  # the reader's name as layouts and QC record it, e.g. "zarrchive_mrc"
    description: str  # for people: "MRC / MAP / MRCS (electron microscopy)"

    def matches(self, path: str, head: bytes) -> bool: ...

    def describe(self, path: str, shown_as: str) -> list[Series]: ...

    def array(self, path: str, series: int) -> Any: ...


def native_formats() -> list[Format]:
    from zarrchive.formats import imaris, mrc

    return [mrc.FORMAT, imaris.FORMAT]


def match(path: str, head: bytes) -> Format | None:
    """The native format ``path`` is in (from its first bytes and name), or None."""
    return next((f for f in native_formats() if f.matches(path, head)), None)


def by_name(name: str) -> Format:
    return next(f for f in native_formats() if f.name == name)
