"""Local scratch: the per-run staging area (the staged originals) and the persistent work area.

The work area holds conversion outputs under their deterministic ids, so a
rerun (in any process) reuses finished work. Its ``generation`` token is part
of every cache key: emptying the work area invalidates the cache with it.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
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


def work_area(settings: StagingSettings) -> str:
    """The persistent work folder (created with its generation token on first use)."""
    import platformdirs

    root = Path(settings.work) if settings.work else Path(platformdirs.user_cache_dir("zarrchive"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        with open(root / "generation", "x") as fh:
            fh.write(uuid.uuid4().hex)
    except FileExistsError:
        pass
    return str(root)


def generation(work: str) -> str:
    """The token that changes whenever the work area is emptied."""
    return (Path(work) / "generation").read_text().strip()
