"""Deterministic identity of pixel work: what names the outputs in the work area and keys Prefect's cache.

Each key hashes everything that can change the output: the input bytes (by
sha256) or the upstream conversion id, the stage's configuration, the versions
of the software that touch pixels, the work area's generation token, and the
shape of the records a cached result holds (a cached result of an older record
schema is never handed to newer code).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any

from pydantic import BaseModel

from zarrchive.archive.staging import generation
from zarrchive.software import pixel_versions


def json_sha256(value: Any) -> str:
    """The sha256 of a JSON-able value in canonical form (sorted keys): the one rule every identity of zarrchive
    is made by (cache keys, conversion ids, version fingerprints)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def digest(*parts: Any) -> str:
    """A short, stable hash of JSON-able parts (pydantic models by their JSON form)."""
    def plain(value: Any) -> Any:
        if hasattr(value, "identity"):  # a configuration section: what changes results, not its bounds
            return value.identity()
        return value.model_dump(mode="json") if isinstance(value, BaseModel) else value

    return json_sha256([plain(p) for p in parts])[:24]


@functools.cache
def records_schema() -> str:
    """A digest of the JSON schemas of the records that cached task results contain, and of where their classes
    live (a result is a pickle naming them: one cached before a class moved could not be read back)."""
    from zarrchive.archive.lineage import Traced
    from zarrchive.records import CompressionReport, ImageRecord, LineageRecord

    models = (ImageRecord, CompressionReport, LineageRecord)
    return digest(*(model.model_json_schema() for model in models),
                  [f"{cls.__module__}.{cls.__qualname__}" for cls in (*models, Traced)])


def convert_key(_context: Any, params: dict[str, Any]) -> str:
    """The conversion's identity: the file, its entry and settings — and, for a file of a multi-file OME-TIFF set,
    the sha256 of the other members (``companions``), so a changed member converts again and nothing else does."""
    import posixpath

    from zarrchive.formats.ometiff import ome_tiff_set

    file, companions = params["file"], params.get("companions") or {}
    folder = posixpath.dirname(file.path)
    members = [posixpath.normpath(posixpath.join(folder, name)) for name in ome_tiff_set(file.staged_path)] \
        if os.path.isfile(file.staged_path) else []
    return "convert-" + digest(file.path, file.sha256, params["entry"], params["settings"],
                               {m: companions.get(m) for m in members if m != file.path}, pixel_versions(),
                               generation(params["work"]),
                               records_schema())


def compress_key(_context: Any, params: dict[str, Any]) -> str:
    image = params["image"]
    return "compress-" + digest(compressed_name(image, params["settings"]), image.image_id,
                                generation(params["work"]), records_schema())


def compressed_name(image: Any, settings: Any) -> str:
    """The compressed store's name: the conversion, its planned levels and axes (a label takes both from the image
    it annotates, so they are not implied by its own conversion) and the codec settings."""
    plan = [[lvl.model_dump(mode="json") for lvl in image.levels], [a.model_dump(mode="json") for a in image.axes]]
    return f"{image.conversion_id}-{digest(plan, settings, pixel_versions())[:12]}"
