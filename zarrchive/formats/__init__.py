"""Input formats, one object per kind of file, behind one small protocol.

``identify`` chooses a file's format from its content (first bytes, OME-XML, a Zarr store's metadata), never
its name alone. A format's ``images`` reads the headers of an ``Opened`` file and says what images it holds
(``Found``: shape in t, c, z, y, x, type, what the file says of its physical sizes and channels, how its
pixels are read, its own OME-XML or description, whether they went through a lossy compression, a slide
image's role, a screening field's well); it reads no pixels. ``tasks/convert.py`` merges that with what the
submission says and builds the archive's image records; the compress pass reads the pixels through the
``SourceLayout`` a format gave (``zarrchive.pixels.sources``).

The kinds: ``ometiff`` (OME-TIFF, multi-file sets, screening files), ``tiff`` (TIFF, ImageJ hyperstacks,
whole-slide files), ``omezarr`` (OME-Zarr 0.4/0.5), ``imageio`` (PNG, JPEG), ``plugins`` (ND2, CZI, LIF, VSI
through optional bioio plugins), and the two read by zarrchive's own code, ``mrc`` and ``imaris`` (they
describe their ``Series`` and give a lazily indexed array of them). Importing this package loads neither bioio
nor a reader: Dask workers import it to read pixels.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

from zarrchive.errors import InputError, UnsupportedFormat
from zarrchive.records import SourceLayout, series_label

if TYPE_CHECKING:
    import tifffile

    from zarrchive.config import ImageBudget
    from zarrchive.records import FileRecord, WellPosition

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
PNG_MAGIC, JPEG_MAGIC = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


@dataclass(frozen=True)
class SourceMetadata:
    """What a file itself says about one of its images."""

    pixel_size: dict[str, float | None]  # z, y, x in ``unit``
    unit: str | None
    time_increment: float | None = None
    time_unit: str | None = None
    channel_names: list[str] | None = None  # None when the file names no channel
    channel_colours: list[str] | None = None  # hex RRGGBB per channel; None when the file gives none
    channel_windows: list[tuple[float, float]] | None = None  # display window (start, end) per channel, if given


@dataclass(frozen=True)
class Found:
    """One image a format found in a file, from its headers."""

    reader: str  # the reader's name as layouts and QC record it, e.g. "bioio_ome_tiff", "zarrchive_mrc"
    file: str  # the file as submitted, for messages
    index: int  # its series in the file
    count: int  # how many series the file has
    name: str
    tczyx: tuple[int, int, int, int, int]
    dtype: str
    metadata: SourceMetadata
    layout: Callable[[tuple[str, ...]], SourceLayout]  # how to read it, given the image's axes (decided when it
    #                                                    was found: it reads nothing of the file)
    own_xml: bytes | None = None  # the file's own OME-XML document, kept whole; None: one is generated
    description: str | None = None  # the file's own description (kept in the generated OME-XML)
    documents: dict[str, bytes] = field(default_factory=dict)  # other original metadata kept beside the image
    lossy: str | None = None  # the lossy compression its pixels went through (JPEG…)
    role: str | None = None  # a whole-slide file: "" the slide, "label", "macro"…; None: no such file
    notes: tuple[str, ...] = ()
    digest: str | None = None  # its source's identity when not the file's sha256 (a multi-file set)
    source_set: tuple[str, ...] = ()  # the submitted files of its multi-file set
    well: WellPosition | None = None  # where the file's own OME-XML places it on a screening plate

    @property
    def shown_as(self) -> str:
        return series_label(self.file, self.index, self.count)


class Opened:
    """A staged file being described: its record, the staged sha256 of the other files of its folder
    (``companions``), the image budget, and the file opened once for every format question asked of it
    (``tiff``). Close it (or use it as a context manager) when done."""

    # Each is read once, on first use. Not ``functools.cached_property``: on Python 3.11 it holds one lock for every
    # instance of the class while it computes, so the files a stage's threads describe at once were opened one
    # after another, each thread waiting for the others' reads (Python 3.12 dropped that lock).

    def __init__(self, record: FileRecord, limits: ImageBudget, companions: dict[str, str] | None = None):
        self.record, self.limits, self.companions = record, limits, companions
        self.path, self.shown_as = record.staged_path, record.path
        self._head: bytes | None = None
        self._tiff: tifffile.TiffFile | None = None

    @property
    def head(self) -> bytes:
        if self._head is None:
            if os.path.isdir(self.path):
                self._head = b""
            else:
                with open(self.path, "rb") as fh:
                    self._head = fh.read(1024)
        return self._head

    @property
    def tiff(self) -> tifffile.TiffFile:
        if self._tiff is None:
            import tifffile

            self._tiff = tifffile.TiffFile(self.path)
        return self._tiff

    def close(self) -> None:
        if self._tiff is not None:
            tiff, self._tiff = self._tiff, None
            tiff.close()

    def __enter__(self) -> Opened:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def describing(shown_as: str) -> Iterator[None]:
    """Describe one image of a file: a failure that is the file's (``errors.is_file_fault``) is named as an
    ``InputError``, or ``OverBudget`` when describing it ran out of memory; any other stays what it is."""
    from zarrchive.budget import OverBudget
    from zarrchive.errors import is_file_fault

    try:
        yield
    except MemoryError:
        raise OverBudget(shown_as, "ran out of memory describing it: it declares more than this machine can "
                                   "describe") from None
    except Exception as exc:
        if not is_file_fault(exc):  # the archive's own error, or the machine's (a full work area…): as it is
            raise
        raise InputError(shown_as, f"cannot be converted: {type(exc).__name__}: {exc}") from exc


class Format(Protocol):
    name: str  # the reader's name as layouts record it
    description: str  # for people: "OME-TIFF", "MRC / MAP / MRCS (electron microscopy)"

    def images(self, opened: Opened) -> list[Found]: ...


@dataclass(frozen=True)
class Series:
    """One series of a file in a format zarrchive reads itself, as its headers describe it."""

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


class NativeFormat:
    """A format zarrchive reads with its own code: it describes its series (``describe``) and gives a lazily
    indexed array of a series' pixels in its stored axis order (``array``; only the region asked for is read)."""

    name: str
    description: str

    def matches(self, path: str, head: bytes) -> bool:
        raise NotImplementedError

    def describe(self, path: str, shown_as: str) -> list[Series]:
        raise NotImplementedError

    def array(self, path: str, series: int) -> Any:
        raise NotImplementedError

    def images(self, opened: Opened) -> list[Found]:
        from zarrchive import budget

        described = self.describe(opened.path, opened.shown_as)
        budget.check_series_count(opened.shown_as, len(described), opened.limits)
        found = []
        for index, series in enumerate(described):
            shown_as = series_label(opened.shown_as, index, len(described))
            budget.check_shape(shown_as, series.shape, _itemsize(series.dtype), opened.limits, opened.record.size)
            dims = dict(zip(series.axes, series.shape))

            def layout(axes: tuple[str, ...], index: int = index, stored: str = series.axes) -> SourceLayout:
                return SourceLayout(reader=self.name, series=index, axes=axes, stored_axes=stored)

            found.append(Found(
                reader=self.name, file=opened.shown_as, index=index, count=len(described), name=series.name,
                tczyx=tuple(dims.get(a, 1) for a in "tczyx"), dtype=series.dtype, layout=layout,
                metadata=SourceMetadata(series.pixel_size, series.unit, series.time_increment, series.time_unit,
                                        series.channel_names, series.channel_colours),
                documents=series.documents, notes=series.notes))
        return found


