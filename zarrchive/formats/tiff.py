"""TIFF files that are not OME-TIFF (read by bioio-tifffile): plain and ImageJ TIFFs, and whole-slide files.

Calibration comes from ImageJ's description (unit, z spacing, frame interval), from the resolution tags when
their unit is the centimetre, or from an Aperio slide's ``MPP``. A whole-slide file (Aperio SVS, Hamamatsu
NDPI, Leica SCN, Ventana BIF, Philips) holds the slide and the images its scanner adds beside it (label,
macro, thumbnail…): each is archived as an image of its own, named by its role.

Every TIFF (OME-TIFF too, ``ometiff`` builds on this) is opened once, checked against the image budget from its
first page and description before any series is built, refused when tifffile complains while parsing it (a
truncated or looping file; tifffile would otherwise read what it could, missing planes as zeros), and refused
when a series' planes, strips or tiles are not all in the file. Uncompressed pixels are read straight from
the file when the image's axes allow (``SourceLayout.tiff_axes``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import math
import posixpath
import re
import threading
from typing import Any

from zarrchive import budget, runlog
from zarrchive.errors import InputError
from zarrchive.formats import Found, Opened, SourceMetadata
from zarrchive.formats.bioio import ReaderFormat
from zarrchive.records import slug
from zarrchive.units import length_unit
from zarrchive.units import time_unit as normal_time_unit

LOSSY_TIFF = {"JPEG", "OJPEG", "WEBP", "JPEGXR", "JPEGXR_NDPI"}  # TIFF compressions that are lossy in practice

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


def is_ome(path: str, shown_as: str, opened: Opened | None = None) -> bool:
    """Whether a TIFF carries OME-XML; ``InputError`` naming ``shown_as`` when it is no readable TIFF."""
    import tifffile

    try:
        with tiff_must_be_whole(shown_as):  # what tifffile complains of while opening it refuses it
            if opened is not None:
                return bool(opened.tiff.is_ome)
            with tifffile.TiffFile(path) as tif:
                return bool(tif.is_ome)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(shown_as, f"damaged TIFF: {exc}") from exc


class TiffFormat(ReaderFormat):
    name = "bioio_tifffile"
    description = "TIFF (ImageJ hyperstacks, whole-slide files)"
    checks_pages = True  # every plane, strip and tile of a series is known to be in the file once described

    def check_declared(self, opened: Opened) -> None:
        try:
            with tiff_must_be_whole(opened.shown_as):
                budget.check_tiff(opened.tiff, opened.shown_as, opened.limits, os.path.getsize(opened.path))
        except (InputError, MemoryError):
            raise
        except Exception as exc:
            raise InputError(opened.shown_as, f"damaged TIFF: {type(exc).__name__}: {exc}") from exc

    def check_scene(self, opened: Opened, index: int, shown_as: str, in_set: bool, missing: list[str]) -> None:
        with tiff_must_be_whole(shown_as, allowed=missing):
            check_complete(opened, index, shown_as, in_set)

    def metadata(self, opened: Opened, img: Any, index: int) -> SourceMetadata:
        return tiff_metadata(opened.tiff, index)

    def layout(self, opened: Opened, img: Any, index: int, samples: bool, position: int) -> dict[str, Any]:
        return {**super().layout(opened, img, index, samples, position),
                "tiff_axes": tiff_axes(opened, img, position), "tiff_series": position if position != index else None}

    def own_xml(self, opened: Opened) -> bytes | None:
        xml = opened.tiff.ome_metadata  # an OME-TIFF read by tifffile (one holding only some of its images)
        return xml.encode() if xml else None

    def description_of(self, opened: Opened) -> str | None:
        tag = opened.tiff.pages[0].tags.get("ImageDescription")
        return str(tag.value) if tag is not None and str(tag.value).strip() else None

    def lossy(self, opened: Opened, index: int) -> str | None:
        name = tiff_compression(opened.tiff.series[index].keyframe)
        return name if name in LOSSY_TIFF else None

    def extras(self, opened: Opened, index: int, found: Found) -> dict[str, Any]:
        extras: dict[str, Any] = {}
        if (well := plate_positions(opened).get(found.index)) is not None:
            extras["well"] = well
        roles = slide_roles(opened)
        if roles and index < len(roles) and (role := roles[index]) is not None:
            base = slug(opened.shown_as)
            extras["role"] = role
            if role:
                extras["notes"] = found.notes + (f"{found.shown_as}: {ASSOCIATED[role]}; archived as {base}_{role} "
                                                 f"beside the slide ({base})",)
        return extras


def plate_positions(opened: Opened) -> dict[int, Any]:
    """The well of each image of an OME-TIFF whose OME-XML describes a screening plate (by image index); {} when
    it describes none, or a layout that cannot be read (the images are then archived as images of their own)."""
    return _memo(opened, "plate", lambda: _plate_positions(opened))


def _plate_positions(opened: Opened) -> dict[int, Any]:
    from zarrchive.plates import ome_plate_positions

    try:
        xml = opened.tiff.ome_metadata
        return ome_plate_positions(xml, posixpath.dirname(opened.shown_as)) if xml and "<Plate" in xml else {}
    except Exception as exc:
        runlog.logger().warning("%s: its OME-XML's plate layout cannot be read (%s): its images are archived "
                                "outside a plate", opened.shown_as, exc)
        return {}


def _memo(opened: Opened, key: str, compute: Any) -> Any:
    memo = opened.__dict__.setdefault("_memo", {})
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def slide_roles(opened: Opened) -> list[str | None] | None:
    """For a whole-slide TIFF, what each tifffile series is: ``""`` for the slide itself (its full-resolution
    pyramid), ``label``, ``macro``, ``thumbnail``… for the scanner's associated images, None for a series of no
    known role. None for any other file, or when the file does not hold exactly one slide (its series then keep
    their numbers)."""
    return _memo(opened, "roles", lambda: _slide_roles(opened.tiff))


def _slide_roles(tif: Any) -> list[str | None] | None:
    import tifffile

    try:
        if not any(getattr(tif, f"is_{kind}", False) for kind in WHOLE_SLIDE):
            return None
        roles: list[str | None] = []
        for series in tif.series:
            name = (series.name or "").strip().lower()
            roles.append(name if name in ASSOCIATED else "" if name == "baseline" or series.is_pyramidal else None)
    except (OSError, ValueError, tifffile.TiffFileError):
        return None
    return roles if roles.count("") == 1 and len(set(r for r in roles if r)) == sum(1 for r in roles if r) else None


def _svs_microns_per_pixel(tif: Any, series: int) -> float | None:
    """An Aperio slide's pixel size (``MPP`` in the baseline's description), for the slide only: the scanner's
    thumbnail repeats the slide's value though its pixels are larger."""
    if not tif.is_svs or (tif.series[series].name or "") != "Baseline":
        return None
    found = re.search(r"\|\s*MPP\s*=\s*([0-9.]+(?:[eE][-+]?[0-9]+)?)", tif.pages.first.description or "")
    mpp = float(found.group(1)) if found else None
    return mpp if mpp and math.isfinite(mpp) and 0 < mpp < 1e3 else None


