"""Collecting the results of tasks fanned out per file or per image.

A failed future becomes a ``Failure`` naming the file and the reason; the
others go on. Lineage of every success is appended to the run's record.
"""

from __future__ import annotations

from typing import Any

from prefect.futures import PrefectFuture

from zarrchive.records import Failure, LineageRecord


def gather(
    stage: str, submitted: list[tuple[PrefectFuture, dict[str, Any]]], lineage: list[LineageRecord]
) -> tuple[list[Any], list[Failure]]:
    """Wait for every future; return the outputs of those that succeeded and a Failure for each other one.

    Each future comes with what identifies its work (``source_path``, and
    ``image_id``/``series`` for per-image stages) for the failure record.
    """
    outputs, failures = [], []
    for future, who in submitted:
        try:
            traced = future.result()
        except Exception as exc:  # a failed image is reported; the others go on
            failures.append(Failure(stage=stage, error=f"{type(exc).__name__}: {exc}", **who))
            continue
        lineage.append(traced.lineage)
        outputs.append(traced.output)
    return outputs, failures
