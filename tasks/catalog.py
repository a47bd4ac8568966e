"""Keep the archive's catalog and front page current after a version becomes public (``archive.front``)."""

from __future__ import annotations

from zarrchive import runlog
from zarrchive.archive.front import refresh
from zarrchive.archive.lineage import stage_task
from zarrchive.config import CatalogSettings


@stage_task(name="catalog", cache_policy="none", retries=2, retry_delay_seconds=[2, 10])
def index_public(archive: str, accession: str | None, settings: CatalogSettings) -> list[str]:
    """Index ``accession``'s public versions in the catalog and rewrite the front page; what went wrong is
    logged as a warning and returned (the published versions do not depend on it)."""
    problems = refresh(archive, accession, settings)
    for problem in problems:
        runlog.logger().warning(problem)
    return problems
