"""QC: one row of metadata facts per image, validated by a Great Expectations suite kept in configs/.

The suite is data (JSON): each expectation carries ``meta.severity`` (error or
warning), ``meta.check`` and a ``meta.message`` for the depositor. Checks report;
the flow decides what blocks publication. Metadata conflicts noted during
conversion are reported as warnings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from zarrchive.config import QCSettings, config_dir
from zarrchive.lineage import Traced, traced
from zarrchive.ngff import validate_image
from zarrchive.records import CompressionReport, ImageRecord, Finding, QCReport


def load_suite(settings: QCSettings) -> dict[str, Any]:
    """The expectation suite named by the settings (relative paths are under configs/)."""
    path = Path(settings.suite)
    if not path.is_absolute():
        path = config_dir() / path
    return json.loads(path.read_text())


def image_facts(image: ImageRecord, report: CompressionReport) -> dict[str, Any]:
    """The QC row of one image: what the checks look at."""
    axes = [a.name for a in image.axes]
    shape = dict(zip(axes, image.shape))
    scale = dict(zip(axes, image.levels[0].scale))
    unit = next((a.unit for a in image.axes if a.type == "space" and a.unit), None)
    ngff_problems = validate_image(report.store)

    def size(axis: str) -> float | None:
        has_unit = any(a.name == axis and a.unit for a in image.axes)
        return scale[axis] if axis in scale and has_unit else None

    return {
        "image_id": image.image_id,
        "source_path": image.source_path,
        "series": image.series,
        "reader": image.reader,
        "dtype": image.dtype,
        "axes": "".join(axes),
        "shape": "x".join(str(n) for n in image.shape),
        "min_extent": min(image.shape),
        "size_t": shape.get("t", 1), "size_c": shape.get("c", 1), "size_z": shape.get("z", 1),
        "size_y": shape["y"], "size_x": shape["x"],
        "pixel_size_x": size("x"), "pixel_size_y": size("y"), "pixel_size_z": size("z"),
        "unit": unit,
        "calibrated": image.calibrated,
        "n_channels": shape.get("c", 1),
        "channel_names": ", ".join(image.channel_names),
        "channel_names_match": image.channel_names_given is None or image.channel_names_given == shape.get("c", 1),
        "levels": len(image.levels),
        "ngff_valid": not ngff_problems,
        "ngff_problems": "; ".join(ngff_problems),
        "compression_ratio": report.ratio,
        "level0_sha256": report.level0_sha256,
    }


def run_suite(rows: list[dict[str, Any]], suite: dict[str, Any]) -> list[Finding]:
    """Validate the rows with Great Expectations; one finding per failing image and expectation."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    import pandas as pd
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = {"globally": False, "metric_calculations": False}
    frame = pd.DataFrame(rows)
    batch = (context.data_sources.add_pandas("qc").add_dataframe_asset("images")
             .add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": frame}))
    expectations = [ExpectationConfiguration(**e).to_domain_obj() for e in suite["expectations"]]
    gx_suite = gx.ExpectationSuite(name=suite["name"], expectations=expectations)
    result = batch.validate(gx_suite, result_format={"result_format": "COMPLETE",
                                                     "unexpected_index_column_names": ["image_id"]})
    findings = []
    for res in result.results:
        if res.success:
            continue
        meta = res.expectation_config.meta or {}
        column = res.expectation_config.kwargs.get("column")
        unexpected = res.result.get("unexpected_index_list") or []
        if not unexpected:  # the expectation itself failed (e.g. a missing column)
            findings.append(Finding(severity="error", check=meta.get("check", res.expectation_config.type),
                                      field=column, message=f"expectation could not run: {res.exception_info}"))
        for hit in unexpected:
            value = hit.get(column)
            findings.append(Finding(
                severity=meta.get("severity", "error"), check=meta.get("check", res.expectation_config.type),
                image_id=hit["image_id"], field=column,
                message=meta.get("message", res.expectation_config.type).replace("{value}", str(value)),
            ))
    return findings


def check_metadata(images: list[ImageRecord], reports: list[CompressionReport], settings: QCSettings) -> QCReport:
    """QC of every image that reached this stage: the suite's findings plus conversion notes (warnings)."""
    suite = load_suite(settings)
    by_id = {r.image_id: r for r in reports}
    rows = [image_facts(image, by_id[image.image_id]) for image in images]
    findings = run_suite(rows, suite) if rows else []
    for image in images:
        findings.extend(Finding(severity="warning", check="metadata_conflict", image_id=image.image_id, message=n)
                        for n in image.notes)
    return QCReport(suite=suite["name"], rows=rows, findings=findings)


def markdown_summary(report: QCReport) -> str:
    lines = [f"# QC — suite `{report.suite}`", "",
             f"{len(report.rows)} image(s): {len(report.errors)} error(s), {len(report.warnings)} warning(s).", "",
             "| image | severity | check | message |", "|---|---|---|---|"]
    lines += [f"| {f.image_id or '-'} | {f.severity} | {f.check} | {f.message} |" for f in report.findings]
    if not report.findings:
        lines.append("| - | - | - | all checks passed |")
    return "\n".join(lines)


@task(name="qc", cache_policy=NO_CACHE)
def qc(images: list[ImageRecord], reports: list[CompressionReport], settings: QCSettings) -> Traced[QCReport]:
    result = traced("qc", check_metadata, images, reports, settings)
    create_markdown_artifact(markdown_summary(result.output), key="qc-summary", description="QC summary")
    create_table_artifact([f.model_dump() for f in result.output.findings] or [{"message": "no findings"}],
                          key="qc-findings", description="QC findings")
    return result