def tiff_metadata(tif: Any, series: int) -> SourceMetadata:
    """Calibration of a plain TIFF from ImageJ metadata or the resolution tags (centimetre only), and of an
    Aperio slide from its description."""
    sizes: dict[str, float | None] = {"z": None, "y": None, "x": None}
    unit = None
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
                          time_unit=tunit if finterval else None)


def tiff_axes(opened: Opened, img: Any, series: int) -> str | None:
    """The file's axes in tifffile's order, named as bioio names them, when tifffile can read the series
    directly: the axes longer than one agree in order, size and letter with the reader's native dims (bioio
    may add or drop singleton axes). None otherwise (the bioio reader then reads the pixels)."""
    native = img.reader.xarray_dask_data
    dims = [(str(d), int(n)) for d, n in zip(native.dims, native.shape) if int(n) > 1]
    try:
        chosen = opened.tiff.series[series]
        t_axes, t_shape = chosen.axes, tuple(chosen.levels[0].shape)
    except Exception:
        return None
    if len(dims) != sum(1 for n in t_shape if n > 1) or any(len(d) != 1 for d, _n in dims):
        return None
    named, wide = [], iter(dims)
    for letter, size in zip(t_axes, t_shape):
        if size == 1:
            named.append(letter)  # a singleton: read at index 0 (or as the image's one channel)
            continue
        dim, n = next(wide)
        if n != size or (letter in "TCZYXS" and letter != dim):
            return None
        named.append(dim)
    return "".join(named)


def check_complete(opened: Opened, series: int, shown_as: str, own_set: bool) -> None:
    """Every plane a TIFF series declares is in the file, and every strip or tile of it lies inside the file
    (tifffile would read the planes of missing pages, or past the end, as zeros). ``own_set``: a multi-file
    OME-TIFF set, whose other members hold pages of their own (checked when those files are read)."""
    tif = opened.tiff
    size = os.path.getsize(opened.path)
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


def tiff_compression(page: Any) -> str:
    """The name of a TIFF page's compression; the Compression tag is optional (absent: 1, none), and tifffile
    then gives a plain number rather than its enumeration."""
    import tifffile

    value = page.compression
    if isinstance(value, tifffile.COMPRESSION):
        return value.name
    try:
        return tifffile.COMPRESSION(int(value)).name
    except ValueError:
        return f"compression {int(value)}"


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


FORMAT = TiffFormat()
