"""The archive as a Prefect service, as its operators meet it: a real ``prefect server`` process and a real worker.

A facility registers a consortium from its YAML file; staff run ingests
through the API and the ``prefect deployment run`` command with flat
parameters; a short schedule fires and its run completes (the guard against a
dependency that silently stops the scheduler); the nightly import goes over a
landing zone of ready, not-ready, already-ingested, refused, broken and linked
submissions; curator approval pauses a run until a decision; a worker reads S3
credentials from the references the consortium gives (environment variables, a
Secret block), never from job variables.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from builders import ome_tiff, random_image, submission
from conftest import SESSION_DIR, WORK
from service import Service, start_server, start_worker, stop, wait_for_run

POOL = "zarrchive-test"
S3_ENV = {"ZARRCHIVE_TEST_S3_KEY": "testing", "ZARRCHIVE_TEST_S3_SECRET": "testing"}


@pytest.fixture(scope="session")
def service(tmp_path_factory) -> Service:
    home = tmp_path_factory.mktemp("prefect-service")
    logs = SESSION_DIR / "service-logs"
    logs.mkdir(exist_ok=True)
    svc = start_server(home, logs / "server.log")
    try:
        start_worker(svc, POOL, logs / "worker.log", {
            **S3_ENV, "PREFECT_LOCAL_STORAGE_PATH": str(home / "results"),
            "XDG_CACHE_HOME": str(SESSION_DIR / "cache")})
        yield svc
    finally:
        stop(svc)


def consortium_file(tmp_path: Path, scheduler: str, name: str = "acme", **fields) -> Path:
    archive = tmp_path / "archive"
    data = {
        "name": name, "description": "Test consortium", "landing_zone": str(tmp_path / "landing"),
        "archive": str(archive), "timezone": "Europe/Berlin", "work_pool": POOL, "concurrency_limit": 2,
        "create_archive": True,
        "schedules": {"nightly_import": "0 2 * * *", "fixity_audit": "0 4 * * 0"},
        "config": {"cluster": {"address": scheduler}, "staging": {"work": WORK}},
        **fields,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    (tmp_path / "landing").mkdir(exist_ok=True)
    return path


def deployment_id(service: Service, full_name: str):
    from prefect.client.orchestration import get_client

    with service.client_settings(), get_client(sync_client=True) as client:
        return client.read_deployment_by_name(full_name).id


def run(service: Service, full_name: str, timeout: float = 300, **parameters):
    """Start a run of a deployment through the API and wait until it is final."""
    from prefect.deployments import run_deployment

    with service.client_settings():
        started = run_deployment(full_name, parameters=parameters, timeout=0, _sync=True)
    return wait_for_run(service, started.id, timeout)


def artifact(service: Service, key: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with service.client_settings(), get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                      sort=ArtifactSort.CREATED_DESC, limit=1)
    assert found, f"no artifact {key}"
    return found[0].data if isinstance(found[0].data, str) else json.dumps(found[0].data)


def artifact_id(service: Service, key: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with service.client_settings(), get_client(sync_client=True) as client:
        [found] = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                        sort=ArtifactSort.CREATED_DESC, limit=1)
    return found.id


def good_submission(folder: Path, seed: int = 0) -> Path:
    ome_tiff(folder / "a.ome.tif", random_image((1, 1, 32, 32), seed=seed), "CZYX", {"x": 0.5, "y": 0.5})
    return submission(folder, [{"path": "a.ome.tif"}])


# ---------------------------------------------------------------- registering a consortium


def test_a_consortium_registers_from_its_yaml_idempotently_and_is_listed(service, tmp_path, scheduler):
    path = consortium_file(tmp_path, scheduler)
    first = service.cli("zarrchive", "deploy", "register", str(path), "--json", check=True)
    names = {d["full_name"]: d for d in json.loads(first.stdout)["deployments"]}
    assert set(names) == {"ingest_submission/acme", "nightly_import/acme", "fixity_audit/acme",
                          "release_embargoed/acme"}
    again = json.loads(service.cli("zarrchive", "deploy", "register", str(path), "--json", check=True).stdout)
    assert {d["full_name"]: d["id"] for d in again["deployments"]} == {k: v["id"] for k, v in names.items()}

    listed = json.loads(service.cli("zarrchive", "deploy", "list", "acme", "--json", check=True).stdout)["acme"]
    schedules = {d["full_name"]: (d["schedule"], d["next_run"]) for d in listed}
    assert schedules["nightly_import/acme"][0] == "0 2 * * * (Europe/Berlin)"
    assert schedules["nightly_import/acme"][1] and "T02:00:00" in schedules["nightly_import/acme"][1]
    assert schedules["fixity_audit/acme"][0] == "0 4 * * 0 (Europe/Berlin)"
    assert schedules["ingest_submission/acme"] == (None, None)

    from prefect.client.orchestration import get_client

    with service.client_settings(), get_client(sync_client=True) as client:
        ingest = client.read_deployment_by_name("ingest_submission/acme")
    assert ingest.entrypoint == "zarrchive.flows.ingest.ingest_submission" and ingest.enforce_parameter_schema
    assert ingest.parameters["archive"] == str(tmp_path / "archive")
    assert ingest.parameters["overrides"]["cluster"]["address"] == scheduler
    assert {"zarrchive", "consortium:acme"} <= set(ingest.tags) and not ingest.job_variables

    removed = json.loads(service.cli("zarrchive", "deploy", "remove", "acme", "--json", check=True).stdout)
    assert len(removed["deployments"]) == 4
    assert json.loads(service.cli("zarrchive", "deploy", "list", "acme", "--json", check=True).stdout) == {}


def test_a_bad_consortium_file_registers_nothing_and_names_every_problem(service, tmp_path, scheduler):
    path = consortium_file(tmp_path, scheduler, name="broken", timezone="Mars/Olympus", work_pool="no-such-pool",
                           schedules={"nightly_import": "61 2 * * *"},
                           config={"compress": {"profile": "maximal"}, "qc": {"severity": {"saturaton": "error"}},
                                   "storage": {"credentials": [{"prefix": "s3://x/", "options": {"secret": "s"}}]}})
    done = service.cli("zarrchive", "deploy", "register", str(path), "--json")
    assert done.returncode == 2
    error = json.loads(done.stdout)["error"]
    for words in ("timezone:", "schedules.nightly_import:", "config.compress.profile:", "config.qc.severity.saturaton",
                  "did you mean 'saturation'", "config.storage.credentials.0:", "options.secret would put a secret"):
        assert words in error, words
    assert json.loads(service.cli("zarrchive", "deploy", "list", "broken", "--json", check=True).stdout) == {}

    valid_but_no_pool = consortium_file(tmp_path, scheduler, name="nopool", work_pool="no-such-pool")
    done = service.cli("zarrchive", "deploy", "register", str(valid_but_no_pool), "--json")
    assert done.returncode == 2 and "work_pool: 'no-such-pool' does not exist" in json.loads(done.stdout)["error"]
    assert json.loads(service.cli("zarrchive", "deploy", "list", "nopool", "--json", check=True).stdout) == {}


# ---------------------------------------------------------------- runs staff start, and what they see


def test_an_ingest_run_through_the_api_takes_flat_parameters_and_says_what_it_published(service, tmp_path,
                                                                                         scheduler):
    service.cli("zarrchive", "deploy", "register", str(consortium_file(tmp_path, scheduler, name="flat")),
                check=True)
    sub = good_submission(tmp_path / "landing" / "lab1-cells")
    done = run(service, "ingest_submission/flat", submission=str(sub), create_archive=True)
    assert done.state.type.value == "COMPLETED", done.state
    assert done.name == "ingest lab1-cells"
    assert done.state.message.startswith("Published ZA000001 v1 at ") and "index.html" in done.state.message
    assert {"outcome:published", "accession:ZA000001"} <= set(done.tags)
    report = artifact(service, "za000001-publication")
    assert "a.ome.tif" in report and "published" in report and "index.html" in report

    # the same through the command staff type, a flat --param: the submission is unchanged
    cli = service.cli("prefect", "deployment", "run", "ingest_submission/flat", "--param", f"submission={sub}",
                      "--watch", "--watch-timeout", "240")
    assert cli.returncode == 0, cli.stdout + cli.stderr
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.client.schemas.sorting import FlowRunSort

    with service.client_settings(), get_client(sync_client=True) as client:
        [latest] = client.read_flow_runs(flow_run_filter=FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(
            any_=[deployment_id(service, "ingest_submission/flat")])), sort=FlowRunSort.START_TIME_DESC, limit=1)
    assert latest.state.is_completed() and latest.state.message.startswith("Unchanged: ZA000001 v1")
    assert "outcome:unchanged" in latest.tags

    # zarrchive's own command names the run after the submission as it creates it (before a worker starts it)
    started = json.loads(service.cli("zarrchive", "deploy", "run", "ingest_submission/flat", str(sub), "--param",
                                     "codec_profile=compat", "--json", check=True).stdout)
    with service.client_settings(), get_client(sync_client=True) as client:
        created = client.read_flow_run(started["id"])
    assert created.name == started["name"] == "ingest lab1-cells" and created.parameters["codec_profile"] == "compat"
    assert wait_for_run(service, created.id, 300).state.is_completed()


def test_a_run_that_publishes_nothing_is_failed_and_names_the_image(service, tmp_path, scheduler):
    service.cli("zarrchive", "deploy", "register", str(consortium_file(tmp_path, scheduler, name="honest")),
                check=True)
    sub = good_submission(tmp_path / "landing" / "with-empty")
    (sub / "empty.tif").write_bytes(b"")
    submission(sub, [{"path": "a.ome.tif"}, {"path": "empty.tif"}])
    done = run(service, "ingest_submission/honest", submission=str(sub), create_archive=True)
    assert done.state.type.value == "FAILED" and done.state.name == "Not published"
    assert done.state.message.startswith("Not published:") and "empty.tif" in done.state.message
    assert "outcome:not-published" in done.tags
    report = artifact(service, "za000001-publication")
    assert "empty.tif" in report and "failed" in report
    summary = artifact(service, "za000001-qc-summary")
    assert "1 image(s) or file(s) failed before QC" in summary and "empty.tif" in summary


def test_a_deployment_run_into_a_missing_archive_is_refused_unless_asked_to_create_it(service, tmp_path,
                                                                                       scheduler):
    service.cli("zarrchive", "deploy", "register", str(consortium_file(tmp_path, scheduler, name="typo")),
                check=True)
    sub = good_submission(tmp_path / "landing" / "s")
    done = run(service, "ingest_submission/typo", submission=str(sub), archive=str(tmp_path / "archiv"))
    assert done.state.type.value == "FAILED" and "Refused" in done.state.message
    assert "holds no zarrchive archive" in done.state.message and not (tmp_path / "archiv").exists()


def test_a_short_schedule_fires_and_its_run_completes(service, tmp_path):
    """Guards the stack: prefect 3.8's scheduler failed on every loop with SQLAlchemy 2.1 and never fired."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId
    from prefect.client.schemas.schedules import IntervalSchedule
    from prefect.deployments.runner import EntrypointType

    from zarrchive.flows.fixity import fixity_audit

    (tmp_path / "archive").mkdir()
    with service.client_settings():
        deployment = fixity_audit.to_deployment(
            name="every-few-seconds", parameters={"archive": str(tmp_path / "archive")}, work_pool_name=POOL,
            schedules=[IntervalSchedule(interval=dt.timedelta(seconds=5))], entrypoint_type=EntrypointType.MODULE_PATH)
        deployment_id = deployment.apply()
    deadline = time.monotonic() + 180
    completed = None
    with service.client_settings(), get_client(sync_client=True) as client:
        while time.monotonic() < deadline and completed is None:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[deployment_id])))
            completed = next((r for r in runs if r.auto_scheduled and r.state and r.state.is_completed()), None)
            time.sleep(2)
        client.delete_deployment(deployment_id)
    assert completed is not None, "no scheduled run was created and completed within 180 s"


