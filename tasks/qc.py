"""QC: metadata facts per image and per channel, validated by a Great Expectations suite kept in configs/.

The facts: dimensions, dtype, physical sizes and units, time step, channel
names, intensity statistics and the level-0 checksum (both computed on the
Dask cluster from the published pyramid), NGFF validation by an independent
validator, compression ratio, source format.

The suite is data (``configs/qc/default.json``): expectations on an ``images``
table and a ``channels`` table, each carrying ``meta.severity``, ``meta.check``
and ``meta.message``. A modality file (``configs/qc/modalities/*.json``)
adjusts the kwargs of named checks (plausible pixel sizes differ between light
and electron microscopy); ``qc.severity`` in the configuration re-grades
checks. Checks report; the flow applies the publication policy. Submission
warnings and metadata conflicts noted during conversion join the findings.

Label images get a row each too (``kind: label``, ``label_of``), validated as
NGFF label groups; the suite's ``row_condition`` keeps intensity and
image-metadata checks to ``kind == "image"`` rows (a label's sizes are its
image's). A label's values are not intensities: they join no channels table.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
from typing import Any, NamedTuple

import numpy as np
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from zarrchive import faults
from zarrchive.archive.lineage import Traced, stage_task, traced
from zarrchive.cluster import client_for
from zarrchive.config import QCSettings, config_dir, suite_path
from zarrchive.ngff import validate_image, validate_label
from zarrchive.pixels.blocks import chunk_slices
from zarrchive.pixels.passes import BATCH, chunk_stats_or_fault, facts_of_stores
from zarrchive.records import (
    MICROMETERS,
    CompressionReport,
    Failure,
    Finding,
    ImageRecord,
    QCReport,
    Submission,
)

# ---------------------------------------------------------------- the suite


def load_suite(settings: QCSettings, imaging_method: Any = None) -> tuple[dict[str, Any], str | None]:
    """The suite with the modality's adjustments and the configured re-grading applied, and the modality."""
    suite = json.loads(suite_path(settings.suite).read_text())
    modality = choose_modality(settings, imaging_method)
    adjust = {}
    if modality:
        adjust = json.loads((config_dir() / "qc" / "modalities" / f"{modality}.json").read_text())["kwargs"]
    suite = copy.deepcopy(suite)
    for table in ("images", "channels"):
        for exp in suite.get(table, []):
            check = exp["meta"]["check"]
            exp["kwargs"].update(adjust.get(check, {}))
            exp["meta"]["severity"] = settings.severity.get(check, exp["meta"]["severity"])
    return suite, modality


def choose_modality(settings: QCSettings, imaging_method: Any) -> str | None:
    """The modality file to use: configured by name, or matched from the imaging method (FBbi id, keywords)."""
    if settings.modality == "none":
        return None
    if settings.modality != "auto":
        return settings.modality
    if imaging_method is None:
        return None
    text = f" {imaging_method.name} "
    for path in sorted((config_dir() / "qc" / "modalities").glob("*.json")):
        match = json.loads(path.read_text())["match"]
        if imaging_method.fbbi_id and imaging_method.fbbi_id in match.get("fbbi_ids", []):
            return path.stem
        if any(re.search(rf"(?<![A-Za-z]){re.escape(k)}(?![A-Za-z])", text, re.IGNORECASE if k.islower() else 0)
               for k in match.get("keywords", [])):
            return path.stem
    return None


# ---------------------------------------------------------------- facts, on the cluster


def store_facts(image: ImageRecord, report: CompressionReport, scheduler: str) -> tuple[list[dict], str, list[str]]:
    """Per-channel statistics of level 0 of the compressed store, its level-0 digest (chunk order), and what the
    independent OME-NGFF validator (ome-zarr-models) finds in the store."""
    return store_facts_of([(image, report)], scheduler)[0]


STORES_PER_TASK = 16  # small stores whose facts one task gathers, at most (fewer when there are few)


