"""Deployment declarations point at real flows whose parameters form a form staff can use."""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

ROOT = Path(__file__).resolve().parent.parent


def test_every_deployment_loads_its_installed_flow_with_an_enforced_parameter_schema(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # module-path entrypoints: no checkout, no working directory needed
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    assert spec["deployments"] and spec["pull"] == []
    for deployment in spec["deployments"]:
        assert deployment["enforce_parameter_schema"] is True
        assert ":" not in deployment["entrypoint"] and deployment["entrypoint"].startswith("zarrchive.flows.")
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        assert parameter_schema(flow).model_dump()["required"], f"{deployment['name']} has no required parameters"


def test_the_ingest_form_has_flat_described_fields_and_choices_not_toggles():
    from zarrchive.flows.ingest import ingest_submission

    schema = parameter_schema(ingest_submission).model_dump()
    fields = schema["properties"]
    assert set(schema["required"]) == {"submission", "archive"}
    assert list(fields)[:6] == ["submission", "archive", "config", "codec_profile", "create_archive", "approval"]
    assert all(f.get("description") for f in fields.values())
    assert fields["codec_profile"]["enum"] == ["from configuration", "compat", "max", "fixed"]
    assert fields["codec_profile"]["default"] == "from configuration"
    assert fields["config"]["type"] == "string" and fields["config"]["default"] == ""
    assert fields["create_archive"] == {**fields["create_archive"], "type": "boolean", "default": False}
    assert ingest_submission.description and "Ingest one submission" in ingest_submission.description


def test_the_scheduled_flows_have_forms_too():
    from zarrchive.flows.fixity import fixity_audit
    from zarrchive.flows.nightly import nightly_import

    nightly = parameter_schema(nightly_import).model_dump()
    assert set(nightly["required"]) == {"landing_zone", "archive"}
    assert nightly["properties"]["concurrency_limit"]["default"] == 2
    assert all(f.get("description") for f in nightly["properties"].values())
    audit = parameter_schema(fixity_audit).model_dump()
    assert set(audit["required"]) == {"archive"} and audit["properties"]["sample"]["default"] == 1.0
