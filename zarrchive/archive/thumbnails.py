"""A picture of each published image for its landing page: a PNG made from a low level of its pyramid.

The level is the largest whose planes fit ``SIZE`` pixels on their longer side (else the smallest one, read
with a stride that makes it fit), the plane the first time point and the middle of z. Each of the first three channels is shown in its
colour through its display window (the ``omero`` window the image carries: the input's, or the 0.1–99.9
percentiles compress measured), the channels added; a single channel is grey. A picture whose three colours
come out equal (one channel, or grey ones) is a greyscale PNG. Reads a few
kilobytes; the PNG is deflated at zlib level 1, run-length strategy, each row filtered as the difference from its
left neighbour (imagecodecs' fast settings, OpenCV's: on scikit-image's camera, cell, coins, moon and astronaut
pictures 2.4-2.8 times as fast as level 1 with libpng's adaptive filters, and 0.98-1.02 times its size; a few
per cent larger than the default level; a publish of 10,000 fields makes 10,000 of them).
"""

from __future__ import annotations

from typing import Any

import imagecodecs
import numpy as np
import zarr

SIZE = 256
PNG_LEVEL = 1
PNG_STRATEGY, PNG_FILTER = 3, 16  # zlib's run-length strategy, each row the difference from its left neighbour
COLOURS = ("FFFFFF", "00FF00", "FF00FF")  # when the image names none: grey, then green and magenta


def thumbnail_png(store: str, size: int = SIZE, attrs: dict[str, Any] | None = None,
                  levels: dict[str, Any] | None = None) -> bytes:
    """The PNG thumbnail of the OME-Zarr image at ``store`` (a local folder). The pass that writes a store makes
    its picture with what it has in hand: the group's ``attrs`` and its ``levels`` (each level's path: its open
    array or its pixels); what is not given is read from the store."""
    group = zarr.open_group(store, mode="r") if attrs is None or levels is None else None
    attrs = dict(group.attrs) if attrs is None else attrs
    ome = attrs.get("ome", attrs)
    multiscale = ome["multiscales"][0]
    axes = [a["name"] for a in multiscale["axes"]]
    level = _level(levels if levels is not None else group, multiscale, axes, size)
    step = -(-max(level.shape[axes.index("y")], level.shape[axes.index("x")]) // size)  # the rest by striding
    index = tuple(0 if name == "t" else level.shape[i] // 2 if name == "z" else slice(None, None, step)
                  if name in ("y", "x") else slice(None) for i, name in enumerate(axes))
    plane = np.asarray(level[index])
    kept = [name for name in axes if name not in ("t", "z")]
    planes = np.moveaxis(plane, kept.index("c"), 0) if "c" in kept else plane[np.newaxis]
    channels = (ome.get("omero") or {}).get("channels") or []
    rgb = np.zeros(planes.shape[1:] + (3,), dtype=np.float64)
    for c, data in enumerate(planes[:3]):
        info = channels[c] if c < len(channels) else {}
        start, end = _window(info, data)
        scaled = np.clip((data.astype(np.float64) - start) / max(end - start, 1e-12), 0, 1)
        scaled[~np.isfinite(scaled)] = 0
        colour = info.get("color") if len(planes) > 1 else "FFFFFF"
        colour = colour if isinstance(colour, str) and len(colour) == 6 else COLOURS[c]
        rgb += scaled[..., np.newaxis] * (np.array([int(colour[i:i + 2], 16) for i in (0, 2, 4)]) / 255.0)
    return _png((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))


def _level(levels: Any, multiscale: dict[str, Any], axes: list[str], size: int) -> Any:
    """The largest level whose planes fit ``size``, else the smallest; ``levels``: the group, or a dict of each
    level's array or pixels by path."""
    y, x = axes.index("y"), axes.index("x")
    arrays = [levels[d["path"]] for d in multiscale["datasets"]]
    fitting = [a for a in arrays if max(a.shape[y], a.shape[x]) <= size]
    return fitting[0] if fitting else arrays[-1]


def _window(info: dict[str, Any], data: np.ndarray) -> tuple[float, float]:
    window = info.get("window") or {}
    try:
        return float(window["start"]), float(window["end"])
    except (KeyError, TypeError, ValueError):
        values = data[np.isfinite(data)] if np.issubdtype(data.dtype, np.floating) else data
        if values.size == 0:
            return 0.0, 1.0
        low, high = np.percentile(values, [0.1, 99.9])
        return float(low), float(high if high > low else low + 1)


def _png(rgb: np.ndarray) -> bytes:
    """A greyscale PNG when the three colours are alike (one channel, or grey ones), else an RGB one."""
    grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    return bytes(imagecodecs.png_encode(np.ascontiguousarray(rgb[..., 0] if grey else rgb), level=PNG_LEVEL,
                                        strategy=PNG_STRATEGY, filter=PNG_FILTER))