def store_facts_of(pairs: list[tuple[ImageRecord, CompressionReport]], scheduler: str
                   ) -> list[tuple[list[dict], str, list[str]]]:
    """``store_facts`` of many images in one round trip to the cluster: every image's tasks are sent at once and
    gathered together (a study of many small images pays one wait, not one per image). The stores whose level 0
    is one batch of chunks are validated and counted a few in each task (``passes.facts_of_stores``: the tasks'
    own cost, in the scheduler and the process running the flow, would be most of a small store's); a larger
    store has a task per batch of chunks beside the validator's."""
    plans = [_facts_plan(image, report) for image, report in pairs]
    small = [k for k, plan in enumerate(plans) if len(plan.batches) == 1]
    with client_for(scheduler) as client:
        threads = max(1, sum(client.nthreads().values()))
        per_task = max(1, min(STORES_PER_TASK, -(-len(small) // (2 * threads))))  # every thread busy twice over
        groups = [small[i:i + per_task] for i in range(0, len(small), per_task)]
        grouped = [client.submit(facts_of_stores, [_one_batch(plans[k]) for k in group], pure=False)
                   for group in groups]
        larger = {k: _submit_larger(client, plan) for k, plan in enumerate(plans) if len(plan.batches) != 1}
        of_groups, of_larger = client.gather([grouped, larger])
    found = dict(zip([k for group in groups for k in group], [facts for got in of_groups for facts in got]))
    for k, (problems, batches) in of_larger.items():  # a batch that could not be read says why, and the store's
        unread = [b for b in batches if isinstance(b, str)]  # statistics are then those of none of its chunks
        found[k] = (problems + unread[:1], []) if unread else (problems, batches)
    results = []
    for k, (image, _report) in enumerate(pairs):
        problems, batches = found[k]
        results.append((*_channel_facts(image, [p for batch in batches for p in batch]), problems))
    return results


class FactsPlan(NamedTuple):
    """Where an image's facts are read."""

    store: str
    level0: str  # level 0's path in the store
    batches: list[list[tuple[slice, ...]]]  # its chunks, in batches of BATCH
    channel_axis: int | None
    kind: str  # image | label


def _facts_plan(image: ImageRecord, report: CompressionReport) -> FactsPlan:
    """Where an image's facts are read: its store, level 0's path, its chunks in batches, its channel axis and
    its kind."""
    level = image.levels[0]
    axes = image.axis_names
    regions = chunk_slices(level.shape, level.chunks)
    batches = [regions[i:i + BATCH] for i in range(0, len(regions), BATCH)]
    return FactsPlan(report.store, level.path, batches, axes.index("c") if "c" in axes else None, image.kind)


def _one_batch(plan: FactsPlan) -> tuple:
    """What ``passes.facts_of_stores`` takes of a store whose chunks are one batch."""
    return plan.store, plan.level0, plan.batches[0], plan.channel_axis, plan.kind


def _submit_larger(client: Any, plan: FactsPlan) -> tuple[Any, list[Any]]:
    """The futures of a larger store's facts: what the validator finds, and the statistics of each batch."""
    store, level0, batches, channel_axis, kind = plan
    validated = client.submit(validate_label if kind == "label" else validate_image, store, pure=False)
    return validated, client.map(chunk_stats_or_fault, [f"{store}/{level0}"] * len(batches), batches,
                                 [channel_axis] * len(batches), pure=False)


def _channel_facts(image: ImageRecord, parts: list[dict]) -> tuple[list[dict], str]:
    """An image's per-channel statistics and level-0 digest from its chunks' statistics (in chunk order)."""
    level = image.levels[0]
    digest = hashlib.sha256("".join(p["sha256"] for p in parts if p["sha256"]).encode()).hexdigest()
    channels = []
    for index, name in enumerate(image.channel_names):
        mine = [p for p in parts if p["channel"] == index]
        count = sum(p["count"] for p in mine)
        lows = [p["min"] for p in mine if p["min"] is not None]
        highs = [p["max"] for p in mine if p["max"] is not None]
        pixels = int(np.prod(level.shape)) // max(1, len(image.channel_names))
        channels.append({
            "image_id": image.image_id, "channel": index, "name": name,
            "min": min(lows) if lows else None, "max": max(highs) if highs else None,
            "mean": sum(p["sum"] for p in mine) / count if count else None,
            "saturated_fraction": sum(p["saturated"] for p in mine) / pixels,
            "zero_fraction": sum(p["zero"] for p in mine) / pixels,
        })
    return channels, digest


def image_facts(image: ImageRecord, report: CompressionReport, channels: list[dict], level0_digest: str,
                ngff_problems: list[str]) -> dict[str, Any]:
    """The QC row of one image: what the image checks look at."""
    axes = image.axis_names
    shape = dict(zip(axes, image.shape))
    scale = dict(zip(axes, image.levels[0].scale))
    units = {a.name: a.unit for a in image.axes}
    space_unit = next((a.unit for a in image.axes if a.type == "space" and a.unit), None)

    def size(axis: str) -> float | None:
        return scale[axis] if axis in scale and units.get(axis) else None

    def in_um(axis: str) -> float | None:
        value = size(axis)
        return value * MICROMETERS[units[axis]] if value is not None and units[axis] in MICROMETERS else None

    names = list(image.channel_names)
    highs = [c["max"] for c in channels if c["max"] is not None]
    lows = [c["min"] for c in channels if c["min"] is not None]
    return {
        "image_id": image.image_id, "kind": image.kind, "label_of": image.label_of,
        "source_path": image.source_path, "series": image.series,
        "source_format": image.reader, "dtype": image.dtype, "axes": "".join(axes),
        "shape": "x".join(str(n) for n in image.shape), "min_extent": min(image.shape),
        "size_t": shape.get("t", 1), "size_c": shape.get("c", 1), "size_z": shape.get("z", 1),
        "size_y": shape["y"], "size_x": shape["x"],
        "pixel_size_x": size("x"), "pixel_size_y": size("y"), "pixel_size_z": size("z"), "unit": space_unit,
        "pixel_size_x_um": in_um("x"), "pixel_size_y_um": in_um("y"), "pixel_size_z_um": in_um("z"),
        "time_step": scale["t"] if "t" in scale and units.get("t") else None, "time_unit": units.get("t"),
        "calibrated": image.calibrated,
        "channel_names": ", ".join(names),
        "channel_names_match": image.channel_names_given is None or image.channel_names_given == len(names),
        "channel_names_unique": len(set(names)) == len(names),
        "channel_names_nonempty": all(n.strip() for n in names),
        "min": min(lows) if lows else None, "max": max(highs) if highs else None,
        "saturated_fraction": max((c["saturated_fraction"] for c in channels), default=0.0),
        "all_zero": bool(highs) and max(highs) == 0 and min(lows) == 0,
        "levels": len(image.levels),
        "ngff_valid": not ngff_problems, "ngff_problems": "; ".join(ngff_problems),
        "compression_ratio": report.ratio,
        "level0_sha256": level0_digest, "level0_checksum_matched": level0_digest == report.level0_sha256,
    }


# ---------------------------------------------------------------- running the suite


def run_suite(table: str, rows: list[dict[str, Any]], expectations: list[dict[str, Any]],
              keys: list[str]) -> list[Finding]:
    """Validate ``rows`` with Great Expectations; one finding per failing row and expectation."""
    if not rows or not expectations:
        return []
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its temporary-folder notes are not ours
    import great_expectations as gx
    import pandas as pd
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    batch = (context.data_sources.add_pandas(table).add_dataframe_asset(table)
             .add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": pd.DataFrame(rows)}))
    suite = gx.ExpectationSuite(name=table, expectations=[ExpectationConfiguration(**e).to_domain_obj()
                                                          for e in expectations])
    result = batch.validate(suite, result_format={"result_format": "COMPLETE", "unexpected_index_column_names": keys})
    findings = []
    for res in result.results:
        if res.success:
            continue
        meta = res.expectation_config.meta or {}
        column = res.expectation_config.kwargs.get("column")
        check = meta.get("check", res.expectation_config.type)
        unexpected = res.result.get("unexpected_index_list") or []
        if not unexpected:  # the expectation could not run (e.g. a column the suite names is missing)
            findings.append(Finding(severity="error", check=check, field=column,
                                    message=f"expectation {res.expectation_config.type} could not run: "
                                            f"{res.exception_info}"))
        for hit in unexpected:
            value = hit.get(column)
            value = f"{value:.4g}" if isinstance(value, float) else str(value)
            message = meta.get("message", res.expectation_config.type).replace("{value}", value)
            if table == "channels":
                message = f"channel {hit.get('name', hit.get('channel'))}: {message}"
            findings.append(Finding(severity=meta.get("severity", "error"), check=check, image_id=hit["image_id"],
                                    field=column, message=message))
    return findings


def check_metadata(submission: Submission, images: list[ImageRecord], reports: list[CompressionReport],
                   settings: QCSettings, scheduler: str) -> QCReport:
    """QC of every image that reached this stage, plus the submission's warnings and conversion notes."""
    faults.point("qc.start")
    suite, modality = load_suite(settings, submission.doc.imaging_method)
    by_id = {r.image_id: r for r in reports}
    images = [image for image in images if image.image_id in by_id]  # only what compress produced is checked
    rows, channel_rows = [], []
    facts = store_facts_of([(image, by_id[image.image_id]) for image in images], scheduler)
    for image, (channels, digest, problems) in zip(images, facts, strict=True):
        rows.append(image_facts(image, by_id[image.image_id], channels, digest, problems))
        if image.kind == "image":  # a label's values are ids, not intensities
            channel_rows.extend(channels)
    findings = list(submission.findings)
    findings += run_suite("images", rows, suite.get("images", []), ["image_id"])
    findings += run_suite("channels", channel_rows, suite.get("channels", []), ["image_id", "channel", "name"])
    for image in images:
        findings.extend(Finding(severity=settings.severity.get("metadata_conflict", "warning"),
                                check="metadata_conflict", image_id=image.image_id, file=image.source_path,
                                message=note) for note in image.notes)
    findings.extend(lossy_source_findings(images, reports, settings))
    return QCReport(suite=suite["name"], modality=modality, rows=rows, channels=channel_rows, findings=findings)


def lossy_source_findings(images: list[ImageRecord], reports: list[CompressionReport],
                          settings: QCSettings) -> list[Finding]:
    """A lossy-compressed source (JPEG…) is archived as its decoded pixels, losslessly: say so, with the sizes,
    rather than let the archive copy look like an unexplained inflation (the original is kept as submitted)."""
    stored = {r.image_id: r for r in reports}
    out = []
    for image in images:
        if image.lossy_source and (report := stored.get(image.image_id)):
            out.append(Finding(
                severity=settings.severity.get("lossy_source", "warning"), check="lossy_source",
                image_id=image.image_id, file=image.source_path,
                message=f"the source's pixels were {image.lossy_source}-compressed (lossy): the archive keeps the "
                        f"decoded pixels exactly ({report.bytes_out:,} bytes stored, ratio {report.ratio:.2f} "
                        "over the decoded pixels); the lossy original is kept as submitted under originals/"))
    return out


# ---------------------------------------------------------------- reports people read


def markdown_summary(report: QCReport, failures: list[Failure] = ()) -> str:
    """The QC summary: images checked, the images that never reached QC (they failed before it), every finding."""
    failed = [f for f in failures if f.stage != "qc"]
    lines = [f"# QC — suite `{report.suite}`" + (f", modality `{report.modality}`" if report.modality else ""), "",
             f"{len(report.rows)} image(s) checked: {len(report.errors)} error(s), {len(report.warnings)} warning(s)"
             + (f"; {len(failed)} image(s) or file(s) failed before QC and were not checked." if failed else "."), "",
             "| severity | where | check | message |", "|---|---|---|---|"]
    lines += [f"| {f.severity} | {f.image_id or f.file or f.field or '-'} | {f.check} | {f.message} |"
              for f in report.findings]
    lines += [f"| failed | {f.image_id or f.source_path} | {f.stage} | {f.error} |" for f in failed]
    if not report.findings and not failed:
        lines.append("| - | - | - | all checks passed |")
    return "\n".join(lines)


@stage_task(name="qc", cache_policy="none")
def qc(submission: Submission, images: list[ImageRecord], reports: list[CompressionReport], settings: QCSettings,
       scheduler: str, failures: list[Failure] = ()) -> Traced[QCReport]:
    result = traced("qc", check_metadata, submission, images, reports, settings, scheduler)
    from zarrchive import runlog

    runlog.logger().info("qc: %d image(s) checked: %d error(s), %d warning(s)%s", len(result.output.rows),
                         len(result.output.errors), len(result.output.warnings),
                         "".join(f"; {f.image_id or f.file or f.field}: {f.message}" for f in result.output.errors))
    key = submission.accession.lower()
    create_markdown_artifact(markdown_summary(result.output, failures), key=f"{key}-qc-summary",
                             description=f"QC summary of {submission.accession}")
    create_table_artifact([f.model_dump() for f in result.output.findings] or [{"message": "no findings"}],
                          key=f"{key}-qc-findings", description=f"QC findings of {submission.accession}")
    create_table_artifact(result.output.rows, key=f"{key}-qc-images", description=f"QC facts per image of "
                                                                                  f"{submission.accession}")
    return result
