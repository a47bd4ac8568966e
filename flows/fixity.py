"""``fixity_audit``: re-hash published objects against their manifests, on a schedule.

Every object of every committed version is listed and compared with its
manifest (missing, truncated, unexpected), and a rotating share of them
(``sample``) is read back and hashed, so that ``1/sample`` audits cover the
whole archive. Each audit is kept in the archive's audit log
(``_audit/fixity/``); a problem fails the run and is named in its artifact.
Nothing is ever repaired.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State

from zarrchive import credentials
from zarrchive.archive import fixity
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
    credentials.apply(load_settings(config or None, overrides).storage)
    result = audit_task(archive, accession or None, sample)
    problems = result["problems"]
    lines = [f"# Fixity audit of `{result['archive']}`", "",
             f"{len(result['versions'])} version(s), {result['objects']} objects listed, {result['hashed']} hashed "
             f"({result['hashed_bytes']:,} bytes; round {result['round']} of {result['buckets']}).", "",
             f"Audit log: `{result['audit_log']}`", ""]
    if problems:
        lines += ["| version | object | problem |", "|---|---|---|"]
        lines += [f"| {p['version']} | `{p['path']}` | {p['detail']} |" for p in problems]
    else:
        lines.append("No problem found.")
    create_markdown_artifact("\n".join(lines), key="fixity-audit", description="What the fixity audit found")
    if problems:
        message = (f"{len(problems)} object(s) are not what their manifests say: "
                   + "; ".join(f"{p['version']}/{p['path']}: {p['detail']}" for p in problems[:10]))
        log.error(message)
        return Failed(message=message, data=FailedOutcome(message, result))
    message = f"{result['objects']} objects of {len(result['versions'])} version(s) match their manifests"
    log.info(message)
    return Completed(message=message, data=result)
