"""MRC, MAP and MRCS files (MRC2014): the electron-microscopy format of EMDB maps, EMPIAR movies and tomograms,
and EPU micrographs, read with ``mrcfile`` (BSD-3-Clause).

A single image is (y, x); an image stack (space group 0: movie frames, a tilt series, a stack of particles)
a series over t, (t, y, x); a volume (z, y, x); a stack of volumes (t, z, y, x). The voxel size comes from the
header (cell dimensions over the sampling), in ångström. Modes 0, 1, 2, 6 and 12 are signed 8 and 16-bit,
float32, unsigned 16-bit (IMOD's) and float16; mode 0 holds unsigned bytes when IMOD's header flags say so.
Complex maps (modes 3 and 4) are not images and are refused. The main header (as fields) and an FEI/EPU
extended header (one record of acquisition metadata per frame, as ``mrcfile`` reads it) are kept as
``OME/mrc-header.json`` beside the image; any other extended header is kept as its bytes.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import warnings
from typing import Any

import numpy as np

from zarrchive.errors import InputError, UnsupportedFormat
from zarrchive.formats import NativeFormat, Series

MAP_WORD = b"MAP "  # bytes 208-211 of an MRC2014 header
IMOD_STAMP = 1146047817
SUFFIXES = (".mrc", ".map", ".mrcs", ".st", ".ali", ".rec", ".mrc.gz")


# warnings.catch_warnings swaps the process's filters (and, recording, its showwarning) and puts back what it found:
# two threads of a worker interleaving their blocks would leave one's filters or recorder installed for good. Every
# block of this module holds this lock (headers and memory maps: quick).
_WARNINGS = threading.RLock()  # (describe holds it while it reads the extended header, which takes it too)


class MrcFormat(NativeFormat):
    name = "zarrchive_mrc"
    description = "MRC / MAP / MRCS (electron microscopy)"

    def matches(self, path: str, head: bytes) -> bool:
        if len(head) >= 212 and head[208:212] in (MAP_WORD, b"MAP\x00"):
            return True
        return path.lower().endswith(SUFFIXES) and len(head) >= 16 and _plausible_header(head)

    def describe(self, path: str, shown_as: str) -> list[Series]:
        import mrcfile

        try:
            with _WARNINGS, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with mrcfile.open(path, mode="r", permissive=True, header_only=True) as head:
                    self._check_size(head.header, path, shown_as)
                with mrcfile.mmap(path, mode="r", permissive=True) as mrc:
                    if mrc.data is None:
                        raise InputError(shown_as, "damaged MRC: " + _first(caught, "its header does not describe "
                                                                                    "its data"))
                    return [self._series(mrc, shown_as)]
        except (InputError, UnsupportedFormat):
            raise
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(shown_as, f"damaged MRC: {exc}") from None

    @staticmethod
    def _check_size(header: Any, path: str, shown_as: str) -> None:
        mode = int(header.mode)
        if mode in (3, 4):
            raise UnsupportedFormat(shown_as, f"an MRC map of complex numbers (mode {mode}): not an image")
        import mrcfile.utils

        try:
            itemsize = mrcfile.utils.dtype_from_mode(header.mode).itemsize
        except ValueError:
            raise InputError(shown_as, f"damaged MRC: mode {mode} is no MRC pixel type") from None
        count = int(header.nx) * int(header.ny) * int(header.nz)
        headers = 1024 + int(header.nsymbt)
        if count <= 0:
            raise InputError(shown_as, "damaged MRC: its header declares no pixels")
        if os.path.getsize(path) < headers + count * itemsize:
            raise InputError(shown_as, f"truncated: its header declares {count * itemsize:,} bytes of pixels after "
                                       f"{headers:,} bytes of headers, the file holds {os.path.getsize(path):,}")

    @staticmethod
    def _series(mrc: Any, shown_as: str) -> Series:
        header, data = mrc.header, mrc.data
        axes = _axes(mrc)
        # the header keeps single precision: the shortest decimal that is that float32 (1.06, not 1.0599999)
        size = {ax: float(str(np.float32(getattr(mrc.voxel_size, ax)))) for ax in "xyz"}
        pixel = {"z": size["z"] if "z" in axes and size["z"] > 0 else None,
                 "y": size["y"] if size["y"] > 0 else None, "x": size["x"] if size["x"] > 0 else None}
        notes = []
        order = (int(header.mapc), int(header.mapr), int(header.maps))
        if order != (1, 2, 3):
            notes.append(f"{shown_as}: its axes are stored in the order (mapc, mapr, maps) = {order}, kept as stored "
                         "(the header is kept in OME/mrc-header.json)")
        documents = {"OME/mrc-header.json": json.dumps(_header_document(mrc), indent=2, sort_keys=True,
                                                       default=_plain).encode()}
        return Series(name=os.path.basename(shown_as), axes=axes, shape=tuple(int(n) for n in data.shape),
                      dtype=str(_dtype(mrc)), pixel_size=pixel,
                      unit="angstrom" if any(v is not None for v in pixel.values()) else None,
                      documents=documents, notes=tuple(notes))

    def array(self, path: str, series: int) -> Any:
        import mrcfile

        with _WARNINGS, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mrc = mrcfile.mmap(path, mode="r", permissive=True)
        data = mrc.data
        if _dtype(mrc) != data.dtype:  # IMOD's unsigned bytes in mode 0
            data = data.view(_dtype(mrc))
        return data


def _plausible_header(head: bytes) -> bool:
    nx, ny, nz, mode = np.frombuffer(head[:16], dtype="<i4")
    return 0 < nx < 1 << 24 and 0 < ny < 1 << 24 and 0 < nz < 1 << 24 and mode in (0, 1, 2, 3, 4, 6, 12, 101)


def _axes(mrc: Any) -> str:
    if mrc.is_single_image():
        return "yx"
    if mrc.is_image_stack():
        return "tyx"
    if mrc.is_volume():
        return "zyx"
    return "tzyx"


def _dtype(mrc: Any) -> np.dtype:
    """The pixel type: mrcfile's, except IMOD's unsigned bytes in mode 0 (its stamp, with flag bit 0 clear)."""
    dtype = np.dtype(mrc.data.dtype)
    stamp, flags = imod_words(mrc.header)
    if int(mrc.header.mode) == 0 and stamp == IMOD_STAMP and not flags & 1:
        return np.dtype("uint8")
    return dtype.newbyteorder("=") if dtype.byteorder not in "=|" else dtype


def imod_words(header: Any) -> tuple[int, int]:
    """IMOD's stamp and flags (header bytes 152-159, inside MRC2014's ``extra2``), in the header's byte order."""
    raw = bytes(np.asarray(header.extra2).tobytes())[40:48]
    order = "<" if header.mode.dtype.byteorder in "<=|" else ">"
    stamp, flags = np.frombuffer(raw, dtype=f"{order}i4")
    return int(stamp), int(flags)


