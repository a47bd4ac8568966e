"""What the formats bioio reads have in common: their images are the scenes of a ``BioImage``.

A ``ReaderFormat`` opens the file with its bioio reader once, checks the budget on what the headers declare,
and describes each scene; a kind of file says what differs (``tiff``, ``ometiff``, ``omezarr``, ``imageio``,
``plugins``) by overriding the hooks: the sizes it declares (``check_declared``), a scene's completeness
(``check_scene``), its metadata, its layout, its own OME-XML, its lossiness.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import re
from typing import TYPE_CHECKING, Any

import numpy as np

from zarrchive import budget
from zarrchive.budget import OverBudget
from zarrchive.errors import InputError
from zarrchive.formats import Found, Opened, SourceMetadata, describing
from zarrchive.records import SourceLayout, series_label

if TYPE_CHECKING:
    import dask.array as da

COLOUR_SAMPLES = ["R", "G", "B", "A"]
SAMPLE_COLOURS = ["FF0000", "00FF00", "0000FF", "FFFFFF"]


def lazy_pixels(img: Any, shown_as: str) -> tuple[da.Array, list[str] | None]:
    """Pixels of a BioImage's current scene as a lazy TCZYX array; RGB(A) samples become channels."""
    import dask.array as da

    dims = img.dims
    if "S" in dims.order and dims.S > 1:
        if dims.C > 1:
            raise InputError(shown_as, "images with both channels and colour samples are not supported")
        data = img.get_image_dask_data("TCZYXS")[:, 0]  # T Z Y X S
        return da.moveaxis(data, -1, 1), COLOUR_SAMPLES[: dims.S]
    return img.get_image_dask_data("TCZYX"), None


def scene_pixels(img: Any, shown_as: str) -> tuple[tuple[int, ...], str, list[str] | None]:
    """The current scene's TCZYX shape, its dtype and its colour samples, as ``lazy_pixels`` gives them; from a
    stand-in that knows them without bioio (``tiff.TiffScenes``) where ``img`` is one."""
    if hasattr(img, "scene_pixels"):
        return img.scene_pixels(shown_as)
    data, samples = lazy_pixels(img, shown_as)
    return tuple(int(n) for n in data.shape), str(np.dtype(data.dtype)), samples


@functools.cache
def share_xml_context() -> None:
    """Make OME-XML parses through ``ome_types.from_xml`` share an xsdata ``XmlContext``: one per thread.

    ``from_xml`` makes a new parser for each document, and with it a new context: the class metadata of every
    OME type it meets is built again, each time (xsdata's advice is to reuse a context; it caches what it
    builds). bioio-ome-tiff parses a file's OME-XML twice (to say it reads it, then to read it), so for a small
    OME-TIFF that was half of its 12 ms of conversion. A context is not made to be used by two threads at once
    (it rebuilds some of its caches in place), so each thread has its own. The parse itself, and what it gives,
    are unchanged; where ome-types or xsdata no longer look as expected, nothing is changed."""
    import threading
    from dataclasses import dataclass, field

    try:
        from ome_types import _conversion
        from xsdata_pydantic_basemodel.bindings import XmlContext

        base = _conversion.XmlParser
    except (ImportError, AttributeError):  # another version of the libraries: parse as they do
        return
    local = threading.local()

    def this_thread_s() -> XmlContext:
        if (made := getattr(local, "context", None)) is None:
            made = local.context = XmlContext()
        return made

    @dataclass
    class SharedContextParser(base):
        context: XmlContext = field(default_factory=this_thread_s)

    _conversion.XmlParser = SharedContextParser


