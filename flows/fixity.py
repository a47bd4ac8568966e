"""``fixity_audit``: re-hash published objects against their manifests, on a schedule.

Every object of every committed version is listed and compared with its
manifest (missing, truncated, unexpected), and a rotating share of them
(``sample``) is read back and hashed, so that ``1/sample`` audits cover the
whole archive. The private location's embargoed versions are audited alike
(they may wait years for their release; one released while it was audited is
not reported missing). Each audit is kept in the audit log
of the location it checked (``_audit/fixity/``); a problem fails the run and
is named in its artifact. Nothing is ever repaired.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State

from zarrchive import credentials, outcome
from zarrchive.archive import fixity
from zarrchive.archive.storage import join, resolve
from zarrchive.archive.versions import MANIFEST, private_location
from zarrchive.config import load_settings
from zarrchive.errors import FailedOutcome


@task(name="audit", cache_policy=NO_CACHE)
def audit_task(archive: str, target: str | None, sample: float) -> dict[str, Any]:
    result = fixity.audit(archive, target, sample)
    return {**result.as_dict(), "audit_log": fixity.record_audit(archive, result)}


@flow(name="fixity_audit", flow_run_name="fixity audit", validate_parameters=True,
      persist_result=True)
def fixity_audit(archive: str, sample: float = 1.0, accession: str = "", config: str = "",
                 overrides: dict[str, Any] | None = None) -> State:
    """Check that every published object is still what its manifest says; report, never repair.

    Args:
        archive: The archive root, a folder or fsspec URL.
        sample: The fraction of objects hashed in this audit (a share that rotates, so 1/sample audits cover the
            archive); every object is listed and sized each time.
        accession: Audit this accession only (empty: the whole archive).
        config: A YAML file merged over configs/default.yaml (its storage credentials are used).
        overrides: Configuration sections merged over the configuration (a consortium deployment sets them).
    """
    log = get_run_logger()
    settings = load_settings(config or None, overrides)
    credentials.apply(settings.storage)
    private = private_location(archive, settings.archive.private)
    target = accession or None
    locations = [archive] + ([private] if private and location_exists(private) else [])
    if target and "/" in target:  # one version: audited where it is
        locations = [loc for loc in locations if holds(loc, target)] or [archive]
    results = [audit_task(loc, target, sample) for loc in locations]
    problems = [{**p, "version": ("embargoed " if loc != archive else "") + p["version"]}
                for loc, r in zip(locations, results) for p in r["problems"]
                if loc == archive or not holds(archive, p["version"])]  # (not one released while it was audited)
    lines = []
    for result in results:
        lines += [f"# Fixity audit of `{result['archive']}`", "",
                  f"{len(result['versions'])} version(s), {result['objects']} objects listed, {result['hashed']} "
                  f"hashed ({result['hashed_bytes']:,} bytes; round {result['round']} of {result['buckets']}).", "",
                  f"Audit log: `{result['audit_log']}`", ""]
    if problems:
        lines += ["| version | object | problem |", "|---|---|---|"]
        lines += [f"| {p['version']} | `{p['path']}` | {p['detail']} |" for p in problems]
    else:
        lines.append("No problem found.")
    create_markdown_artifact("\n".join(lines), key=outcome.run_artifact_key("fixity-audit", archive),
                             description="What the fixity audit found")
    objects = sum(r["objects"] for r in results)
    versions = sum(len(r["versions"]) for r in results)
    if problems:
        message = (f"{len(problems)} object(s) are not what their manifests say: "
                   + "; ".join(f"{p['version']}/{p['path']}: {p['detail']}" for p in problems[:10]))
        log.error(message)
        return Failed(message=message, data=FailedOutcome(message, results), name="Damaged")
    message = f"{objects} objects of {versions} version(s) match their manifests"
    log.info(message)
    return Completed(message=message, data=results)


def location_exists(location: str) -> bool:
    fs, root = resolve(location)
    return fs.exists(root)


def holds(location: str, version: str) -> bool:
    """Whether ``location`` holds the committed version ``ACCESSION/vN``."""
    fs, root = resolve(location)
    fs.invalidate_cache()
    return fs.isfile(join(root, version, MANIFEST))
