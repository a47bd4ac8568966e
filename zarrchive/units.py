"""Units as files spell them, and as OME-NGFF names them (UDUNITS-2 names: ``micrometer``, ``second``…).

Readers meet every spelling (``µm`` with a micro sign or a Greek mu, ``um``, ``micron``, ``micrometres``,
``Å``, ``seconds``, ``sec``…); the archive writes only the OME-NGFF name, on every path (OME-XML, ImageJ,
OME-Zarr inputs, the submission). One table for lengths (with their size in micrometres, the conversion
table of the project) and one for time.
"""

from __future__ import annotations

import re
import unicodedata

from zarrchive.records import MICROMETERS

_LENGTH_ALIASES = {
    "micrometer": ("µm", "um", "micron", "microns", "micrometre", "micrometres", "micrometers", "\\u00b5m"),
    "nanometer": ("nm", "nanometre", "nanometres", "nanometers"),
    "millimeter": ("mm", "millimetre", "millimetres", "millimeters"),
    "centimeter": ("cm", "centimetre", "centimetres", "centimeters"),
    "meter": ("m", "metre", "metres", "meters"),
    "angstrom": ("å", "ångström", "ångstrom", "angstroms", "ångströms", "a°"),
    "picometer": ("pm", "picometre", "picometres", "picometers"),
    "kilometer": ("km", "kilometre", "kilometres", "kilometers"),
    "inch": ("in", "inches"),
}
_TIME = {
    "second": ("s", "sec", "secs", "seconds"),
    "millisecond": ("ms", "msec", "milliseconds"),
    "microsecond": ("µs", "us", "microseconds"),
    "nanosecond": ("ns", "nanoseconds"),
    "minute": ("min", "mins", "minutes"),
    "hour": ("h", "hr", "hrs", "hours"),
    "day": ("d", "days"),
}
LENGTH = {**{name: name for name in MICROMETERS}, **{a: name for name, aliases in _LENGTH_ALIASES.items()
                                                     for a in aliases}}
TIME = {**{name: name for name in _TIME}, **{a: name for name, aliases in _TIME.items() for a in aliases}}


def _key(text: str) -> str:
    text = unicodedata.normalize("NFKC", str(text)).strip()
    text = text.replace("\u03bc", "µ")  # the Greek mu some writers use for the micro sign
    return re.sub(r"\s+", " ", text).lower() if text not in ("Å", "m", "A") else text.lower()


def length_unit(text: object) -> str | None:
    """The OME-NGFF name of a length unit however it is spelt (``µm``, ``micron``, ``Å``…); None when it is not
    one (``pixel``, an empty string, an unknown word)."""
    if text is None:
        return None
    return LENGTH.get(_key(getattr(text, "value", text)))


def time_unit(text: object) -> str | None:
    """The OME-NGFF name of a time unit however it is spelt (``s``, ``sec``, ``seconds``…); None otherwise."""
    if text is None:
        return None
    return TIME.get(_key(getattr(text, "value", text)))


# OME-XML's own spellings, for the OME-XML zarrchive writes for other formats
OME_LENGTH = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm", "meter": "m",
              "angstrom": "Å", "picometer": "pm"}


def human_size(n: float) -> str:
    """A byte count for people, in decimal units: 18.6 MB."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
