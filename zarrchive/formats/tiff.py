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
from zarrchive.formats.bioio import COLOUR_SAMPLES, ReaderFormat
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
UNNAMED = "QI"  # tifffile's letters for an axis it cannot name (bioio-tifffile names them from the shape)


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

    def images(self, opened: Opened) -> list[Found]:
        """Every series, described by tifffile alone where that is what bioio-tifffile would say (``TiffScenes``):
        a plain TIFF is then converted without importing bioio (0.6 s and 64 MiB of a ``zarrchive convert``)."""
        self.check_declared(opened)
        with tiff_must_be_whole(opened.shown_as):  # what tifffile complains of while it builds the series
            alone = TiffScenes.of(opened.tiff)
        if alone is not None:
            return self.scenes(opened, None, img=alone, names=list(alone.scenes))
        return self.scenes(opened, self.reader(opened.shown_as))

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

    def scene(self, opened: Opened, img: Any, index: int, position: int, count: int, names: list[str],
              shown_as: str, metadata_of: Any, **given: Any) -> Found:
        """The series as an image, refused where its pixels would not all be archived: bioio-tifffile reads an
        axis it cannot place among TCZYXS (tifffile's R, H, E, A…) at its first index only."""
        found = super().scene(opened, img, index, position, count, names, shown_as, metadata_of, **given)
        native = native_dims(img)
        if self.name == TiffFormat.name and (held := math.prod(n for _d, n in native)) != math.prod(found.tczyx):
            lost = [f"{d} of {n}" for d, n in native if d not in "TCZYXS" and n > 1]
            raise InputError(shown_as, f"its {'axes' if len(lost) > 1 else 'axis'} {', '.join(lost) or '?'} (of "
                                       f"{''.join(d for d, _n in native)}) cannot be archived as t, c, z, y, x: only "
                                       f"{math.prod(found.tczyx):,} of its {held:,} pixels would be read. Save it "
                                       "with its axes named T, C, Z (ImageJ or OME-TIFF)")
        return found

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


class TiffScenes:
    """A TIFF's series as ``BioImage`` describes them when bioio-tifffile reads the file (its scenes; a scene's
    dims, shape and dtype, the reader's own dims), from tifffile alone. Made (``of``) only where that is certain:
    no OME-XML, no Micro-Manager stack (bioio-tifffile opens files as plain TIFFs), and every series' axes, named
    as bioio-tifffile names them, among TCZYXS, each once. ``tests/test_formats`` holds it to bioio on every kind
    of TIFF it writes. One deliberate difference: a stack of colour planes (``colour_stack_dims``)."""

    def __init__(self, series: list[tuple[str, tuple[int, ...], str]]) -> None:
        self.series = series  # (dims, shape, dtype) of each series, as the reader names them
        self.scenes = tuple(f"Image:{i}" for i in range(len(series)))
        self.index = 0

    @classmethod
    def of(cls, tif: Any) -> TiffScenes | None:
        try:
            if tif.is_ome or tif.is_mmstack:
                return None
            series = [(colour_stack_dims(s.axes, tuple(s.shape)), tuple(int(n) for n in s.shape), str(s.dtype))
                      for s in tif.series]
        except Exception:  # bioio then reads it, and says what is wrong with it
            return None
        if not series or not all(len(dims) == len(shape) == len(set(dims)) and set(dims) <= set("TCZYXS")
                                 for dims, shape, _dtype in series):
            return None
        return cls(series)

    def set_scene(self, index: int) -> None:
        self.index = index

    @property
    def native_dims(self) -> list[tuple[str, int]]:
        dims, shape, _dtype = self.series[self.index]
        return list(zip(dims, shape))

    @property
    def dims(self) -> dict[str, int]:
        """BioImage's dims: TCZYX, and S where the reader has it."""
        sizes = dict(self.native_dims)
        return {d: sizes.get(d, 1) for d in ("TCZYXS" if "S" in sizes else "TCZYX")}

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.dims.values())

    @property
    def dtype(self) -> str:
        return self.series[self.index][2]

    def scene_pixels(self, shown_as: str) -> tuple[tuple[int, ...], str, list[str] | None]:
        """As ``bioio.lazy_pixels`` gives them: colour samples (S > 1) become the channels."""
        d = self.dims
        if d.get("S", 1) > 1:
            if d["C"] > 1:
                raise InputError(shown_as, "images with both channels and colour samples are not supported")
            return (d["T"], d["S"], d["Z"], d["Y"], d["X"]), self.dtype, COLOUR_SAMPLES[: d["S"]]
        return (d["T"], d["C"], d["Z"], d["Y"], d["X"]), self.dtype, None


def colour_stack_dims(axes: str, shape: tuple[int, ...]) -> str:
    """``reader_dims``, but for one difference: bioio-tifffile names an unnamed axis beside colour samples C, and
    a stack of colour planes as tifffile saves it by default (``QYXS``) would then have channels and samples both,
    which is refused. The axis is named Z instead (as the unnamed axis of a stack of grey planes is), or T."""
    dims = reader_dims(axes, shape)
    sizes = dict(zip(axes, shape))
    if sizes.get("S", 1) > 1 and "C" in dims and axes[dims.index("C")] in UNNAMED:
        if (free := next((d for d in "ZT" if d not in dims), None)) is not None:
            return dims.replace("C", free)
    return dims


def reader_dims(axes: str, shape: tuple[int, ...]) -> str:
    """A series' axes as bioio-tifffile names them: tifffile's, an unnamed one (``UNNAMED``) given the first of
    the dims a shape this long is guessed to have (the last of TCZYX) that no other axis has already."""
    if not any(a in UNNAMED for a in axes):
        return axes
    guessed = "TCZYX"[5 - len(shape):]  # bioio's guess, negative start and all
    named: list[str] = []
    for letter in axes:
        if letter not in UNNAMED:
            named.append(letter)
            continue
        free = [g for g in guessed if g not in named and g not in axes]
        named.append(free[0] if free else letter)
    return "".join(named)


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


def native_dims(img: Any) -> list[tuple[str, int]]:
    """The current scene's dims as its reader names them (bioio-tifffile's, or ``TiffScenes``'), with sizes."""
    if isinstance(img, TiffScenes):
        return img.native_dims
    data = img.reader.xarray_dask_data
    return [(str(d), int(n)) for d, n in zip(data.dims, data.shape)]


def tiff_axes(opened: Opened, img: Any, series: int) -> str | None:
    """The file's axes in tifffile's order, named as bioio names them, when tifffile can read the series
    directly: the axes longer than one agree in order, size and letter with the reader's native dims (bioio
    may add or drop singleton axes). None otherwise (the bioio reader then reads the pixels)."""
    dims = [(d, n) for d, n in native_dims(img) if n > 1]
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
