"""Vendor formats read by optional bioio reader plugins (``pip install 'zarrchive[vendor]'``; none needs a JVM):
Nikon ND2, Zeiss CZI, Leica LIF, and Olympus/Evident cellSens VSI. They are recognised by their first bytes
(a VSI by being a TIFF named ``.vsi``); without its plugin, a file is refused naming the plugin to install and
its licence. What the plugin says of the pixel sizes and channel names is carried over."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from zarrchive.errors import UnsupportedFormat
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


class VsiFormat(PluginFormat):
    def missing(self) -> str:
        return ("Olympus/Evident cellSens VSI: the .vsi file holds only an overview, the image lies in its companion "
                ".ets files, which this installation cannot read: it needs the reader plugin "
                f"{self.package} (pip install 'zarrchive[{self.extra}]'; {self.licence})")


FORMATS = (
    PluginFormat("bioio_nd2", "Nikon ND2", "bioio-nd2", "nd2", "bioio-nd2: MIT; nd2: BSD-3-Clause",
                 lambda head: head[:4] == b"\xda\xce\xbe\x0a"),
    PluginFormat("bioio_czi", "Zeiss CZI", "bioio-czi", "czi",
                 "bioio-czi: GPL-3.0; aicspylibczi: GPL-3.0-or-later; pylibCZIrw: LGPL-3.0 (libCZI)",
                 lambda head: head[:10] == b"ZISRAWFILE"),
    PluginFormat("bioio_lif", "Leica LIF", "bioio-lif", "lif", "bioio-lif and liffile: BSD-3-Clause",
                 lambda head: head[:4] == b"\x70\x00\x00\x00" and head[8:9] == b"\x2a"),
)
# An Olympus/Evident cellSens VSI file is a TIFF holding only an overview: the image lies in the companion
# ``_<name>_/stack*/frame_t*.ets`` files. bioio-vsi reads those (and refuses what it cannot read, naming it);
# without it the file is refused, never archived as its overview.
VSI = VsiFormat("bioio_vsi", "Olympus/Evident cellSens VSI", "bioio-vsi", "vsi",
                "bioio-vsi: BSD-3-Clause, pure Python (JPEG 2000 tiles need imagecodecs)")