class ReaderFormat:
    """A kind of file read by a bioio reader plugin (``module``)."""

    name: str  # the plugin's module, e.g. "bioio_tifffile"; layouts record it
    description: str

    def reader(self, shown_as: str) -> type:
        share_xml_context()
        return importlib.import_module(self.name).Reader

    # ------------------------------------------------------------ hooks (defaults: what any bioio reader says)

    def check_declared(self, opened: Opened) -> None:
        """Refuse what the headers declare beyond the image budget, before a reader builds anything from it."""

    def check_scene(self, opened: Opened, index: int, shown_as: str, in_set: bool, missing: list[str]) -> None:
        """Refuse a scene whose pixels the file does not hold."""

    def metadata(self, opened: Opened, img: Any, index: int) -> SourceMetadata:
        """Physical pixel sizes (micrometres) and channel names (bioio's ``Channel:i:j`` placeholders are none)."""
        sizes = img.physical_pixel_sizes
        values = {"z": sizes.Z, "y": sizes.Y, "x": sizes.X}
        names = [str(n) for n in (img.channel_names or [])]
        named = bool(names) and not all(re.fullmatch(r"Channel:\d+:\d+", n) for n in names)
        return SourceMetadata(pixel_size=values, unit="micrometer" if any(values.values()) else None,
                              channel_names=names if named else None)

    def layout(self, opened: Opened, img: Any, index: int, samples: bool, position: int) -> dict[str, Any]:
        """How the compress pass reads the reader's current scene (``index`` in the file's description,
        ``position`` as the reader sees it): the ``SourceLayout`` fields but its axes, decided now, while the scene
        is the current one."""
        return {"reader": self.name, "series": index, "samples_as_channels": samples}

    def own_xml(self, opened: Opened) -> bytes | None:
        return None

    def description_of(self, opened: Opened) -> str | None:
        return None

    def lossy(self, opened: Opened, index: int) -> str | None:
        return None

    def extras(self, opened: Opened, index: int, found: Found) -> dict[str, Any]:
        """Anything else a kind of file knows of a scene (a slide image's role and note, a field's well)."""
        return {}

    # ------------------------------------------------------------ the scenes

    def images(self, opened: Opened) -> list[Found]:
        self.check_declared(opened)
        return self.scenes(opened, self.reader(opened.shown_as))

    def open(self, opened: Opened, reader: type) -> tuple[Any, list[str]]:
        from bioio import BioImage

        try:
            img = BioImage(opened.path, reader=reader)
            return img, list(img.scenes)
        except MemoryError:
            raise OverBudget(opened.shown_as, f"{reader.__module__} ran out of memory reading its headers: it "
                                              "declares more than this machine can describe") from None
        except Exception as exc:
            raise InputError(opened.shown_as, f"cannot be read by {reader.__module__}: {exc}") from exc

    def scenes(self, opened: Opened, reader: type, *, img: Any = None, names: list[str] | None = None,
               chosen: list[int] | None = None, digest: str | None = None, source_set: tuple[str, ...] = (),
               missing: list[str] | None = None, metadata_of: Any = None) -> list[Found]:
        """Every scene of the file (those ``chosen``: their indices among the ``count`` the file describes, read
        in order as the reader's scenes 0, 1, …; ``names``: the scenes the file describes, when the reader sees
        fewer), each as a ``Found``."""
        if img is None:
            img, seen = self.open(opened, reader)
            names = names or seen
        count = len(names)
        budget.check_series_count(opened.shown_as, count, opened.limits)
        found = []
        for position, index in enumerate(range(count) if chosen is None else chosen):
            shown_as = series_label(opened.shown_as, index, count)
            with describing(shown_as):
                img.set_scene(index if chosen is None else position)
                budget.check_shape(shown_as, img.shape, np.dtype(img.dtype).itemsize, opened.limits,
                                   opened.record.size)
                self.check_scene(opened, position, shown_as, bool(source_set), missing or [])
                found.append(self.scene(opened, img, index, position, count, names, shown_as, metadata_of,
                                        digest=digest, source_set=source_set))
        return found

    def scene(self, opened: Opened, img: Any, index: int, position: int, count: int, names: list[str],
              shown_as: str, metadata_of: Any, **given: Any) -> Found:
        """The reader's current scene (``position`` in the file as the reader sees it; ``index`` its series in
        the file's own description)."""
        tczyx, dtype, samples = scene_pixels(img, shown_as)
        metadata = metadata_of(index) if metadata_of else self.metadata(opened, img, index)
        if samples:  # colour samples: red, green, blue (and alpha)
            metadata = SourceMetadata(metadata.pixel_size, metadata.unit, metadata.time_increment,
                                      metadata.time_unit, samples, SAMPLE_COLOURS[: len(samples)])

        fields = self.layout(opened, img, index, bool(samples), position)

        def layout(axes: tuple[str, ...]) -> SourceLayout:
            return SourceLayout(axes=axes, **fields)

        found = Found(reader=self.name, file=opened.shown_as, index=index, count=count, name=str(names[index]),
                      tczyx=tczyx, dtype=dtype, metadata=metadata,
                      layout=layout, own_xml=self.own_xml(opened), description=self.description_of(opened),
                      lossy=self.lossy(opened, position), **given)
        extras = self.extras(opened, position, found)
        return dataclasses.replace(found, **extras) if extras else found
