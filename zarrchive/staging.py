"""The per-run staging area: local scratch that holds a run's intermediate files."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from zarrchive.config import StagingSettings


@contextlib.contextmanager
def staging_area(settings: StagingSettings, label: str) -> Iterator[str]:
    """A fresh folder for one run, removed afterwards unless ``settings.keep``."""
    root = Path(settings.root) if settings.root else Path(tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    path = tempfile.mkdtemp(prefix=f"zarrchive-{label}-", dir=root)
    try:
        yield path
    finally:
        if not settings.keep:
            shutil.rmtree(path, ignore_errors=True)
