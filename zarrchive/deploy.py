"""Registering a consortium's deployments with a Prefect server (``zarrchive deploy register|list|remove``).

A consortium (``consortium.Consortium``) gets one deployment of each flow, named
after it and tagged ``zarrchive`` and ``consortium:<name>``: ``ingest_submission/<name>``
(run from the UI, with the consortium's archive and configuration as defaults),
``nightly_import/<name>`` and ``fixity_audit/<name>`` (on the consortium's
schedules, in its time zone). The deployments point at the installed
``zarrchive`` package by module path, so a worker needs zarrchive installed and
nothing else (no checkout, no working directory). Registering again updates
them in place; ``remove`` deletes them.

Before anything is registered the file is validated whole, and the server is
asked whether the work pool and every referenced Secret block exist: every
problem is named with its field, and nothing is registered while any is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from zarrchive.consortium import Consortium
from zarrchive.errors import ConfigError

FLOWS = ("ingest_submission", "nightly_import", "fixity_audit", "release_embargoed")


@dataclass(frozen=True)
class Registered:
    flow: str
    name: str
    id: str
    schedule: str | None
    next_run: str | None

    @property
    def full_name(self) -> str:
        return f"{self.flow}/{self.name}"


def _flows() -> dict[str, Any]:
    from zarrchive.flows.fixity import fixity_audit
    from zarrchive.flows.ingest import ingest_submission
    from zarrchive.flows.nightly import nightly_import
    from zarrchive.flows.release import release_embargoed

    return {"ingest_submission": ingest_submission, "nightly_import": nightly_import, "fixity_audit": fixity_audit,
            "release_embargoed": release_embargoed}


def server_problems(consortium: Consortium) -> list[str]:
    """What the server lacks for the consortium: its work pool, the Secret blocks its credentials name."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    problems = []
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(consortium.work_pool)
        except ObjectNotFound:
            problems.append(f"work_pool: {consortium.work_pool!r} does not exist on the server (create it: prefect "
                            f"work-pool create {consortium.work_pool} --type process)")
        for i, ref in enumerate(consortium.settings().storage.credentials):
            if ref.secret_block:
                try:
                    client.read_block_document_by_name(ref.secret_block, block_type_slug="secret")
                except ObjectNotFound:
                    problems.append(f"config.storage.credentials.{i}.secret_block: no Secret block named "
                                    f"{ref.secret_block!r} on the server")
    return problems


def deployments_of(consortium: Consortium) -> list[tuple[str, Any, str | None]]:
    """The (flow name, RunnerDeployment, cron) of each deployment of the consortium."""
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.deployments.runner import EntrypointType

    flows = _flows()
    common = {"archive": consortium.archive, "overrides": consortium.config}
    spec = {
        "ingest_submission": ({**common, "approval": consortium.approval}, None,
                              "Ingest one submission into the consortium's archive (archive staff run it from the UI)"),
        "nightly_import": ({**common, "landing_zone": consortium.landing_zone, "approval": consortium.approval,
                            "concurrency_limit": consortium.concurrency_limit,
                            "create_archive": consortium.create_archive, "depth": consortium.landing_depth},
                           consortium.schedules.nightly_import,
                           "Ingest every submission of the landing zone marked READY and not yet ingested"),
        "fixity_audit": ({**common, "sample": consortium.fixity_sample}, consortium.schedules.fixity_audit,
                         "Re-hash published objects against their manifests; report, never repair"),
        "release_embargoed": (common, consortium.schedules.release_embargoed,
                              "Release every embargoed version whose release date has come, verified"),
    }
    out = []
    for flow_name, (parameters, cron, description) in spec.items():
        schedules = [CronSchedule(cron=cron, timezone=consortium.timezone)] if cron else None
        deployment = flows[flow_name].to_deployment(
            name=consortium.name, parameters=parameters, schedules=schedules, work_pool_name=consortium.work_pool,
            tags=["zarrchive", consortium.tag], description=f"{description}. {consortium.description}".strip(),
            enforce_parameter_schema=True, entrypoint_type=EntrypointType.MODULE_PATH,
            concurrency_limit=consortium.concurrency_limit if flow_name == "ingest_submission" else 1,
        )
        out.append((flow_name, deployment, cron))
    return out


