"""zarrchive: ingest microscopy submissions into a verified, versioned OME-Zarr archive."""

__version__ = "0.1.0"