def _itemsize(dtype: str) -> int:
    import numpy as np

    return np.dtype(dtype).itemsize


def native_formats() -> list[NativeFormat]:
    from zarrchive.formats import imaris, mrc

    return [mrc.FORMAT, imaris.FORMAT]


def reader_formats() -> list[Any]:
    from zarrchive.formats import imageio, ometiff, omezarr, plugins, tiff

    return [ometiff.FORMAT, tiff.FORMAT, omezarr.FORMAT, imageio.FORMAT, *plugins.FORMATS, plugins.VSI]


def by_name(name: str) -> Any:
    """The format whose reader is called ``name`` (as a layout records it)."""
    return next(f for f in [*native_formats(), *reader_formats()] if f.name == name)


def identify(path: str, shown_as: str, opened: Opened | None = None) -> Format:
    """The format of a staged file (or Zarr store), from its content; ``UnsupportedFormat`` naming ``shown_as``
    when none reads it, ``InputError`` when it is empty. ``opened``: the file, when it is being described."""
    from zarrchive.formats import imageio, ometiff, omezarr, plugins, tiff

    if os.path.isdir(path):
        return omezarr.FORMAT.check_store(path, shown_as)
    with open(path, "rb") as fh:
        head = fh.read(1024)
    if not head:
        raise InputError(shown_as, "empty (0 bytes): not an image")
    if native := next((f for f in native_formats() if f.matches(path, head)), None):
        return native
    if head[:4] in TIFF_MAGIC:
        if shown_as.lower().endswith(".vsi"):
            return plugins.VSI.check_installed(shown_as)
        return ometiff.FORMAT if tiff.is_ome(path, shown_as, opened) else tiff.FORMAT
    if head.startswith((PNG_MAGIC, JPEG_MAGIC)):
        return imageio.FORMAT
    for vendor in plugins.FORMATS:
        if vendor.matches(head):
            return vendor.check_installed(shown_as)
    raise UnsupportedFormat(shown_as, "format not supported in this installation (the content is none of OME-TIFF, "
                                      "TIFF, PNG, JPEG, ND2, CZI, LIF, MRC, Imaris, OME-Zarr)")
