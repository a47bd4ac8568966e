"""The OME-XML document kept beside an image whose file has none of its own, written without ome-types.

Building it with ome-types' models cost a ``zarrchive convert`` 1.3 s and 40 MiB of imports (pydantic models of
the whole OME schema and a unit registry) for one small document. This writes the same bytes ome-types' ``to_xml``
writes for it (its attribute order and number formats, lxml's escaping, two-space indentation) and refuses what
its models refuse (a pixel type OME has no name for, a size that is not positive). ``tests/test_convert`` holds
it to ome-types on every kind of value. One difference: characters XML 1.0 cannot hold (control characters,
which some acquisition software leaves in a TIFF's description) are written as ``\\xNN`` escapes, where
ome-types failed and so the file failed to convert.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

NAMESPACE = "http://www.openmicroscopy.org/Schemas/OME/2016-06"
PIXEL_TYPES = {"int8", "int16", "int32", "uint8", "uint16", "uint32", "float", "double", "complex",
               "double-complex", "bit"}
LENGTH_UNITS = {"µm", "nm", "mm", "cm", "m", "Å", "pm"}
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass
class Generated:
    """What the document says of the image (``physical``: axis -> (size, OME unit symbol))."""

    creator: str
    name: str | None  # None: no Name (as ome-types writes it)
    pixel_type: str
    size: dict[str, int]  # x, y, z, c, t
    channels: list[str | None]
    physical: dict[str, tuple[float, str]] = field(default_factory=dict)
    time_increment: float | None = None
    description: str | None = None


def document(image: Generated) -> bytes:
    """The OME-XML document of ``image`` (UTF-8), as ome-types writes it; ``ValueError`` saying why where the
    OME schema allows no such document."""
    if image.pixel_type not in PIXEL_TYPES:
        raise ValueError(f"OME has no pixel type {image.pixel_type!r} (it has {', '.join(sorted(PIXEL_TYPES))})")
    for axis in "xyzct":
        if int(image.size[axis]) != image.size[axis] or int(image.size[axis]) < 1:
            raise ValueError(f"size {axis.upper()} {image.size[axis]} is not a positive whole number")
    for axis, (value, unit) in image.physical.items():
        try:
            positive = float(value) > 0
        except OverflowError:  # an integer too large for a float
            positive = False
        if not positive:
            raise ValueError(f"physical size {axis.upper()} {value} is not a positive number OME can hold")
        if unit not in LENGTH_UNITS:
            raise ValueError(f"{unit!r} is not an OME length unit")
    pixels = [("ID", "Pixels:0"), ("DimensionOrder", "XYZCT"), ("Type", image.pixel_type)]
    pixels += [(f"Size{a.upper()}", str(int(image.size[a]))) for a in "xyzct"]
    for axis in "xyz":
        if axis in image.physical:
            value, unit = image.physical[axis]
            pixels += [(f"PhysicalSize{axis.upper()}", number(value)), (f"PhysicalSize{axis.upper()}Unit", unit)]
    if image.time_increment is not None:
        pixels.append(("TimeIncrement", number(image.time_increment)))
    lines = [f'<OME xmlns="{NAMESPACE}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
             f'xsi:schemaLocation="{NAMESPACE} {NAMESPACE}/ome.xsd"{attributes([("Creator", image.creator)])}>',
             f"  <Image{attributes([('ID', 'Image:0'), ('Name', image.name)])}>",
             f"    <Pixels{attributes(pixels)}>"]
    lines += [f"      <Channel{attributes([('ID', f'Channel:0:{i}'), ('Name', name), ('SamplesPerPixel', '1')])}/>"
              for i, name in enumerate(image.channels)]
    lines += ["      <MetadataOnly/>", "    </Pixels>"]
    if image.description is not None:
        lines += ['    <AnnotationRef ID="Annotation:0"/>', "  </Image>", "  <StructuredAnnotations>",
                  '    <CommentAnnotation ID="Annotation:0" Namespace="zarrchive/source-description">',
                  f"      <Value>{text(image.description)}</Value>" if image.description else "      <Value/>",
                  "    </CommentAnnotation>",
                  "  </StructuredAnnotations>"]
    else:
        lines.append("  </Image>")
    lines.append("</OME>")
    return ("\n".join(lines) + "\n").encode()


def number(value: float) -> str:
    """A float as xsdata writes one: ``repr``, upper case, no ``+`` in the exponent; NaN, INF, -INF."""
    try:
        value = float(value)
    except OverflowError:
        raise ValueError(f"{value} is too large for a number OME can hold") from None
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "INF" if value > 0 else "-INF"
    return repr(value).upper().replace("E+", "E")


def xml_safe(value: str) -> str:
    """``value`` with each character XML 1.0 cannot hold written as a ``\\xNN`` (``\\uNNNN``) escape."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}",
                        value)


def text(value: str) -> str:
    """Element text escaped as lxml escapes it."""
    return (xml_safe(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("\r", "&#13;"))


def attributes(pairs: list[tuple[str, str]]) -> str:
    """Attributes escaped as lxml escapes them (quotes, and the whitespace an attribute would otherwise lose)."""
    return "".join(f' {name}="{attribute(value)}"' for name, value in pairs if value is not None)


def attribute(value: str) -> str:
    return text(str(value)).replace('"', "&quot;").replace("\n", "&#10;").replace("\t", "&#9;")
