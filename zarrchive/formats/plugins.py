"""Vendor formats read by optional bioio reader plugins (``pip install 'zarrchive[vendor]'``; none needs a JVM):
Nikon ND2, Zeiss CZI, Leica LIF, and Olympus/Evident cellSens VSI. They are recognised by their first bytes
(a VSI by being a TIFF named ``.vsi``); without its plugin, a file is refused naming the plugin to install and
its licence. What the plugin says of the pixel sizes and channel names is carried over."""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from zarrchive.errors import InputError, UnsupportedFormat
from zarrchive.formats.bioio import ReaderFormat


@dataclass(frozen=True, eq=False)
class PluginFormat(ReaderFormat):
    name: str  # the plugin's module
    description: str
    package: str
    extra: str
    licence: str
    matches: Callable[[bytes], bool] = lambda head: False

    def check_installed(self, shown_as: str) -> PluginFormat:
        """This format, when its plugin is installed; ``UnsupportedFormat`` naming the plugin otherwise."""
        try:
            importlib.import_module(self.name)
        except ImportError:
            raise UnsupportedFormat(shown_as, self.missing()) from None
        return self

    def missing(self) -> str:
        return (f"format not supported in this installation: {self.description} needs the reader plugin "
                f"{self.package} (pip install 'zarrchive[{self.extra}]'; {self.licence})")


class DescribedAlone(PluginFormat):
    """A vendor format zarrchive describes without its bioio plugin where it can be sure to say what the plugin
    would (``LifScenes``, ``CziScenes``): whether the plugin is installed is known without importing it (2-2.4 s:
    bioio, ome-types' models, xarray, pint, pandas), which a file so described never needs."""

    def check_installed(self, shown_as: str) -> PluginFormat:
        if importlib.util.find_spec(self.name) is None:
            raise UnsupportedFormat(shown_as, self.missing())
        return self

    def stand_in(self, path: str) -> Scenes | None:
        """The file described without the plugin; None where that is not certain."""
        raise NotImplementedError

    def images(self, opened: Any) -> list[Any]:
        scenes = self.stand_in(opened.path)
        if scenes is None:  # the plugin describes it: importable, or refused naming the plugin
            PluginFormat.check_installed(self, opened.shown_as)
            return super().images(opened)
        self.check_declared(opened)
        return self.scenes(opened, None, img=scenes, names=list(scenes.scenes))


class LifFormat(DescribedAlone):
    """Leica LIF. bioio-lif describes the file; its pixels are read as they lie. A LIF image is one memory block of
    uncompressed pixels in C order of liffile's dims, and bioio-lif's lazy array makes a whole z-stack one chunk
    (a task reading one plane would hold the stack). Where the image is such a block (``lif_block``: a
    ``LifImage`` of the .lif file itself, its dims among TCZYX, every byte increment the XML declares that of the
    C order, no BGR samples), the layout names its stored axes and the pixels are read with a few reads at
    computed offsets (``sources.read_contiguous``); else through bioio-lif. Where ``LifScenes`` can describe the
    file, bioio-lif is not imported at all."""

    def stand_in(self, path: str) -> Scenes | None:
        return LifScenes.of(path)

    def layout(self, opened: Any, img: Any, index: int, samples: bool, position: int) -> dict[str, Any]:
        fields = super().layout(opened, img, index, samples, position)
        raw = lif_block(opened.path, position)
        if raw is None or samples or index != position:
            return fields
        return {**fields, "stored_axes": raw[3]}

    def array(self, path: str, series: int) -> Any:
        from zarrchive.pixels.sources import ContiguousArray

        raw = lif_block(path, series)
        if raw is None:
            raise ValueError(f"{path}: image {series} is no longer one block of pixels")
        return ContiguousArray(path, *raw[:3])