# ---------------------------------------------------------------- the nightly import


def test_the_nightly_import_ingests_what_is_ready_and_only_that(service, tmp_path, scheduler):
    path = consortium_file(tmp_path, scheduler, name="nightly")
    service.cli("zarrchive", "deploy", "register", str(path), check=True)
    landing = tmp_path / "landing"
    for name, seed in (("ready-1", 1), ("ready-2", 2), ("done-before", 3), ("not-ready", 4)):
        good_submission(landing / name, seed)
    for name in ("ready-1", "ready-2", "done-before", "refused", "broken", "lab/nested"):
        (landing / name).mkdir(parents=True, exist_ok=True)
    good_submission(landing / "lab" / "nested", 5)
    (landing / "refused" / "submission.yaml").write_text("title: x\nlicense: CC0-1.0\nlicense: CC-BY-4.0\n")
    good_submission(landing / "broken", 6)
    (landing / "broken" / "a.ome.tif").write_bytes(b"II*\x00 truncated")
    os.symlink(tmp_path / "elsewhere", landing / "linked")
    (tmp_path / "elsewhere").mkdir()
    for name in ("ready-1", "ready-2", "done-before", "refused", "broken", "lab/nested"):
        (landing / name / "READY").touch()
    (tmp_path / "elsewhere" / "READY").touch()
    first = run(service, "ingest_submission/nightly", submission=str(landing / "done-before"), create_archive=True)
    assert first.state.is_completed()

    night = run(service, "nightly_import/nightly", timeout=600)
    assert night.state.type.value == "FAILED", night.state  # two submissions published nothing
    rows = {Path(r["submission"]).name: r for r in json.loads(artifact(service, "nightly-import-summary"))}
    assert {n: rows[n]["outcome"] for n in rows} == {
        "ready-1": "published", "ready-2": "published", "nested": "published", "done-before": "unchanged",
        "refused": "refused", "broken": "not-published", "linked": "refused"}
    assert "not-ready" not in rows
    assert "symbolic link" in rows["linked"]["reason"] and "given twice" in rows["refused"]["reason"]
    assert rows["ready-1"]["link"].endswith("index.html") and rows["ready-1"]["bytes"] > 0
    assert "broken" in night.state.message and "refused" in night.state.message

    again = run(service, "nightly_import/nightly", timeout=600)
    rows = {Path(r["submission"]).name: r for r in json.loads(artifact(service, "nightly-import-summary"))}
    assert {n for n, r in rows.items() if r["outcome"] == "skipped"} == {
        "ready-1", "ready-2", "nested", "done-before", "refused", "broken"}
    assert rows["linked"]["outcome"] == "refused" and again.state.type.value == "FAILED"  # never followed
    manifests = [p.relative_to(tmp_path / "archive").parts for p in (tmp_path / "archive").rglob("manifest.json")]
    assert len(manifests) == 4 and len({m[0] for m in manifests}) == 4  # four studies, nothing published twice


