"""``ingest_submission``: one submission from the landing zone to a published, verified archive version.

Reads as the stages in order: intake, fetch, convert, pyramid, compress, qc,
(a curator's approval, when asked for) and publish. Per-file and per-image
stages fan out; a failure is recorded and the other images go on; the publish
policy decides what a failure blocks. Label images go through the same stages;
their pyramid follows the image they annotate, and publish nests them under it.

Every outcome ends the run in a state that says what happened (``outcome``)
and leaves a ``<accession>-publication`` artifact listing each image's fate.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Literal

import numpy as np
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State
from prefect.utilities.annotations import quote
from zarrchive.flows.approval import ask_curator
from zarrchive.flows.fanout import distinct_ids, fan_out, gather, redact
from zarrchive.tasks.catalog import index_public
from zarrchive.tasks.compress import compress, compress_batch
from zarrchive.tasks.convert import companions, convert, convert_batch
from zarrchive.tasks.fetch import fetch
from zarrchive.tasks.intake import intake
from zarrchive.tasks.publish import (
    blocking_reasons,
    image_outcomes,
    not_published,
    publish,
    unchanged,
    version_fingerprint,
)
from zarrchive.tasks.pyramid import labels_with_images, pyramid, pyramid_batch
from zarrchive.tasks.qc import qc

from zarrchive import credentials, outcome, session
from zarrchive.archive.staging import clean_stale, staging_area, work_area
from zarrchive.archive.versions import private_location
from zarrchive.cluster import cluster_for_run, link_dashboard
from zarrchive.config import Settings, load_settings
from zarrchive.errors import ArchiveNotFound, FailedOutcome, SubmissionError
from zarrchive.records import FileEntry, FileRecord, ImageRecord, Publication

Profile = Literal["from configuration", "compat", "max", "fixed"]


def run_name() -> str:
    """``ingest <submission folder name>``, readable in the run list."""
    return f"ingest {os.path.basename(str(flow_run.parameters.get('submission', '?')).rstrip('/'))}"


# The run's result (its Publication) is persisted, so a state read back from the API still has it: under load a
# final state's request can time out and be retried, and the server then answers with its own copy of the state.
@flow(name="ingest_submission", flow_run_name=run_name, validate_parameters=True,
      persist_result=True)
def ingest_submission(
    submission: str,
    archive: str,
    config: str = "",
    codec_profile: Profile = "from configuration",
    create_archive: bool = False,
    approval: bool = False,
    overrides: dict[str, Any] | None = None,
) -> Publication:
    """Ingest one submission: verified, compressed, multiscale OME-Zarr, checked and published with its lineage.

    Args:
        submission: The submission folder or fsspec URL (it holds submission.yaml and the files it lists).
        archive: The archive root, a folder or fsspec URL such as s3://bucket/archive.
        config: A YAML file merged over configs/default.yaml (empty: the defaults).
        codec_profile: compat: codecs every Zarr v3 reader has; max: also pcodec, JPEG-LS and JPEG-XL (smaller;
            zarr-python reads them with numcodecs[pcodec] and imagecodecs-zarr); fixed: the configuration's codec.
        create_archive: Start a new archive when the archive root holds none (off: such a run is refused, so a
            mistyped root never starts a second archive).
        approval: Pause before publishing until a curator approves or rejects the version (with a reason).
        overrides: Configuration sections merged over the configuration (a consortium deployment sets them).
    """
    log = get_run_logger()
    session.collect_less()
    settings = load_settings(config or None, _overrides(overrides, codec_profile))
    credentials.apply(settings.storage)
    if removed := clean_stale(settings.staging):
        log.info("removed what %d killed run(s) left: %s", len(removed), ", ".join(removed))
    try:
        submitted = intake(submission, archive, settings.archive, settings.submission, create_archive)
    except (SubmissionError, ArchiveNotFound) as exc:
        return report(Publication(accession=None, status="refused", archive=archive, submission=submission,
                                  reasons=exc.problems))
    record = submitted.output
    lineage = [submitted.lineage]
    log.info("%s: %s (%d file(s)) is %s", record.accession, record.doc.title, len(record.doc.files),
             "new in a new archive" if record.created_archive else "accepted")

    with staging_area(settings.staging, record.accession) as staging:
        fetched = fetch(quote(record), staging, settings.fetch)
        lineage.append(fetched.lineage)
        files = fetched.output.files
        failures = [f.model_copy(update={"error": redact(f.error, staging)}) for f in fetched.output.failures]
        fingerprint = version_fingerprint(record, files, settings)
        private = private_location(archive, settings.archive.private)
        if not failures:
            latest = unchanged(quote(record), archive, fingerprint, settings.publish, private)
            if latest.output is not None:
                return report(latest.output)

        entries = {entry.path: entry for entry in record.doc.files}
        staged = {f.path: f for f in files}
        work = work_area(settings.staging)
        with cluster_for_run(settings.cluster) as scheduler:
            link_dashboard(scheduler)
            converted, failed, traced = gather("convert", _convert(
                [f for f in files if f.kind in ("image", "label")], entries, work, settings, companions(files),
                scheduler), staging, work)
            converted, clashes = distinct_ids([image for batch in converted for image in batch])
            failures, lineage = failures + failed + clashes, lineage + traced

            images, failed, traced = gather("pyramid", _pyramid(
                [(image, None) for image in converted if image.kind == "image"], settings), staging, work)
            failures, lineage = failures + failed, lineage + traced
            labels, failed, traced = gather("pyramid", _pyramid(  # a label follows the levels of its image
                labels_with_images(converted, images), settings), staging, work)
            images, failures, lineage = images + labels, failures + failed, lineage + traced

            reports, failed, traced = gather("compress", _compress(images, staged, work, settings, scheduler),
                                             staging, work)
            failures, lineage = failures + failed, lineage + traced

            checked = qc(quote(record), quote(images), quote(reports), settings.qc, scheduler,
                         quote(failures)) if reports else None
            lineage += [checked.lineage] if checked else []
            qc_report = checked.output if checked else None

        outcomes = image_outcomes(images, failures, qc_report, settings.publish)
        if reasons := blocking_reasons(outcomes, qc_report):
            return report(not_published(record, archive, outcomes, reasons))
        if approval:
            decision = ask_curator(quote(record), quote(outcomes), quote(qc_report),
                                   settings.publish.approval_timeout_seconds)
            lineage.append(decision.lineage)
            if not decision.output.approved:
                return report(not_published(record, archive, outcomes, [decision.output.describe()],
                                            status="rejected"))
        published = publish(quote(record), archive, fingerprint, quote(files), quote(reports), quote(outcomes),
                            quote(qc_report), quote(lineage),
                            settings.publish, private,
                            link_originals=not settings.staging.keep)  # (a kept staging folder shares nothing)
        if published.output.status == "published" and not published.output.embargoed_until:
            index_public(archive, record.accession, settings.catalog)
        return report(published.output)


def _overrides(overrides: dict[str, Any] | None, codec_profile: str) -> dict[str, Any] | None:
    """The run's configuration overrides: the deployment's, and the codec profile chosen in the form."""
    merged = dict(overrides or {})
    if codec_profile != "from configuration":
        merged["compress"] = {**merged.get("compress", {}), "profile": codec_profile}
    return merged or None


# Each per-file and per-image stage runs a task of its own for a large item and one for a batch of small ones
# (zarrchive.batch): the UI shows every stage, each task run named by what it holds.
#
# Records passed to a task are quoted (``quote``): Prefect would otherwise walk every field of every record of a
# parameter, looking for futures to wait for (there are none: every value passed is already a result), on each
# call, under the flow's GIL: work that grows with the records (a batch of 64 images, the lineage of 10,000).


def _convert(files: list[FileRecord], entries: dict[str, FileEntry], work: str, settings: Settings,
             companions_of: Callable[[FileRecord], dict[str, str]], scheduler: str | None = None) -> list:
    """The convert stage's task runs. Its batches are described on the cluster (``convert_batch``) when the run
    has ``batch.describe_on_cluster`` small files or more: below that, what it saves does not pay for the
    workers' first import of the readers."""
    small = sum(1 for f in files if f.size <= settings.batch.small_bytes)
    if small < settings.batch.describe_on_cluster:
        scheduler = None
    return fan_out(
        files, lambda f: f.size, settings.batch,
        one=lambda f: convert.submit(f, entries[f.path], work, settings.convert, companions_of(f)),
        many=lambda group, name: convert_batch.submit(
            quote([(f, entries[f.path], companions_of(f)) for f in group]), work, settings.convert, name,
            scheduler),
        who=lambda f: {"source_path": f.path}, noun="files", shown=lambda f: f.path)