class CziFormat(DescribedAlone):
    """Zeiss CZI. bioio-czi describes the file and reads what libCZI cannot read plane by plane. Its lazy array
    makes a whole z-stack one chunk, so a task reading one plane would read, decode and hold the stack. Where a
    scene is one unscaled subblock per plane, all covering the scene (``pixels.czi.CziPlanes.of``), and bioio-czi
    gives it exactly that TCZYX shape and type with no colour samples, its regions are read plane by plane with
    libCZI (``CziPlanes``)."""

    def stand_in(self, path: str) -> Scenes | None:
        return CziScenes.of(path)

    def images(self, opened: Any) -> list[Any]:
        """bioio-czi's scenes are those the metadata describes; a file whose subblocks hold more (written by a
        tool that describes none) is refused, naming it, rather than archived without them (``CziScenes`` stands
        in only where they are the same)."""
        from zarrchive.pixels.czi import CziPlanes

        found = super().images(opened)
        held = CziPlanes.held(opened.path)
        if held > len(found):
            raise InputError(opened.shown_as, f"its pixels hold {held} scenes but its metadata describes "
                                              f"{len(found)}: bioio-czi would read only those, the rest would be lost")
        return found

    def layout(self, opened: Any, img: Any, index: int, samples: bool, position: int) -> dict[str, Any]:
        import numpy as np

        from zarrchive.pixels.czi import CziPlanes

        fields = super().layout(opened, img, index, samples, position)
        scene = CziPlanes.of(opened.path, index)
        if scene is None or samples or index != position:
            return fields
        if isinstance(img, CziScenes):  # (described from these scenes)
            return {**fields, "stored_axes": "tczyx"}
        dims = img.reader.dims
        extra = [d for d, n in zip(dims.order, dims.shape) if d not in "TCZYX" and n != 1]
        if extra or tuple(getattr(dims, d, 1) for d in "TCZYX") != scene.shape or np.dtype(img.dtype) != scene.dtype:
            return fields
        return {**fields, "stored_axes": "tczyx"}

    def lossy(self, opened: Any, index: int) -> str | None:
        """JPEG or JPEG XR subblocks (ZEN's JPEG XR is lossy unless set to lossless): QC reports the source as
        lossy, as it does a TIFF of such tiles."""
        from zarrchive.pixels.czi import CziPlanes

        return CziPlanes.lossy(opened.path, index)

    def array(self, path: str, series: int) -> Any:
        from zarrchive.pixels.czi import CziPlanes

        scene = CziPlanes.of(path, series)
        if scene is None:
            raise ValueError(f"{path}: scene {series} is no longer one subblock per plane")
        return CziPlanes(path, scene)


def lif_block(path: str, image: int) -> tuple[int, tuple[int, ...], Any, str] | None:
    """Where image ``image`` of a LIF file lies: its memory block's offset, its shape and dtype (little-endian)
    in liffile's dims, and those dims as NGFF axes; None where it is not one such block."""
    blocks = _lif_header(path)[1]
    return blocks[image] if 0 <= image < len(blocks) else None