# ---------------------------------------------------------------- curator approval


def test_approval_pauses_the_run_until_a_curator_decides_and_records_who(service, tmp_path, scheduler):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    service.cli("zarrchive", "deploy", "register", str(consortium_file(tmp_path, scheduler, name="curated",
                                                                       approval=True)), check=True)
    sub = good_submission(tmp_path / "landing" / "to-approve")
    with service.client_settings():
        started = run_deployment("ingest_submission/curated", parameters={"submission": str(sub),
                                                                          "create_archive": True}, timeout=0)
    paused = wait_for_run(service, started.id, 300, until=lambda r: r.state and r.state.is_paused())
    assert paused.state.is_paused()
    with service.client_settings(), get_client(sync_client=True) as client:
        client.resume_flow_run(started.id, run_input={"approve": True, "curator": "Ada Lovelace",
                                                      "reason": "metadata checked"})
    done = wait_for_run(service, started.id, 300)
    assert done.state.is_completed(), done.state
    crate = json.loads(next((tmp_path / "archive").rglob("ro-crate-metadata.json")).read_text())
    approval = next(n for n in crate["@graph"] if n.get("zarrchive:stage") == "approval")
    assert approval["zarrchive:facts"]["curator"] == "Ada Lovelace"
    assert approval["zarrchive:facts"]["decision"] == "approved"