def _pyramid(items: list[tuple[ImageRecord, ImageRecord | None]], settings: Settings) -> list:
    return fan_out(
        items, lambda item: _bytes(item[0]), settings.batch,
        one=lambda item: pyramid.submit(item[0], settings.pyramid, item[1]),
        many=lambda group, name: pyramid_batch.submit(quote(group), settings.pyramid, name),
        who=lambda item: _who(item[0]), noun="images", shown=lambda item: item[0].image_id)


def _compress(images: list[ImageRecord], staged: dict[str, FileRecord], work: str, settings: Settings,
              scheduler: str) -> list:
    return fan_out(
        images, _bytes, settings.batch,
        one=lambda image: compress.submit(image, staged[image.source_path], work, settings.compress, scheduler),
        many=lambda group, name: compress_batch.submit(quote([(i, staged[i.source_path]) for i in group]), work,
                                                       settings.compress, scheduler, name),
        who=_who, noun="images", shown=lambda image: image.image_id)


def _bytes(image: ImageRecord) -> int:
    """An image's level 0 in bytes."""
    return math.prod(image.shape) * np.dtype(image.dtype).itemsize


def _who(image) -> dict:
    return {"source_path": image.source_path, "image_id": image.image_id, "series": image.series,
            "label_of": image.label_of}


