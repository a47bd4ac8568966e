"""Keep the archive's catalog and front page current after a version becomes public (``archive_pages``)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from zarrchive import runlog
from zarrchive.archive_pages import refresh
from zarrchive.config import CatalogSettings


@task(name="catalog", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[2, 10])
def index_public(archive: str, accession: str | None, settings: CatalogSettings) -> list[str]:
    """Index ``accession``'s public versions in the catalog and rewrite the front page; what went wrong is
    logged as a warning and returned (the published versions do not depend on it)."""
    problems = refresh(archive, accession, settings)
    for problem in problems:
        runlog.logger().warning(problem)
    return problems
