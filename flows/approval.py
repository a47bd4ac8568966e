"""Curator approval: the run pauses before publishing until a curator approves or rejects the version.

The pause shows a Prefect input form (approve, the curator's name, a reason)
under the QC summary and what would be published; a timeout counts as not
approved. The decision, who made it and why, is a stage of the version's
lineage (``approval``), so it is kept with the data.
"""

from __future__ import annotations

import datetime as dt

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from zarrchive.lineage import Traced, traced
from zarrchive.records import Decision, ImageOutcome, QCReport, Submission
from zarrchive.tasks.qc import markdown_summary


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


def decide(submission: Submission, outcomes: list[ImageOutcome], qc_report: QCReport | None,
           timeout_seconds: float) -> Decision:
    """Pause the run for a curator's decision; not approved when none comes within ``timeout_seconds``."""
    form = Approval.with_initial_data(description=summary(submission, outcomes, qc_report), approve=False)
    try:
        answer = pause_flow_run(wait_for_input=form, timeout=int(timeout_seconds),
                                poll_interval=max(1, min(10, int(timeout_seconds) // 10 or 1)),
                                key=f"approval-{submission.accession}")
    except FlowPauseTimeout:
        return Decision(approved=False, decided=dt.datetime.now(dt.timezone.utc), timed_out=True,
                        reason=f"{timeout_seconds:.0f} s")
    return Decision(approved=answer.approve, curator=answer.curator, reason=answer.reason,
                    decided=dt.datetime.now(dt.timezone.utc))


@task(name="approval", cache_policy=NO_CACHE)
def ask_curator(submission: Submission, outcomes: list[ImageOutcome], qc_report: QCReport | None,
                timeout_seconds: float) -> Traced[Decision]:
    return traced("approval", decide, submission, outcomes, qc_report, timeout_seconds)
