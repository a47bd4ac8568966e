"""Small helpers shared by the thin Prefect task wrappers."""

from __future__ import annotations

from typing import Any

from zarrchive.errors import is_transient


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only transient errors."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)
