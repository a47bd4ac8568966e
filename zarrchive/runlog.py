"""What staff read while a run works: the Prefect run logger's lines for each stage and image.

Stage wrappers call these with what they did (how much, how fast); a long
image's compress pass reports its progress (share of level 0 written, rate,
time left) at most every ``PROGRESS_SECONDS`` and at every tenth.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable

from zarrchive.units import human_size

PROGRESS_SECONDS = 30.0


def logger() -> logging.Logger | logging.LoggerAdapter:
    """The current Prefect run's logger; zarrchive's own logger outside a run (and in a process that never
    imported Prefect, such as a Dask worker, which has no run: it is not imported for that)."""
    if "prefect" not in sys.modules:
        return logging.getLogger("zarrchive")
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:  # no run context (a plain call): the module logger
        return logging.getLogger("zarrchive")


def progress_reporter(what: str, log: logging.Logger | logging.LoggerAdapter | None = None,
                      every: float = PROGRESS_SECONDS) -> Callable[[int, int], None]:
    """A ``progress(done, total)`` callback (bytes) that logs ``what``'s progress now and then."""
    log = log or logger()
    started = time.monotonic()
    last = {"at": started, "tenth": 0}

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        tenth = int(10 * done / total) if total else 10
        if done == 0 or done >= total or now - started < every:
            return  # short images: the stage's own two lines say enough
        if now - last["at"] < every and tenth <= last["tenth"]:
            return
        last.update(at=now, tenth=tenth)
        rate = done / max(now - started, 1e-6)
        left = (total - done) / rate if rate else float("inf")
        log.info("%s: %d%% of %s written, %s/s, about %s left", what, 100 * done // total, human_size(total), human_size(rate),
                 _duration(left))

    return report


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
