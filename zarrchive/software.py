"""Versions of the software that touches the data, for lineage and identity."""

from __future__ import annotations

from functools import cache
from importlib import metadata

PIXEL_SOFTWARE = (
    "zarrchive", "bioio", "bioio-base", "bioio-ome-tiff", "bioio-tifffile", "tifffile",
    "zarr", "numcodecs", "pcodec", "imagecodecs", "numpy", "dask", "distributed",
)
OTHER_SOFTWARE = ("prefect", "great-expectations", "ome-zarr-models", "fsspec", "s3fs", "pydantic")


@cache
def versions(names: tuple[str, ...] = PIXEL_SOFTWARE + OTHER_SOFTWARE) -> dict[str, str]:
    """Installed version of each named distribution (``"not installed"`` when absent)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def pixel_versions() -> dict[str, str]:
    """Versions of the software whose change can change pixels or their encoding."""
    return versions(PIXEL_SOFTWARE)
