"""Named points where a test can make a run fail as the world would: killed, stalled, or hit by an I/O error.

Inert unless the environment names them: ``ZARRCHIVE_FAULTS=publish.before-commit=kill`` kills the process
with SIGKILL when it reaches that point, ``=stall`` makes it wait there (after writing a line to
``ZARRCHIVE_FAULTS_MARK``, for the test to act on), ``=oserror`` raises an ``OSError`` there. The reliability
tests arm them one at a time (``tests/test_reliability.py``); nothing else sets the variable.
"""

from __future__ import annotations

import os
import signal
import time

POINTS = (
    "fetch.copy", "convert.start", "compress.start", "qc.start",
    "publish.start", "publish.images", "publish.originals", "publish.commit", "publish.committed",
)


def point(name: str) -> None:
    """Act on the fault armed at ``name``, if any."""
    armed = os.environ.get("ZARRCHIVE_FAULTS")
    if not armed:
        return
    for spec in armed.split(","):
        where, _, what = spec.partition("=")
        if where != name:
            continue
        if mark := os.environ.get("ZARRCHIVE_FAULTS_MARK"):
            with open(mark, "a") as fh:
                fh.write(f"{name} {os.getpid()}\n")
        if what == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif what == "stall":
            time.sleep(3600)
        elif what == "oserror":
            raise OSError(f"fault injected at {name}")
