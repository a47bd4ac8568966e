"""``release_embargoed``: make public every embargoed version whose release date has come (daily).

Each due version is released by the ``release`` stage (``tasks/release.py``): copied to the public
location object by object, each sha256 verified, the RO-Crate given its release, committed, then removed from
the private location. One version failing never stops the others; the run is Failed when any did.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State
from zarrchive.tasks.catalog import index_public
from zarrchive.tasks.release import due, release

from zarrchive import credentials, outcome
from zarrchive.archive.versions import private_location
from zarrchive.config import load_settings
from zarrchive.errors import FailedOutcome


@task(name="find_due", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 30])
def find_due(archive: str, private: str) -> list[tuple[str, int, str]]:
    return [(accession, version, date.isoformat()) for accession, version, date in due(archive, private)]


@flow(name="release_embargoed", flow_run_name="release embargoed versions", validate_parameters=True,
      persist_result=True)
def release_embargoed(archive: str, config: str = "", overrides: dict[str, Any] | None = None) -> State:
    """Release every embargoed version whose release date has come, verified object by object.

    Args:
        archive: The archive root, a folder or fsspec URL (its private location comes from the configuration).
        config: A YAML file merged over configs/default.yaml (archive.private, storage credentials).
        overrides: Configuration sections merged over the configuration (a consortium deployment sets them).
    """
    log = get_run_logger()
    settings = load_settings(config or None, overrides)
    credentials.apply(settings.storage)
    private = private_location(archive, settings.archive.private)
    if private is None:
        return Completed(message="this archive has no private location: nothing is under embargo")
    todo = find_due(archive, private)
    futures = [(item, release.submit(archive, private, item[0], item[1], settings.publish.lease_seconds,
                                           settings.publish.public_base_url))
               for item in todo]
    rows, failed = [], []
    for (accession, version, date), future in futures:
        try:
            future.result()
            rows.append({"accession": accession, "version": version, "release_date": date, "outcome": "released"})
            log.info("released %s v%d (release date %s)", accession, version, date)
        except Exception as exc:
            rows.append({"accession": accession, "version": version, "release_date": date, "outcome": "failed",
                         "reason": f"{type(exc).__name__}: {exc}"})
            failed.append(f"{accession} v{version}: {exc}")
    for accession in sorted({r["accession"] for r in rows if r["outcome"] == "released"}):
        index_public(archive, accession, settings.catalog)
    create_table_artifact(rows or [{"outcome": "nothing due"}], key=outcome.run_artifact_key("release-summary", archive),
                          description="Embargoed versions released")
    if failed:
        message = f"{len(failed)} of {len(todo)} due version(s) not released: " + "; ".join(failed[:10])
        return Failed(message=message, data=FailedOutcome(message, rows))
    return Completed(message=f"{len(todo)} version(s) released" if todo else "no embargoed version is due")