def report(pub: Publication) -> State:
    """End the run with what happened: the publication artifact, the outcome's tags, a log line and a state that
    is Completed only when a complete version was published or nothing needed publishing."""
    log = get_run_logger()
    create_markdown_artifact(outcome.report(pub), key=outcome.artifact_key(pub),
                             description=f"What became of {pub.accession or pub.submission}")
    _tag_run(outcome.tags(pub))
    text = outcome.message(pub)
    (log.info if outcome.succeeded(pub) else log.warning)(text)
    if outcome.succeeded(pub):
        return Completed(message=text, data=pub, name=outcome.state_name(pub))
    return Failed(message=text, data=FailedOutcome(text, pub), name=outcome.state_name(pub))


def _tag_run(tags: list[str]) -> None:
    """Add ``tags`` to this flow run (so staff can filter the run list on the outcome and the accession)."""
    from prefect.client.orchestration import get_client

    run_id = flow_run.id
    if not run_id:
        return
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(run_id)
        client.update_flow_run(run_id, tags=sorted(set(current.tags) | set(tags)))


def ingest(submission: str, archive: str, config: str | None = None, codec_profile: str | None = None,
           create_archive: bool = True, approval: bool = False,
           overrides: dict[str, Any] | None = None) -> Publication:
    """Run ``ingest_submission`` and return its ``Publication`` whatever the outcome (the Python API, and the
    command line's). Creates the archive on first use unless told otherwise."""
    state = ingest_submission(submission=submission, archive=archive, config=config or "",
                              codec_profile=codec_profile or "from configuration", create_archive=create_archive,
                              approval=approval, overrides=overrides, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, FailedOutcome):
        return result.data
    if isinstance(result, BaseException):
        raise result
    return result
