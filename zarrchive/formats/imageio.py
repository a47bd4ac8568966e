"""PNG and JPEG (read by bioio-imageio): a figure or a photograph, grey or colour (its samples become the
channels R, G, B and A). A JPEG's pixels went through a lossy compression: QC reports it with the sizes."""

from __future__ import annotations

from zarrchive.formats import JPEG_MAGIC, Opened
from zarrchive.formats.bioio import ReaderFormat


class ImageioFormat(ReaderFormat):
    name = "bioio_imageio"
    description = "PNG, JPEG"

    def lossy(self, opened: Opened, index: int) -> str | None:
        return "JPEG" if opened.head.startswith(JPEG_MAGIC) else None


FORMAT = ImageioFormat()
