"""OME-NGFF 0.5 metadata: built from an ImageRecord, checked by an independent validator."""

from __future__ import annotations

from typing import Any

import numpy as np

from zarrchive.records import ImageRecord

NGFF_VERSION = "0.5"
# Default channel colours (hex RGB) cycled for channels without one.
COLOURS = ("FFFFFF",) + ("0000FF", "00FF00", "FF0000", "FF00FF", "00FFFF", "FFFF00")


def multiscales_attrs(image: ImageRecord, windows: list[tuple[float, float]] | None = None) -> dict[str, Any]:
    """The ``ome`` attributes of an image group: multiscales plus an omero block (display windows per channel
    from the data when given, else the dtype's range)."""
    axes = []
    for axis in image.axes:
        entry: dict[str, Any] = {"name": axis.name, "type": axis.type}
        if axis.unit:
            entry["unit"] = axis.unit
        axes.append(entry)
    datasets = [
        {
            "path": level.path,
            "coordinateTransformations": [
                {"type": "scale", "scale": list(level.scale)},
                {"type": "translation", "translation": list(level.translation)},
            ],
        }
        for level in image.levels
    ]
    multiscale = {
        "name": image.image_id,
        "axes": axes,
        "datasets": datasets,
        "type": "mean",
        "metadata": {"description": "2x2 block mean (y, x; z too once z is no coarser than x); edge blocks "
                                    "average the pixels they hold",
                     "method": "zarrchive.tasks.pyramid.downsample_mean"},
    }
    return {"version": NGFF_VERSION, "multiscales": [multiscale], "omero": omero_block(image, windows)}


def omero_block(image: ImageRecord, windows: list[tuple[float, float]] | None = None) -> dict[str, Any]:
    dtype = np.dtype(image.dtype)
    n = len(image.channel_names)
    channels = []
    for i, name in enumerate(image.channel_names):
        colour = COLOURS[0] if n == 1 else COLOURS[1 + i % (len(COLOURS) - 1)]
        start, end = windows[i] if windows else (None, None)
        if dtype.kind in "ui":
            lo, hi = float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
        else:  # floats and masks: the range the data shows
            lo, hi = (start, end) if windows else (0.0, 1.0)
        channels.append({"label": name, "color": colour, "active": True,
                         "window": {"min": lo, "max": hi, "start": lo if start is None else start,
                                    "end": hi if end is None else end}})
    return {"channels": channels, "rdefs": {"model": "greyscale" if n == 1 else "color"}}


def validate_image(store_path: str) -> list[str]:
    """Problems an independent validator (ome-zarr-models) finds in an NGFF 0.5 image; [] when valid."""
    import zarr
    from ome_zarr_models.v05 import Image

    try:
        group = zarr.open_group(store_path, mode="r")
        Image.from_zarr(group)
    except Exception as exc:  # the validator's own error types vary; report them all
        return [f"{type(exc).__name__}: {exc}".strip()]
    return []