def test_a_rejected_or_undecided_version_is_not_published(service, tmp_path, scheduler):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    service.cli("zarrchive", "deploy", "register", str(consortium_file(
        tmp_path, scheduler, name="strict", approval=True,
        config={"cluster": {"address": scheduler}, "staging": {"work": WORK},
                "publish": {"on_image_error": "block_submission", "approval_timeout_seconds": 8}})), check=True)
    with service.client_settings():
        rejected = run_deployment("ingest_submission/strict", parameters={
            "submission": str(good_submission(tmp_path / "landing" / "r")), "create_archive": True}, timeout=0)
    wait_for_run(service, rejected.id, 300, until=lambda r: r.state and r.state.is_paused())
    with service.client_settings(), get_client(sync_client=True) as client:
        client.resume_flow_run(rejected.id, run_input={"approve": False, "curator": "Grace", "reason": "no ORCID"})
    done = wait_for_run(service, rejected.id, 300)
    assert done.state.type.value == "FAILED" and "rejected by Grace: no ORCID" in done.state.message
    assert "outcome:rejected" in done.tags

    undecided = run(service, "ingest_submission/strict", submission=str(good_submission(tmp_path / "landing" / "u",
                                                                                        seed=9)))
    assert undecided.state.type.value == "FAILED" and "no curator decided" in undecided.state.message
    assert not list((tmp_path / "archive").rglob("manifest.json"))


