"""Local scratch: the per-run staging area (the staged originals) and the persistent work area.

The work area holds conversion outputs under their deterministic ids, so a
rerun (in any process) reuses finished work. Its ``generation`` token is part
of every cache key: emptying the work area invalidates the cache with it.

Nothing a run leaves is debris for long. A staging folder is removed when its
run ends (unless ``staging.keep``), and carries the mark of the process that
owns it (``RUN.json``), as does a store compress is still writing (its
temporary name): what a killed process left is removed by the next run, or by
``zarrchive clean``, and what a running one is writing is never touched.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

from zarrchive.config import StagingSettings
from zarrchive.host import owner_alive, this_process

RUN_RECORD = "RUN.json"
PARTIAL = ".partial-"


def staging_root(settings: StagingSettings) -> Path:
    return Path(settings.root) if settings.root else Path(tempfile.gettempdir())


@contextlib.contextmanager
def staging_area(settings: StagingSettings, label: str) -> Iterator[str]:
    """A fresh folder for one run, marked with its owner, removed afterwards unless ``settings.keep``."""
    root = staging_root(settings)
    root.mkdir(parents=True, exist_ok=True)
    path = tempfile.mkdtemp(prefix=f"zarrchive-{label}-", dir=root)
    (Path(path) / RUN_RECORD).write_text(json.dumps({"owner": this_process(), "host": socket.gethostname()}))
    if not settings.keep:
        _ACTIVE.add(path)
    try:
        yield path
    finally:
        _ACTIVE.discard(path)
        if not settings.keep:
            shutil.rmtree(path, ignore_errors=True)


_ACTIVE: set[str] = set()  # the staging folders of runs of this process in progress


def remove_active() -> None:
    """Remove the staging folders of this process's runs in progress (a process stopping at once)."""
    for path in list(_ACTIVE):
        shutil.rmtree(path, ignore_errors=True)
        _ACTIVE.discard(path)


def partial_name(final: str) -> str:
    """The temporary name of ``final`` while this process writes it."""
    return f"{final}{PARTIAL}{this_process()}"


def clean_stale(settings: StagingSettings) -> list[str]:
    """Remove the staging folders and unfinished work-area stores of processes of this host that no longer run
    (killed); return what was removed. Folders of running processes, and kept ones, are left alone."""
    removed = []
    root = staging_root(settings)
    for folder in sorted(root.glob("zarrchive-*")) if root.is_dir() else []:
        try:
            record = json.loads((folder / RUN_RECORD).read_text())
        except (OSError, ValueError):
            continue  # not a run's staging folder, or one made before runs were marked
        if not owner_alive(record.get("owner", ""), record.get("host")):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(str(folder))
    work = Path(settings.work) if settings.work else _default_work()
    for stage in ("compress",):
        for partial in sorted((work / stage).glob(f"*{PARTIAL}*")) if (work / stage).is_dir() else []:
            if not owner_alive(partial.name.rsplit(PARTIAL, 1)[1]):
                if partial.is_dir() and not partial.is_symlink():
                    shutil.rmtree(partial, ignore_errors=True)
                else:  # a file written under its temporary name (a store's thumbnail)
                    partial.unlink(missing_ok=True)
                removed.append(str(partial))
    return removed


def _default_work() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("zarrchive"))


def work_area(settings: StagingSettings) -> str:
    """The persistent work folder (created with its generation token on first use)."""
    root = Path(settings.work) if settings.work else _default_work()
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
