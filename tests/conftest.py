"""Shared test fixtures: one Dask LocalCluster and one Prefect test server for the whole session."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

from zarrchive.config import Settings, load_settings

# Prefect's persisted task results (the conversion cache) live in a folder of this session only,
# set before Prefect reads its settings.
SESSION_DIR = Path(tempfile.mkdtemp(prefix="zarrchive-tests-"))
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(SESSION_DIR / "prefect-results")
os.environ["XDG_CACHE_HOME"] = str(SESSION_DIR / "cache")  # the default work area of runs without a config
os.environ["XDG_DATA_HOME"] = str(SESSION_DIR / "data")  # the default catalogs of object-store archives
WORK = str(SESSION_DIR / "work")  # the conversion work area of every flow run in this session


def pytest_sessionfinish(session, exitstatus):
    """Leave nothing behind: the session's folder goes (its services were stopped with their fixtures), unless
    ZARRCHIVE_KEEP_TEST_FILES is set (to look at what a failed run wrote)."""
    if not os.environ.get("ZARRCHIVE_KEEP_TEST_FILES"):
        shutil.rmtree(SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def scheduler() -> str:
    """Address of a real Dask distributed LocalCluster (2 worker processes) shared by the session."""
    from distributed import LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                           host="127.0.0.1", memory_limit="3GiB")
    yield cluster.scheduler_address
    cluster.close()


@pytest.fixture(scope="session")
def prefect_server():
    """A real temporary Prefect API server (SQLite) for every flow test of the session."""
    import os

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline: no telemetry attempts
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture()
def settings(scheduler: str) -> Settings:
    return load_settings(overrides={"cluster": {"address": scheduler}})


@pytest.fixture()
def config_file(tmp_path: Path, scheduler: str):
    """Write a config YAML that uses the session cluster; extra sections are merged in."""

    def write(**sections) -> str:
        data = {"cluster": {"address": scheduler}, "staging": {"work": WORK}, **sections}
        if "staging" in sections:
            data["staging"] = {"work": WORK, **sections["staging"]}
        path = tmp_path / f"config-{len(list(tmp_path.glob('config-*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(data))
        return str(path)

    return write


@pytest.fixture(scope="session")
def demo(tmp_path_factory, scheduler, prefect_server):
    """The demo submission ingested once, through the flow, for the assertions of several modules.

    Returns (publication, submission folder, archive folder, config path, sha256 of every original before).
    """
    import hashlib

    from zarrchive.demo import make_sample_submission
    from zarrchive.flows.ingest import ingest

    root = tmp_path_factory.mktemp("demo")
    cfg = root / "config.yaml"
    cfg.write_text(yaml.safe_dump({"cluster": {"address": scheduler}, "staging": {"work": WORK}}))
    sub = make_sample_submission(root / "submission")
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sub.rglob("*") if p.is_file()}
    pub = ingest(submission=str(sub), archive=str(root / "archive"), config=str(cfg))
    return pub, sub, root / "archive", str(cfg), before


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 HTTP endpoint (moto server) on loopback, with fsspec's s3 defaults pointed at it.

    Yields a function that creates a fresh bucket and returns its name.
    """
    import socket
    import uuid

    import boto3
    import fsspec
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    saved = fsspec.config.conf.get("s3")
    fsspec.config.conf["s3"] = {"endpoint_url": url, "key": "testing", "secret": "testing"}
    client = boto3.client("s3", endpoint_url=url, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")

    def new_bucket() -> str:
        name = f"zarrchive-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=name)
        return name

    yield new_bucket
    if saved is None:
        fsspec.config.conf.pop("s3", None)
    else:
        fsspec.config.conf["s3"] = saved
    server.stop()


@pytest.fixture()
def browser(tmp_path):
    """Debian's Chromium, headless, with a fresh profile, driven by Playwright (which downloads no browser)."""
    from playwright.sync_api import sync_playwright

    from browser import CHROMIUM_ARGS, chromium

    executable = chromium()

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "chromium-profile"),
                                                       executable_path=executable, args=CHROMIUM_ARGS,
                                                       viewport={"width": 1400, "height": 1000})
        yield context
        context.close()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server (Debian's package) on loopback for the session; yields its SQLAlchemy URL."""
    import shutil

    from postgres import Postgres

    folder = Path(tempfile.mkdtemp(prefix="zarrchive-pg-"))  # outside pytest's root-only folders
    os.chmod(folder, 0o755)
    server = Postgres(folder / "cluster")
    yield server.url
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)
