"""``ingest_submission``: one submission from the landing zone to a published, verified archive version.

Reads as the stages in order: intake, fetch, convert, pyramid, compress, qc,
publish. Per-file and per-image stages fan out; a failure is recorded and
the other images go on; the publish policy decides what a failure blocks.
Label images go through the same stages; their pyramid follows the image they
annotate, and publish nests them under it.
"""

from __future__ import annotations

from typing import Literal

from prefect import flow
from pydantic import BaseModel, Field

from zarrchive.cluster import cluster_for_run, link_dashboard
from zarrchive.config import load_settings
from zarrchive.flows.fanout import gather
from zarrchive.records import LineageRecord, Publication
from zarrchive.staging import staging_area, work_area
from zarrchive.tasks.compress import compress
from zarrchive.tasks.convert import companions_of, convert
from zarrchive.tasks.fetch import fetch
from zarrchive.tasks.intake import intake
from zarrchive.tasks.publish import (
    blocking_reasons, find_unchanged, image_outcomes, not_published, publish, unchanged_publication,
    version_fingerprint,
)
from zarrchive.tasks.pyramid import labels_with_images, pyramid
from zarrchive.tasks.qc import qc


class IngestRequest(BaseModel):
    """What archive staff fill in to ingest one submission."""

    submission: str = Field(description="Submission folder or fsspec URL (it holds submission.yaml)")
    archive: str = Field(description="Archive root: a folder or fsspec URL such as s3://bucket/archive")
    config: str | None = Field(default=None, description="YAML file merged over configs/default.yaml")
    codec_profile: Literal["compat", "max", "fixed"] | None = Field(
        default=None, description="compat: codecs every Zarr v3 reader has; max: also JPEG-XL, JPEG-LS, HTJ2K, "
                                  "pcodec (smallest; reading needs imagecodecs); empty: the config's profile")


@flow(name="ingest_submission", flow_run_name="ingest {request.submission}", validate_parameters=True)
def ingest_submission(request: IngestRequest) -> Publication:
    settings = load_settings(request.config, {"compress": {"profile": request.codec_profile}}
                             if request.codec_profile else None)
    lineage: list[LineageRecord] = []

    submitted = intake(request.submission, request.archive, settings.archive, settings.submission)
    lineage.append(submitted.lineage)
    submission = submitted.output

    with staging_area(settings.staging, submission.accession) as staging:
        fetched = fetch(submission, staging, settings.fetch)
        lineage.append(fetched.lineage)
        files, failures = fetched.output.files, list(fetched.output.failures)

        fingerprint = version_fingerprint(submission, files, settings)
        if not failures and (latest := find_unchanged(request.archive, submission.accession, fingerprint)):
            return unchanged_publication(submission, request.archive, latest)

        entries = {entry.path: entry for entry in submission.doc.files}
        staged = {f.path: f for f in files}
        work = work_area(settings.staging)
        with cluster_for_run(settings.cluster) as scheduler:
            link_dashboard(scheduler)
            converted, failed = gather("convert", [
                (convert.submit(f, entries[f.path], work, settings.convert, companions_of(f, files)),
                 {"source_path": f.path})
                for f in files if f.kind in ("image", "label")
            ], lineage)
            converted = [image for batch in converted for image in batch]
            failures += failed

            images, failed = gather("pyramid", [
                (pyramid.submit(image, settings.pyramid), _who(image)) for image in converted if image.kind == "image"
            ], lineage)
            failures += failed
            labels, failed = gather("pyramid", [  # a label follows the levels of the image it annotates
                (pyramid.submit(label, settings.pyramid, image), _who(label))
                for label, image in labels_with_images(converted, images)
            ], lineage)
            images, failures = images + labels, failures + failed

            reports, failed = gather("compress", [
                (compress.submit(image, staged[image.source_path], work, settings.compress, scheduler), _who(image))
                for image in images
            ], lineage)
            failures += failed

            checked = qc(submission, images, reports, settings.qc, scheduler) if reports else None
            if checked:
                lineage.append(checked.lineage)
            qc_report = checked.output if checked else None

        outcomes = image_outcomes(images, failures, qc_report, settings.publish)
        if reasons := blocking_reasons(outcomes, qc_report):
            return not_published(submission, request.archive, outcomes, reasons)
        published = publish(submission, request.archive, fingerprint, files, reports, outcomes, qc_report, lineage)
        return published.output


def _who(image) -> dict:
    return {"source_path": image.source_path, "image_id": image.image_id, "series": image.series,
            "label_of": image.label_of}