# ---------------------------------------------------------------- credentials by reference


def test_a_worker_reads_s3_credentials_from_referenced_variables_and_secret_blocks(service, tmp_path, scheduler,
                                                                                   s3_endpoint):
    import fsspec

    from prefect.blocks.system import Secret

    endpoint = fsspec.config.conf["s3"]["endpoint_url"]
    landing_bucket, archive_bucket = s3_endpoint(), s3_endpoint()
    fs = fsspec.filesystem("s3", endpoint_url=endpoint, key="testing", secret="testing")
    local = good_submission(tmp_path / "local-sub")
    for name in ("submission.yaml", "a.ome.tif"):
        fs.put(str(local / name), f"{landing_bucket}/incoming/s1/{name}")
    with service.client_settings():
        Secret(value={"key": "testing", "secret": "testing"}).save("acme-archive-s3", overwrite=True)
    credentials = [
        {"prefix": f"s3://{landing_bucket}/", "env": {"key": "ZARRCHIVE_TEST_S3_KEY",
                                                      "secret": "ZARRCHIVE_TEST_S3_SECRET"},
         "options": {"endpoint_url": endpoint}},
        {"prefix": f"s3://{archive_bucket}/", "secret_block": "acme-archive-s3", "options": {"endpoint_url": endpoint}},
    ]
    path = consortium_file(tmp_path, scheduler, name="s3", landing_zone=f"s3://{landing_bucket}/incoming",
                           archive=f"s3://{archive_bucket}/archive",
                           config={"cluster": {"address": scheduler}, "staging": {"work": WORK},
                                   "storage": {"credentials": credentials}})
    service.cli("zarrchive", "deploy", "register", str(path), check=True)
    done = run(service, "ingest_submission/s3", submission=f"s3://{landing_bucket}/incoming/s1", create_archive=True)
    assert done.state.is_completed(), done.state
    assert fs.exists(f"{archive_bucket}/archive/ZA000001/v1/manifest.json")
    from prefect.client.orchestration import get_client

    with service.client_settings(), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("ingest_submission/s3")
    stored = json.dumps(deployment.model_dump(mode="json"))
    assert "testing" not in stored.replace(f"{landing_bucket}", "").replace(f"{archive_bucket}", "")


