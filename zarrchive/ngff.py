"""OME-NGFF metadata (0.5 by default, 0.4 for older viewers): built from an ImageRecord, checked by an
independent validator.

An image group carries ``multiscales`` and ``omero``; a label image's group carries ``multiscales`` and
``image-label`` and lives under its image's ``labels/<name>/``, listed by the ``labels`` group.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import numpy as np

from zarrchive.records import ImageRecord

NGFF_VERSION = "0.5"
ZARR_FORMAT = {"0.5": 3, "0.4": 2}  # the Zarr format each OME-NGFF version is stored in
# Default channel colours (hex RGB) cycled for channels without one.
COLOURS = ("FFFFFF",) + ("0000FF", "00FF00", "FF0000", "FF00FF", "00FFFF", "FFFF00")
DOWNSAMPLING = {
    "mean": ("2x2 block mean (y, x; z too once z is no coarser than x); edge blocks average the pixels they hold",
             "zarrchive.pixels.blocks.downsample_mean"),
    "mode": ("2x2 block mode (y, x; z too where the image's levels halve z): the most frequent label value of the "
             "block, a tie going to the smallest value; edge blocks take the mode of the pixels they hold",
             "zarrchive.pixels.blocks.downsample_mode"),
}
# Label value 0 is the background: transparent; viewers choose the colours of the other values.
LABEL_COLOURS = ({"label-value": 0, "rgba": [0, 0, 0, 0]},)


def multiscales_attrs(image: ImageRecord, windows: list[tuple[float, float]] | None = None) -> dict[str, Any]:
    """The ``ome`` attributes of an image group: multiscales plus an omero block (display windows per channel
    from the data when given, else the dtype's range); of a label image: multiscales plus ``image-label``."""
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
    description, method = DOWNSAMPLING[image.downsampling]
    multiscale = {
        "name": image.label_name if image.kind == "label" else image.image_id,
        "axes": axes,
        "datasets": datasets,
        "type": image.downsampling,
        "metadata": {"description": description, "method": method},
    }
    if image.kind == "label":
        return {"version": NGFF_VERSION, "multiscales": [multiscale], "image-label": image_label_block()}
    return {"version": NGFF_VERSION, "multiscales": [multiscale], "omero": omero_block(image, windows)}


def group_attributes(image: ImageRecord, windows: list[tuple[float, float]] | None = None,
                     ngff: str = NGFF_VERSION) -> dict[str, Any]:
    """The attributes of an image group in OME-NGFF ``ngff``: 0.5 nests them under ``ome``; 0.4 puts them at
    the top, with the version inside each multiscale."""
    attrs = multiscales_attrs(image, windows)
    if ngff == "0.5":
        return {"ome": attrs}
    multiscale = {**attrs["multiscales"][0], "version": ngff}
    out = {**{k: v for k, v in attrs.items() if k != "version"}, "multiscales": [multiscale]}
    if "image-label" in out:
        out["image-label"] = {**out["image-label"], "version": ngff}
    return out


def group_documents(attributes: dict[str, Any], ngff: str = NGFF_VERSION) -> dict[str, bytes]:
    """The metadata objects of a Zarr group holding ``attributes``, in the Zarr format of OME-NGFF ``ngff``, byte
    for byte as zarr-python writes them: ``zarr.json`` (Zarr v3), or ``.zgroup`` and ``.zattrs`` (v2)."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.group import GroupMetadata

    documents = GroupMetadata(attributes=attributes, zarr_format=ZARR_FORMAT[ngff]).to_buffer_dict(
        default_buffer_prototype())
    return {name: buffer.to_bytes() for name, buffer in documents.items()}


def ngff_version(attributes: dict[str, Any]) -> str | None:
    """The OME-NGFF version an image group's attributes declare (None when they declare none)."""
    if "ome" in attributes:
        return attributes["ome"].get("version")
    multiscales = attributes.get("multiscales") or [{}]
    return multiscales[0].get("version")


def image_attributes(store_path: str) -> dict[str, Any]:
    """The OME-NGFF attributes of a local image group, 0.5 (under ``ome``) or 0.4 (at the top) alike; {} when
    the folder holds none."""
    for name, nested in (("zarr.json", True), (".zattrs", False)):
        try:
            with open(os.path.join(store_path, name), "rb") as fh:
                document = json.load(fh)
        except (OSError, ValueError):
            continue
        attrs = document.get("attributes", {}) if nested else document
        return dict(attrs.get("ome", attrs))
    return {}


def image_label_block() -> dict[str, Any]:
    """The ``image-label`` metadata of a label group nested at ``<image>/labels/<name>/``."""
    return {"version": NGFF_VERSION, "colors": [dict(c) for c in LABEL_COLOURS], "source": {"image": "../../"}}


def labels_group_attrs(names: list[str]) -> dict[str, Any]:
    """The ``ome`` attributes of an image's ``labels`` group, listing its label groups."""
    return {"version": NGFF_VERSION, "labels": list(names)}


def labels_group_documents(names: list[str], ngff: str = NGFF_VERSION) -> dict[str, dict[str, Any]]:
    """The metadata objects of an image's ``labels`` group, by name: ``zarr.json`` (Zarr v3, NGFF 0.5), or
    ``.zgroup`` and ``.zattrs`` (Zarr v2, NGFF 0.4)."""
    if ngff == "0.5":
        return {"zarr.json": {"zarr_format": 3, "node_type": "group",
                              "attributes": {"ome": labels_group_attrs(names)}}}
    return {".zgroup": {"zarr_format": 2}, ".zattrs": {"labels": list(names)}}


def store_ngff_version(store_path: str) -> str:
    """The OME-NGFF version of a local image store this package wrote: 0.5 has Zarr v3's ``zarr.json``."""
    return "0.5" if os.path.exists(os.path.join(store_path, "zarr.json")) else "0.4"


def omero_block(image: ImageRecord, windows: list[tuple[float, float]] | None = None) -> dict[str, Any]:
    dtype = np.dtype(image.dtype)
    n = len(image.channel_names)
    channels = []
    for i, name in enumerate(image.channel_names):
        colour = image.channel_colours[i] if image.channel_colours else \
            COLOURS[0] if n == 1 else COLOURS[1 + i % (len(COLOURS) - 1)]
        start, end = windows[i] if windows else (None, None)
        if dtype.kind in "ui":
            lo, hi = float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
        else:  # floats and masks: the range the data shows
            lo, hi = (start, end) if windows else (0.0, 1.0)
        channels.append({"label": name, "color": colour, "active": True,
                         "window": {"min": lo, "max": hi, "start": lo if start is None else start,
                                    "end": hi if end is None else end}})
    return {"channels": channels, "rdefs": {"model": "greyscale" if n == 1 else "color"}}


@functools.cache
def _validator_asks_zarr_s_version_once() -> None:
    """pydantic-zarr (under ome-zarr-models) asks ``importlib.metadata.version("zarr")`` for every array it reads:
    each time, zarr's METADATA file is found and parsed as an e-mail: 0.3 ms of the 2.1 ms that validating a
    256 x 256 image took (in one thread, 200 stores). The answer cannot change while the process runs, so it is
    asked once (the validator itself, and what it finds, are unchanged; where pydantic-zarr no longer looks as
    expected, nothing is changed)."""
    import importlib.metadata

    import ome_zarr_models.v04  # noqa: F401 (first: pydantic_zarr.v2 imported before it breaks its 0.4 validation)

    for name in ("pydantic_zarr.v2", "pydantic_zarr.v3"):
        try:
            module = __import__(name, fromlist=["version"])
        except ImportError:
            continue
        if getattr(module, "version", None) is importlib.metadata.version:
            module.version = functools.cache(importlib.metadata.version)


def validate_label(store_path: str) -> list[str]:
    """Problems an independent validator (ome-zarr-models) finds in an NGFF 0.5 or 0.4 label image group (checked
    on its own, before it is nested under its image): image-label metadata, multiscales, an integer type allowed
    for labels; [] when valid."""
    import zarr
    from ome_zarr_models.v04.image_label import ImageLabel as ImageLabel04
    from ome_zarr_models.v05.image_label import ImageLabel
    from ome_zarr_models.v05.labels import VALID_DTYPES

    try:
        _validator_asks_zarr_s_version_once()
        group = zarr.open_group(store_path, mode="r")
        if ngff_version(dict(group.attrs)) == "0.4":
            attributes = ImageLabel04.from_zarr(group).attributes
        else:
            attributes = ImageLabel.from_zarr(group).attributes.ome
        if attributes.image_label is None:
            return ["the label group has no image-label metadata"]
        problems = []
        for dataset in attributes.multiscales[0].datasets:
            dtype = group[dataset.path].dtype
            if dtype not in VALID_DTYPES:
                allowed = ", ".join(map(str, VALID_DTYPES))
                problems.append(f"level {dataset.path}: {dtype} is not a label type ({allowed})")
        return problems
    except Exception as exc:  # the validator's own error types vary; report them all
        return [f"{type(exc).__name__}: {exc}".strip()]


def validate_image(store_path: str) -> list[str]:
    """Problems an independent validator (ome-zarr-models) finds in an NGFF 0.5 or 0.4 image; [] when valid."""
    import zarr
    from ome_zarr_models import v04, v05

    try:
        _validator_asks_zarr_s_version_once()
        group = zarr.open_group(store_path, mode="r")
        version = ngff_version(dict(group.attrs))
        if version not in ("0.4", "0.5"):
            return [f"the group declares OME-NGFF version {version!r}; 0.5 or 0.4 expected"]
        (v05 if version == "0.5" else v04).Image.from_zarr(group)
    except Exception as exc:  # the validator's own error types vary; report them all
        return [f"{type(exc).__name__}: {exc}".strip()]
    return []
