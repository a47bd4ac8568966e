"""Deployment declarations point at real flows whose parameters form a validated UI form."""

from __future__ import annotations

from pathlib import Path

import yaml
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema

ROOT = Path(__file__).resolve().parent.parent


def test_every_deployment_loads_its_flow_with_an_enforced_parameter_schema(monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    assert spec["deployments"]
    for deployment in spec["deployments"]:
        assert deployment["enforce_parameter_schema"] is True
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        schema = parameter_schema(flow).model_dump()
        assert schema["required"], f"{deployment['name']} has no required parameters"
        if deployment["name"] == "ingest":
            assert flow.name == "ingest_submission"
            request = schema["definitions"]["IngestRequest"]
            assert set(request["properties"]) == {"submission", "archive", "config", "codec_profile"}
            assert set(request["required"]) == {"submission", "archive"}
            assert all(p.get("description") for p in request["properties"].values())