def test_the_staff_deployment_registers_from_any_folder_with_the_readme_command_and_runs(service, tmp_path,
                                                                                        scheduler):
    """deployments/prefect.yaml, registered as its header says, from a folder that is not the checkout."""
    root = Path(__file__).resolve().parent.parent
    service.cli("prefect", "work-pool", "create", "zarrchive", "--type", "process", "--overwrite", check=True)
    done = subprocess.run([str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deploy", "--prefect-file",
                           str(root / "deployments" / "prefect.yaml"), "--all", "--pool", POOL],
                          cwd=tmp_path, env=service.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"cluster": {"address": scheduler}, "staging": {"work": WORK}}))
    sub = good_submission(tmp_path / "staff-sub")
    result = run(service, "ingest_submission/ingest", submission=str(sub), archive=str(tmp_path / "archive"),
                 config=str(config), codec_profile="max", create_archive=True)
    assert result.state.is_completed(), result.state
    manifest = json.loads(next((tmp_path / "archive").rglob("manifest.json")).read_text())
    assert manifest["images"][0]["status"] == "published"


# ---------------------------------------------------------------- what staff see in the UI (headless Chromium)

def shot(page, name: str) -> None:
    page.screenshot(path=str(SESSION_DIR / f"ui-{name}.png"), full_page=True)


def test_the_ui_shows_the_consortium_its_form_a_failed_run_and_the_publication(service, tmp_path, scheduler,
                                                                               browser):
    service.cli("zarrchive", "deploy", "register", str(consortium_file(tmp_path, scheduler, name="visible")),
                check=True)
    sub = good_submission(tmp_path / "landing" / "visible-broken")
    (sub / "empty.tif").write_bytes(b"")
    submission(sub, [{"path": "a.ome.tif"}, {"path": "empty.tif"}])
    failed = run(service, "ingest_submission/visible", submission=str(sub), create_archive=True)
    assert failed.state.is_failed()
    page = browser.new_page()

    page.goto(f"{service.ui}/deployments", wait_until="networkidle")
    page.get_by_placeholder("Search deployments").fill("visible")  # other tests' consortia are listed too
    page.get_by_text("visible", exact=True).nth(3).wait_for(timeout=30000)
    page.wait_for_timeout(1000)
    shot(page, "deployments")
    assert page.get_by_text("visible", exact=True).count() == 4  # ingest, nightly import, fixity, embargo release
    listed = page.inner_text("body")
    assert all(flow in listed for flow in ("ingest_submission", "nightly_import", "fixity_audit",
                                           "release_embargoed"))
    assert "At 02:00 AM every day" in listed  # the nightly import's schedule

    page.goto(f"{service.ui}/deployments/deployment/{deployment_id(service, 'ingest_submission/visible')}/run",
              wait_until="networkidle")
    page.get_by_text("codec_profile", exact=False).first.wait_for(timeout=30000)
    shot(page, "run-form")
    body = page.inner_text("body")
    for field in ("submission", "archive", "config", "codec_profile", "create_archive", "approval"):
        assert field in body, field
    choice = page.locator("button.p-select-button__control", has_text="from configuration")
    choice.focus()
    page.keyboard.press("ArrowDown")  # opens the list of the profile's choices: a choice, not free text
    options = page.locator(".p-select-option")
    options.first.wait_for(timeout=10000)
    assert [o.strip() for o in options.all_inner_texts()] == ["from configuration", "compat", "max", "fixed"]
    shot(page, "run-form-codec-profile")
    options.filter(has_text="max").click()
    page.locator("button.p-select-button__control .p-select-button__value", has_text="max").first.wait_for(
        timeout=10000)  # chosen

    page.goto(f"{service.ui}/runs/flow-run/{failed.id}", wait_until="networkidle")
    page.get_by_text("ingest visible-broken").first.wait_for(timeout=30000)
    badge = page.locator(".state-badge").first
    badge.wait_for(timeout=30000)
    shot(page, "failed-run")
    assert badge.inner_text().strip() == "Not published"
    colour = badge.evaluate("e => getComputedStyle(e).backgroundColor")
    red, green, _blue = (int(v) for v in colour[colour.index("(") + 1:].rstrip(")").split(",")[:3])
    assert red > green, f"the failed run's badge is not red: {colour}"

    page.goto(f"{service.ui}/artifacts/artifact/{artifact_id(service, 'za000001-publication')}",
              wait_until="networkidle")
    page.get_by_text("empty.tif").first.wait_for(timeout=30000)
    shot(page, "publication-artifact")
    assert "Not published" in page.inner_text("body")
