"""Collecting the results of tasks fanned out per file or per image.

A failed future becomes a ``Failure`` naming the file and the reason (in the
words of the submission: paths of the ingest machine's staging and work areas
are replaced by what they stand for); the others go on. The lineage of every
success is returned with the outputs.
"""

from __future__ import annotations

from typing import Any, Callable

from prefect.futures import PrefectFuture

from zarrchive.batch import ItemFailed, plan
from zarrchive.batch import name as batch_name
from zarrchive.config import BatchSettings
from zarrchive.records import Failure, LineageRecord


def redact(message: str, staging: str | None = None, work: str | None = None) -> str:
    """``message`` without the ingest machine's paths: a staged original is named by its submitted path, other
    staging and work-area paths by what they are."""
    if staging:
        message = message.replace(f"{staging.rstrip('/')}/originals/", "").replace(staging.rstrip("/"), "<staging>")
    if work:
        message = message.replace(work.rstrip("/"), "<work area>")
    return message


def gather(stage: str, submitted: list[tuple[PrefectFuture, dict[str, Any] | list[dict[str, Any]]]],
           staging: str | None = None, work: str | None = None
           ) -> tuple[list[Any], list[Failure], list[LineageRecord]]:
    """Wait for every future; the outputs of those that succeeded, a Failure for each other one, and the lineage
    of the successes.

    Each future comes with what identifies its work (``source_path``, and
    ``image_id``/``series`` for per-image stages) for the failure record; a batch's future
    (``zarrchive.batch``) with a list of them, one per item, in the order of its results.
    """
    outputs, failures, lineage = [], [], []
    for future, who in submitted:
        items = who if isinstance(who, list) else [who]
        try:
            results = future.result() if isinstance(who, list) else [future.result()]
        except Exception as exc:  # a failed image (or a whole batch) is reported; the others go on
            results = [ItemFailed(error=f"{type(exc).__name__}: {exc}")] * len(items)
        for one, traced in zip(items, results, strict=True):
            if isinstance(traced, ItemFailed):
                failures.append(Failure(stage=stage, error=redact(traced.error, staging, work), **one))
                continue
            lineage.append(traced.lineage)
            outputs.append(traced.output)
    return outputs, failures, lineage


def fan_out(items: list[Any], size_of: Callable[[Any], int], settings: BatchSettings,
            one: Callable[[Any], PrefectFuture], many: Callable[[list[Any], str], PrefectFuture],
            who: Callable[[Any], dict[str, Any]], noun: str, shown: Callable[[Any], str]
            ) -> list[tuple[PrefectFuture, dict[str, Any] | list[dict[str, Any]]]]:
    """Submit a stage for ``items``: a task run of its own (``one(item)``) for each large item, and one
    (``many(group, name)``) for each batch of small ones (``zarrchive.batch.plan``); each future with what
    identifies its items, for ``gather``."""
    submitted: list[tuple[PrefectFuture, dict[str, Any] | list[dict[str, Any]]]] = []
    for group in plan(items, size_of, settings):
        if len(group) == 1:
            submitted.append((one(group[0]), who(group[0])))
        else:
            submitted.append((many(group, batch_name(noun, [shown(i) for i in group])), [who(i) for i in group]))
    return submitted


def distinct_ids(images: list[Any]) -> tuple[list[Any], list[Failure]]:
    """Images with one id each: when two files' images get the same id (``a.tif`` and ``a.png``; a slide's
    ``case1_label`` and a file ``case1_label.jpg``), the first file's keeps it and the other is refused, naming
    both, so that neither replaces the other silently."""
    first: dict[Any, Any] = {}
    kept, refused = [], []
    for image in sorted(images, key=lambda i: (i.source_path, i.series)):
        other = first.setdefault(image.image_id, image)
        well = getattr(image, "well", None)
        if other is image and well:  # two fields of one plate at one place: the same rule
            key = ("field", well.plate, well.path)  # (one place, whatever the acquisition)
            other = first.setdefault(key, image)
            if other is not image:
                del first[image.image_id]
        if other is image:
            kept.append(image)
            continue
        error = (f"its image would be field {well.path} of plate {well.plate}, as the image of {other.shown_as} is"
                 if other.image_id != image.image_id else
                 f"its image would be named {image.image_id}, as the image of {other.source_path} is")
        refused.append(Failure(stage="convert", source_path=image.source_path, image_id=image.shown_as,
                               series=image.series, error=f"{error}: rename one of the two files"))
    return kept, refused
