"""Curator approval: the run pauses before publishing until a curator approves or rejects the version.

The pause shows a Prefect input form (approve, the curator's name, a reason)
under the QC summary and what would be published; a timeout counts as not
approved. The decision, who made it and why, is a stage of the version's
lineage (``approval``), so it is kept with the data.
"""

from __future__ import annotations

import datetime as dt
import time

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.input import RunInput
from pydantic import Field, ValidationError
from zarrchive.tasks.qc import markdown_summary

from zarrchive.archive.lineage import Traced, traced
from zarrchive.records import Decision, ImageOutcome, QCReport, Submission


class Approval(RunInput):
    """What a curator fills in."""

    approve: bool = Field(description="Publish this version")
    curator: str = Field(min_length=1, description="Your name, as the version's lineage will record it")
    reason: str = Field(default="", description="Why (what to fix, when rejecting)")


def summary(submission: Submission, outcomes: list[ImageOutcome], qc_report: QCReport | None) -> str:
    """What the curator sees above the form."""
    rows = "\n".join(f"| `{o.image_id}` | {o.source_path} | {o.status} | {o.qc} |" for o in outcomes)
    return (f"# Approve {submission.accession}: {submission.doc.title}?\n\n"
            f"| image | file | fate | QC |\n|---|---|---|---|\n{rows}\n\n"
            + (markdown_summary(qc_report) if qc_report else "No QC report."))


GRACE_SECONDS = 3600  # the server's own pause expiry lies this far beyond the run's, which ends the wait itself


def decide(submission: Submission, outcomes: list[ImageOutcome], qc_report: QCReport | None,
           timeout_seconds: float) -> Decision:
    """Pause the run for a curator's decision; not approved when none comes within ``timeout_seconds``.

    Prefect's ``pause_flow_run`` lets the server fail a run whose pause expired, and then nothing of the run can
    report what happened; here the server's expiry lies an hour beyond the wait, and a run nobody decided on takes
    itself out of the pause and ends as not approved, with its report."""
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext
    from prefect.input import keyset_from_paused_state
    from prefect.states import Paused, Running

    context = FlowRunContext.get()
    run_id = context.flow_run.id
    form = Approval.with_initial_data(description=summary(submission, outcomes, qc_report), approve=False)
    paused = Paused(timeout_seconds=int(timeout_seconds) + GRACE_SECONDS, reschedule=False,
                    pause_key=f"approval-{submission.accession.lower()}")
    keyset = keyset_from_paused_state(paused)
    paused.state_details.run_input_keyset = keyset
    poll = max(1.0, min(10.0, timeout_seconds / 10))
    with get_client(sync_client=True) as client:
        result = client.set_flow_run_state(run_id, paused)
        if not result.state or not result.state.is_paused():
            raise RuntimeError(f"the run could not pause for approval: {result.details}")
        form.save(keyset, flow_run_id=run_id)
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            time.sleep(poll)
            state = client.read_flow_run(run_id).state
            if state and state.is_running():
                try:
                    answer = form.load(keyset, flow_run_id=run_id)
                except ValidationError:  # resumed without the form: no decision was given
                    return Decision(approved=False, decided=dt.datetime.now(dt.timezone.utc),
                                    reason="resumed without a decision")
                return Decision(approved=answer.approve, curator=answer.curator, reason=answer.reason,
                                decided=dt.datetime.now(dt.timezone.utc))
        client.set_flow_run_state(run_id, Running(message="no curator decided in time: not approved"), force=True)
    return Decision(approved=False, decided=dt.datetime.now(dt.timezone.utc), timed_out=True,
                    reason=f"{timeout_seconds:.0f} s")


@task(name="approval", cache_policy=NO_CACHE)
def ask_curator(submission: Submission, outcomes: list[ImageOutcome], qc_report: QCReport | None,
                timeout_seconds: float) -> Traced[Decision]:
    return traced("approval", decide, submission, outcomes, qc_report, timeout_seconds)