def _header_document(mrc: Any) -> dict[str, Any]:
    header = mrc.header
    document: dict[str, Any] = {"format": "MRC2014 header, as stored", "fields": {
        name: _plain(header[name]) for name in header.dtype.names}}
    ext = mrc.extended_header
    if ext is not None and ext.nbytes:
        exttyp = bytes(header.exttyp).decode("ascii", "replace").strip("\0 ")
        document["extended_header_type"] = exttyp
        indexed = None
        if exttyp in ("FEI1", "FEI2"):
            with _WARNINGS, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                indexed = mrc.indexed_extended_header
        if indexed is not None:
            document["extended_header"] = [{name: _plain(record[name]) for name in indexed.dtype.names}
                                           for record in indexed]
        else:
            document["extended_header_base64"] = base64.b64encode(ext.tobytes()).decode()
    return document


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.names:
            return {name: _plain(value[name]) for name in value.dtype.names}
        if value.dtype.kind == "S":
            return [v.decode("ascii", "replace").rstrip("\0 ") for v in value.ravel()] if value.ndim else \
                value.item().decode("ascii", "replace").rstrip("\0 ")
        return value.tolist()
    if isinstance(value, np.void):
        return {name: _plain(value[name]) for name in value.dtype.names} if value.dtype.names else \
            base64.b64encode(bytes(value)).decode()
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").rstrip("\0 ")
    return value


def _first(caught: list, default: str) -> str:
    return str(caught[0].message) if caught else default


FORMAT = MrcFormat()
