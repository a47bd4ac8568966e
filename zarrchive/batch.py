"""Small work in batches: one Prefect task run for many small files or images of a stage.

A task run costs the orchestration (its states recorded by the Prefect API, its logs, its result) whatever the
work; for a 256 x 256 field of a screening plate that is most of the cost. So a stage's small items — files and
images up to ``batch.small_bytes`` — run in batches of at most ``batch.images`` items and ``batch.bytes`` bytes,
one task run each, named with the stage, the count and the first and last items (``compress: 64 images
(plate1_A01_f1 … plate1_B08_f2)``). An item above ``batch.small_bytes`` keeps a task run of its own (its
progress, its cache across runs). Inside a batch every item is done by the stage's own functions, with its own
lineage record (compress submits its images' passes to the cluster a few ahead of the one it waits for); an
item that fails is recorded as failed, named with its reason, and the batch goes on with the others (the task
run's log names the failures, and its state message counts them).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Iterable, TypeVar

from zarrchive import runlog
from zarrchive.config import BatchSettings
from zarrchive.records import Record

T = TypeVar("T")


class ItemFailed(Record):
    """An item of a batch that failed: its error as the stage raised it (type and message)."""

    error: str


def plan(items: Iterable[T], size_of: Callable[[T], int], settings: BatchSettings) -> list[list[T]]:
    """``items`` in groups, in their order: an item over ``small_bytes`` alone, the others together up to
    ``images`` items and ``bytes`` bytes a group — and smaller groups when there are fewer than ``parallel``
    groups' worth of items (the groups run at once; the items of one group one after another)."""
    items = list(items)
    sizes = [size_of(item) for item in items]
    small = sum(1 for size in sizes if size <= settings.small_bytes)
    per_group = max(1, min(settings.images, -(-small // settings.parallel)))
    groups: list[list[T]] = []
    current: list[T] = []
    held = 0
    for item, size in zip(items, sizes):
        if size > settings.small_bytes:
            if current:
                groups.append(current)
                current, held = [], 0
            groups.append([item])
            continue
        if current and (len(current) >= per_group or held + size > settings.bytes):
            groups.append(current)
            current, held = [], 0
        current.append(item)
        held += size
    if current:
        groups.append(current)
    return groups


def name(noun: str, names: list[str]) -> str:
    """How a batch's task run is named: ``64 images (a … z)``."""
    return f"{len(names)} {noun} ({names[0]} … {names[-1]})" if len(names) > 1 else names[0]


def run(stage: str, items: list[Any], call: Callable[..., Any], shown: Callable[[Any], str],
        ahead: int = 0) -> Any:
    """Do each item with ``call(*item)``; its result, or an ``ItemFailed`` naming its error (raised, or returned by
    ``call`` for an item whose work failed elsewhere), in order. The task
    run ends Completed with a message counting what failed (each failure is in the log and in the results).

    With ``ahead``, ``call(*item)`` only begins an item (its work goes on elsewhere, on a cluster) and returns
    what ends it (called with no argument, it waits and gives the result): up to ``ahead`` items are under way
    at once, each ended in order, each failing alone whether it fails as it begins or as it ends. If the batch
    is stopped, each item begun and not ended is abandoned (its ender's ``abandon()``, when it has one)."""
    from prefect.states import Completed

    log = runlog.logger()
    results: list[Any] = [None] * len(items)
    begun: deque[int] = deque()

    def settle(i: int, fn: Callable[..., Any], *args: Any) -> bool:
        try:
            results[i] = fn(*args)
        except Exception as exc:  # this item fails alone
            results[i] = ItemFailed(error=f"{type(exc).__name__}: {exc}")
        if isinstance(results[i], ItemFailed):  # (raised here, or failed where the work was done)
            log.warning("%s %s failed: %s", stage, shown(items[i]), results[i].error)
            return False
        return True

    try:
        for i, item in enumerate(items):
            while ahead and len(begun) >= ahead:
                oldest = begun.popleft()
                settle(oldest, results[oldest])
            if settle(i, call, *item) and ahead:
                begun.append(i)
        while begun:
            oldest = begun.popleft()
            settle(oldest, results[oldest])
    except BaseException:  # stopped (cancelled, interrupted): what was begun and not ended is abandoned
        for i in begun:
            if abandon := getattr(results[i], "abandon", None):
                abandon()
        raise
    failed = [shown(item) for item, r in zip(items, results) if isinstance(r, ItemFailed)]
    message = f"{len(items) - len(failed)} of {len(items)} done" + (
        f"; failed: {', '.join(failed[:10])}{' …' if len(failed) > 10 else ''}" if failed else "")
    log.info("%s batch: %s", stage, message)
    return Completed(message=message, data=results)