def _lif_header(path: str) -> tuple[list[dict[str, Any] | None], tuple[Any, ...]]:
    """What ``LifScenes`` and ``lif_block`` read of a LIF file's header, parsed once for both and all its images:
    each image's scene (None: bioio-lif's to describe) and block (None: bioio-lif's to read); nothing for a file
    liffile does not read as a .lif."""
    import os

    stat = os.stat(path)
    return _lif_header_of(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _lif_header_of(path: str, _mtime: int, _size: int) -> tuple[list[dict[str, Any] | None], tuple[Any, ...]]:
    try:
        import liffile

        with liffile.LifFile(path) as lif:
            if lif.type != liffile.LifFileType.LIF:
                return [], ()
            return ([_lif_scene(found) for found in lif.images],
                    tuple(_lif_block(lif, found) for found in lif.images))
    except Exception:  # a file liffile reads otherwise than bioio-lif does: bioio-lif reads it (and says why)
        return [], ()


def _lif_block(lif: Any, found: Any) -> tuple[int, tuple[int, ...], Any, str] | None:
    """One image's block, where its pixels are exactly the C-ordered array of its shape: every dimension's and
    every channel's byte increment (as the XML declares them, which bioio-lif reads by) is that array's."""
    import liffile
    import numpy as np

    try:
        dims = "".join(found.dims).lower()
        if (type(found) is not liffile.LifImage or found.parent is not lif or found._shape_stored is not None
                or found._is_bgr or len(set(dims)) != len(dims) or not set(dims) <= set("tczyx")):
            return None  # (an image of a referenced .lof file lies in that file)
        shape, dtype = tuple(int(n) for n in found.shape), np.dtype(found.dtype).newbyteorder("<")
        strides = dict(zip(dims, np.cumprod((shape[1:] + (1,))[::-1])[::-1] * dtype.itemsize))
        xml = found.xml_element.find("Data/Image")
        for dim in xml.findall(".//DimensionDescription"):
            name = _LIF_DIMS.get(dim.attrib["DimID"], "?").lower()
            if int(dim.attrib["NumberOfElements"]) > 1 and (name not in strides
                                                            or int(dim.attrib["BytesInc"]) != strides[name]):
                return None
        increments = [int(c.attrib["BytesInc"]) for c in xml.findall(".//ChannelDescription")]
        if increments != [i * int(strides.get("c", 0)) for i in range(len(increments))]:
            return None
        block = found.memory_block
        if block.offset <= 0 or block.size < int(np.prod(shape)) * dtype.itemsize:
            return None
        return int(block.offset), shape, dtype, dims
    except Exception:  # what it cannot be sure of is bioio-lif's to read
        return None


class Scenes:
    """A file's images as ``BioImage`` describes them (its scenes, a scene's TCZYX shape and dtype, pixel sizes
    and channel names), from what a format's own reader gives, for a file its bioio plugin need not be imported
    for (``LifScenes``, ``CziScenes``)."""

    def __init__(self, images: list[dict[str, Any]]) -> None:
        self.images = images
        self.scenes = tuple(image["name"] for image in images)
        self.index = 0

    def set_scene(self, index: int) -> None:
        self.index = index

    @property
    def shape(self) -> tuple[int, ...]:
        return self.images[self.index]["shape"]

    @property
    def dtype(self) -> Any:
        return self.images[self.index]["dtype"]

    @property
    def physical_pixel_sizes(self) -> PixelSizes:
        return self.images[self.index]["sizes"]

    @property
    def channel_names(self) -> list[str]:
        return self.images[self.index]["channels"]

    def scene_pixels(self, shown_as: str) -> tuple[tuple[int, ...], str, None]:
        return self.shape, str(self.dtype), None


class CziScenes(Scenes):
    """A CZI file's scenes as bioio-czi describes them, from libCZI's subblock directory and the metadata XML:
    the scenes named as the metadata names them (``Image:0`` for a file that describes none), a scene's shape
    from its planes, a channel named by its Name, else its Id, a pixel size from the metadata's Distance in
    metres. Made (``of``) only where that is certain: every scene one subblock per plane, its planes counted
    from 0 (``pixels.czi.CziPlanes.of``), all of one pixel type, the scenes the subblocks hold described (each by
    a name of its own, no shape) or none and one held, one scale each for X and Y (at most one for Z), and a
    name or id for each channel. ``tests/test_formats`` holds it to bioio-czi."""

    @classmethod
    def of(cls, path: str) -> CziScenes | None:
        import xml.etree.ElementTree as ET

        from zarrchive.pixels.czi import scan as czi_scan

        scan = czi_scan(path)
        found, text = scan.scenes, scan.xml
        if not found or any(scene is None for scene in found) or len({scene.dtype for scene in found}) != 1:
            return None  # (bioio-czi gives every scene the file's one pixel type)
        try:
            root = ET.fromstring(text)
        except ET.ParseError:
            return None
        described = root.findall("./Metadata/Information/Image/Dimensions/S/Scenes/Scene")
        names = [scene.get("Name") for scene in described]
        if not described and len(found) == 1:
            names = ["Image:0"]
        elif (len(names) != len(found) or None in names or len(set(names)) != len(names)
              or any(scene.find("Shape") is not None for scene in described)):
            return None
        sizes = {}
        for axis in "ZYX":
            scales = root.findall(f"./Metadata/Scaling/Items/Distance[@Id='{axis}']")
            value = scales[0].find("./Value") if len(scales) == 1 else None
            if value is None or value.text is None:
                if axis != "Z" or scales:
                    return None
                sizes[axis] = None
                continue
            try:
                sizes[axis] = float(value.text) / 1e-6  # (metres, in micrometres: as bioio-czi computes it)
            except ValueError:
                return None
        channel_sets = root.findall(".//Image/Dimensions/Channels")
        images = []
        for index, scene in enumerate(found):
            count = scene.shape[1]
            if not channel_sets:
                return None
            channels = channel_sets[index if index < len(channel_sets) else 0].findall("./Channel")[:count]
            channel_names = [channel.get("Id") if channel.get("Name") is None else channel.get("Name")
                             for channel in channels]
            if len(channel_names) != count or None in channel_names:
                return None
            images.append({"name": names[index], "shape": scene.shape, "dtype": scene.dtype,
                           "sizes": PixelSizes(sizes["Z"], sizes["Y"], sizes["X"]), "channels": channel_names})
        return cls(images)


class PixelSizes(NamedTuple):
    Z: float | None
    Y: float | None
    X: float | None


_LIF_DIMS = {"1": "X", "2": "Y", "3": "Z", "4": "T"}  # DimensionDescription DimIDs with a physical scale


class LifScenes(Scenes):
    """A LIF file's images as ``BioImage`` describes them when bioio-lif reads the file (its scenes, a scene's
    TCZYX shape and dtype, pixel sizes and channel names), from liffile alone, as bioio-lif computes them: the
    scenes are liffile's images by path; a channel is named by the WideFieldChannelInfo of its LUT, else by its
    LUT; a dimension's scale is its Length over its elements less one, in micrometres when its unit is metres.
    Made (``of``) only where that is certain: a .lif file whose every image is a plain ``LifImage`` with dims
    among TCZYX (no mosaic tiles, no colour samples) and a name for each channel. ``tests/test_formats`` holds it
    to bioio-lif."""

    @classmethod
    def of(cls, path: str) -> LifScenes | None:
        images = _lif_header(path)[0]  # (none: bioio-lif then reads it, and says what is wrong with it)
        return cls(images) if images and all(image is not None for image in images) else None


def _lif_scene(image: Any) -> dict[str, Any] | None:
    try:
        return _lif_scene_of(image)
    except Exception:  # what it cannot be sure of is bioio-lif's to describe
        return None


def _lif_scene_of(image: Any) -> dict[str, Any] | None:
    import liffile
    import numpy as np

    sizes = dict(image.sizes)
    if type(image) is not liffile.LifImage or not set(sizes) <= set("TCZYX") or image._is_bgr:
        return None
    xml = image.xml_element.find("Data/Image")
    details: dict[str, Any] = {}
    for detail in xml.findall(".//WideFieldChannelInfo"):
        details.setdefault(detail.attrib.get("LUT", ""), detail)
    channels = []
    for channel in xml.findall(".//ChannelDescription"):
        detail = details.get(channel.attrib.get("LUTName", ""))
        channels.append("--".join(detail.attrib.get(key, "") for key in ("LUT", "ContrastingMethodName",
                                                                         "FluoCubeName"))
                        if detail is not None else channel.attrib.get("LUTName", ""))
    if len(channels) != sizes.get("C", 1):
        return None
    scales: dict[str, float] = {}
    for dim in xml.findall(".//DimensionDescription"):
        name, count = _LIF_DIMS.get(dim.attrib["DimID"]), int(dim.attrib["NumberOfElements"])
        if name is None or count < 2:
            continue
        scales[name] = float(dim.attrib["Length"]) / (count - 1) * (1e6 if dim.attrib.get("Unit") == "m" else 1)
    return {"name": image.path, "shape": tuple(int(sizes.get(d, 1)) for d in "TCZYX"), "dtype": np.dtype(image.dtype),
            "sizes": PixelSizes(scales.get("Z"), scales.get("Y"), scales.get("X")), "channels": channels}


class VsiFormat(PluginFormat):
    def missing(self) -> str:
        return ("Olympus/Evident cellSens VSI: the .vsi file holds only an overview, the image lies in its companion "
                ".ets files, which this installation cannot read: it needs the reader plugin "
                f"{self.package} (pip install 'zarrchive[{self.extra}]'; {self.licence})")


FORMATS = (
    PluginFormat("bioio_nd2", "Nikon ND2", "bioio-nd2", "nd2", "bioio-nd2: MIT; nd2: BSD-3-Clause",
                 lambda head: head[:4] == b"\xda\xce\xbe\x0a"),
    CziFormat("bioio_czi", "Zeiss CZI", "bioio-czi", "czi",
                 "bioio-czi: GPL-3.0; aicspylibczi: GPL-3.0-or-later; pylibCZIrw: LGPL-3.0 (libCZI)",
                 lambda head: head[:10] == b"ZISRAWFILE"),
    LifFormat("bioio_lif", "Leica LIF", "bioio-lif", "lif", "bioio-lif and liffile: BSD-3-Clause",
              lambda head: head[:4] == b"\x70\x00\x00\x00" and head[8:9] == b"\x2a"),
)
# An Olympus/Evident cellSens VSI file is a TIFF holding only an overview: the image lies in the companion
# ``_<name>_/stack*/frame_t*.ets`` files. bioio-vsi reads those (and refuses what it cannot read, naming it);
# without it the file is refused, never archived as its overview.
VSI = VsiFormat("bioio_vsi", "Olympus/Evident cellSens VSI", "bioio-vsi", "vsi",
                "bioio-vsi: BSD-3-Clause, pure Python (JPEG 2000 tiles need imagecodecs)")