def register(consortium: Consortium) -> list[Registered]:
    """Create or update the consortium's deployments (idempotent); ``ConfigError`` when the server lacks what the
    file names (nothing is registered then)."""
    if problems := server_problems(consortium):
        raise ConfigError(consortium.name, problems)
    from prefect.client.orchestration import get_client

    done = []
    for flow_name, deployment, cron in deployments_of(consortium):
        deployment_id = deployment.apply()
        with get_client(sync_client=True) as client:
            if cron is None:  # a schedule removed from the file is removed from the server
                for schedule in client.read_deployment(deployment_id).schedules:
                    client.delete_deployment_schedule(deployment_id, schedule.id)
        done.append(Registered(flow_name, consortium.name, str(deployment_id), cron, None))
    return done


def listed(name: str | None = None) -> dict[str, list[Registered]]:
    """Every consortium's deployments (or one consortium's), with their schedules and next scheduled run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter, DeploymentFilterTags, FlowRunFilter, FlowRunFilterDeploymentId, FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.sorting import FlowRunSort

    tags = ["zarrchive"] + ([f"consortium:{name}"] if name else [])
    out: dict[str, list[Registered]] = {}
    with get_client(sync_client=True) as client:
        deployments = client.read_deployments(deployment_filter=DeploymentFilter(tags=DeploymentFilterTags(
            all_=tags)))
        flow_names = {f.id: f.name for f in client.read_flows()}
        for d in deployments:
            consortium = next((t.split(":", 1)[1] for t in d.tags if t.startswith("consortium:")), None)
            if consortium is None:
                continue
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[d.id]),
                                              state=FlowRunFilterState(type=FlowRunFilterStateType(
                                                  any_=[StateType.SCHEDULED]))),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC, limit=1)
            schedule = ", ".join(f"{s.schedule.cron} ({s.schedule.timezone})" for s in d.schedules
                                 if getattr(s.schedule, "cron", None)) or None
            zone = next((s.schedule.timezone for s in d.schedules if getattr(s.schedule, "timezone", None)), "UTC")
            next_run = runs[0].expected_start_time.astimezone(ZoneInfo(zone)).isoformat() \
                if runs and runs[0].expected_start_time else None
            if next_run is None and d.schedules and getattr(d.schedules[0].schedule, "cron", None):
                from zarrchive.consortium import next_runs

                first = d.schedules[0].schedule
                next_run = next_runs(first.cron, first.timezone or "UTC")[0].isoformat() + " (not yet scheduled)"
            out.setdefault(consortium, []).append(Registered(flow_names.get(d.flow_id, "?"), d.name, str(d.id),
                                                             schedule, next_run))
    return {k: sorted(v, key=lambda r: r.flow) for k, v in sorted(out.items())}


def remove(name: str) -> list[str]:
    """Delete every deployment of the consortium ``name``; the names deleted (none: it had none)."""
    from prefect.client.orchestration import get_client

    removed = []
    for consortium, deployments in listed(name).items():
        if consortium != name:
            continue
        with get_client(sync_client=True) as client:
            for d in deployments:
                client.delete_deployment(d.id)
                removed.append(d.full_name)
    return removed


def start_run(full_name: str, submission: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """Create a run of the deployment ``full_name`` (``ingest_submission/acme``) for ``submission``, named
    ``ingest <folder>`` from its creation (a run the UI starts is named so only once it starts); it runs when a
    worker of its pool picks it up. Its id, name and address in the UI."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_UI_URL

    name = f"ingest {submission.rstrip('/').rsplit('/', 1)[-1]}"
    created = run_deployment(full_name, parameters={**parameters, "submission": submission}, flow_run_name=name,
                             timeout=0)
    ui = PREFECT_UI_URL.value()
    return {"id": str(created.id), "name": created.name, "deployment": full_name,
            "url": f"{ui.rstrip('/')}/runs/flow-run/{created.id}" if ui else None}
