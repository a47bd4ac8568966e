"""The run's Dask cluster: a LocalCluster per run, an existing scheduler, or Slurm jobs; its dashboard."""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.request
from pathlib import Path

import dask.array as da
import pytest
import yaml
from distributed import Client

from zarrchive.cluster import client_for, cluster_for_run, local_sizes, slurm_cluster, view_cluster
from zarrchive.config import ClusterSettings, config_dir, load_settings
from zarrchive.errors import ConfigError


def test_a_local_cluster_is_started_for_the_run_and_closed_after():
    settings = ClusterSettings(n_workers=1, threads_per_worker=1, memory_limit="1GiB")
    with cluster_for_run(settings) as address:
        with client_for(address) as client:
            assert len(client.scheduler_info()["workers"]) == 1
            assert client.compute(da.ones((100, 100), chunks=50).sum()).result() == 10_000
    with pytest.raises(OSError):
        Client(address, timeout="2s")


def test_an_existing_scheduler_is_used_and_left_running(scheduler):
    with cluster_for_run(ClusterSettings(address=scheduler, threads_per_worker=1, memory_limit="auto")) as address:
        assert address == scheduler
    with client_for(scheduler) as client:
        assert client.compute(da.arange(10, chunks=5).sum()).result() == 45
        imported = client.run(lambda: sorted(m for m in __import__("sys").modules if m.startswith("zarrchive.tasks")))
        assert all("zarrchive.tasks.compress" in mods for mods in imported.values()) and len(imported) == 2


# --- LocalCluster sized to the machine, memory limits and thresholds -----------------------------------------

def test_the_local_cluster_is_sized_to_the_machine_with_explicit_memory_limits():
    from dask.system import CPU_COUNT
    from distributed.system import MEMORY_LIMIT

    auto = load_settings().cluster
    assert auto.kind == "local"
    assert local_sizes(auto) == (CPU_COUNT, MEMORY_LIMIT // CPU_COUNT)
    two_threads = auto.model_copy(update={"threads_per_worker": 2})
    assert local_sizes(two_threads)[0] == max(1, CPU_COUNT // 2)
    assert local_sizes(auto.model_copy(update={"n_workers": 3, "memory_limit": "2GiB"})) == (3, 2 * 2**30)


def test_workers_and_scheduler_get_the_configured_memory_thresholds_and_allowed_failures():
    settings = load_settings(overrides={"cluster": {
        "n_workers": 1, "memory_limit": "768MiB", "allowed_failures": 1,
        "worker_memory": {"target": False, "spill": 0.65, "pause": 0.75, "terminate": 0.9}}}).cluster
    with cluster_for_run(settings) as address, Client(address, set_as_default=False) as client:
        def thresholds(dask_worker):
            memory = dask_worker.memory_manager
            return (memory.memory_limit, memory.memory_target_fraction, memory.memory_spill_fraction,
                    memory.memory_pause_fraction)

        assert list(client.run(thresholds).values()) == [(768 * 2**20, False, 0.65, 0.75)]
        terminate = client.run(lambda dask_worker: dask_worker.memory_manager.memory_terminate_fraction, nanny=True)
        assert list(terminate.values()) == [0.9]
        assert client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures) == 1


@pytest.mark.parametrize("cluster, problem", [
    ({"memory_limit": "plenty"}, "cluster.memory_limit"),
    ({"worker_memory": {"pause": 0.5}}, "spill (0.7) must not be above pause (0.5)"),
    ({"address": "tcp://somewhere:8786", "slurm": {"cores": 4, "memory": "8GiB"}}, "not both"),
    ({"slurm": {"cores": 4, "memory": "8GiB", "queue": "cpu"}}, "cluster.slurm.queue: Extra inputs"),
    ({"slurm": {"cores": 6, "memory": "8GiB", "processes": 4}}, "multiple of processes"),
    ({"slurm": {"cores": 4, "memory": "lots"}}, "cluster.slurm.memory"),
    ({"slurm": {"cores": 4, "memory": "8GiB", "walltime": "4h"}}, "cluster.slurm.walltime"),
    ({"slurm": {"cores": 4, "memory": "8GiB", "jobs": {"minimum": 3, "maximum": 2}}}, "minimum (3) is above"),
])
def test_cluster_configuration_errors_name_the_key(cluster, problem):
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        load_settings(overrides={"cluster": cluster})


# --- Slurm through dask-jobqueue -----------------------------------------------------------------------------

def test_the_example_slurm_yaml_becomes_the_worker_job_script(tmp_path):
    settings = load_settings(config_dir() / "examples" / "slurm.yaml", overrides={"cluster": {"slurm": {
        "log_directory": str(tmp_path / "logs"),  # created when the cluster is built
        "interface": "lo"}}}).cluster  # the example's ib0 is not on this machine
    assert settings.kind == "slurm"
    cluster = slurm_cluster(settings)  # not scaled: nothing is submitted
    try:
        script = cluster.job_script()
        assert not cluster.workers
    finally:
        cluster.close()
    header = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert {"#SBATCH -J zarrchive-worker", "#SBATCH -p cpu", "#SBATCH -A imaging-archive",
            "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32G", "#SBATCH -t 04:00:00", "#SBATCH --qos=normal",
            f"#SBATCH -e {tmp_path}/logs/zarrchive-worker-%J.err"} <= set(header)
    lines = script.splitlines()
    command = next(line for line in lines if "distributed.cli.dask_worker" in line)
    assert command.startswith("/shared/zarrchive/venv/bin/python -m distributed.cli.dask_worker tcp://127.0.0.1:")
    for option in ("--nthreads 4", "--memory-limit 16.00GiB", "--nworkers 2", "--nanny",
                   "--local-directory $TMPDIR", "--interface lo"):
        assert option in command
    prologue = lines[lines.index(header[-1]) + 1:lines.index(command)]
    assert prologue == [
        "export DASK_DISTRIBUTED__WORKER__MEMORY__TARGET=0.6", "export DASK_DISTRIBUTED__WORKER__MEMORY__SPILL=0.7",
        "export DASK_DISTRIBUTED__WORKER__MEMORY__PAUSE=0.8", "export DASK_DISTRIBUTED__WORKER__MEMORY__TERMINATE=0.9",
        "module load python/3.11", "source /shared/zarrchive/venv/bin/activate"]


FAKE_SBATCH = """#!/usr/bin/env bash
# Stands in for Slurm: runs the job script here, in the background, in a process group of its own.
set -e
here="$(dirname "$0")"
id=$(( $(ls "$here"/job-*.sh 2>/dev/null | wc -l) + 1 ))
cp "$1" "$here/job-$id.sh"
setsid bash "$here/job-$id.sh" > "$here/job-$id.log" 2>&1 < /dev/null &
echo $! > "$here/job-$id.pid"
echo "Submitted batch job $id"
"""
FAKE_SCANCEL = """#!/usr/bin/env bash
here="$(dirname "$0")"
echo "$1" >> "$here/cancelled"
kill -TERM -- -"$(cat "$here/job-$1.pid")" 2>/dev/null || true
"""


def test_a_slurm_cluster_submits_its_jobs_runs_the_work_and_cancels_them(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("scancel", FAKE_SCANCEL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = tmp_path / "slurm.yaml"
    config.write_text(yaml.safe_dump({"cluster": {"slurm": {
        "cores": 1, "memory": "1GiB", "walltime": "00:10:00", "jobs": 1, "interface": "lo",
        "python": sys.executable, "local_directory": str(tmp_path / "spill")}}}))
    with cluster_for_run(load_settings(config).cluster) as address, client_for(address) as client:
        client.wait_for_workers(1, timeout=90)
        assert client.compute(da.ones((64, 64), chunks=16).sum()).result() == 64 * 64
        [worker] = client.scheduler_info()["workers"].values()
        assert worker["memory_limit"] == 2**30 and worker["nthreads"] == 1
        assert list(client.run(lambda: os.environ["DASK_DISTRIBUTED__WORKER__MEMORY__TERMINATE"]).values()) == ["0.95"]
    assert (bin_dir / "job-1.sh").exists() and (bin_dir / "cancelled").read_text().split() == ["1"]
    with pytest.raises(OSError):
        Client(address, timeout="2s")


def test_a_slurm_config_without_dask_jobqueue_is_a_configuration_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)  # as if not installed
    settings = ClusterSettings(threads_per_worker=1, memory_limit="auto", slurm={"cores": 2, "memory": "4GiB"})
    with pytest.raises(ConfigError, match=r"zarrchive\[slurm\]"):
        slurm_cluster(settings)


# --- the dashboard as a Prefect artifact ---------------------------------------------------------------------

def test_the_cluster_dashboard_is_served_and_described():
    with cluster_for_run(ClusterSettings(n_workers=1, threads_per_worker=1, memory_limit="1GiB")) as address:
        view = view_cluster(address)
        assert view.dashboard.startswith("http://127.0.0.1:") and view.dashboard.endswith("/status")
        assert (view.workers, view.threads, view.memory) == (1, 1, 2**30)
        assert "1 workers, 1 threads, 1.00 GiB" in view.describe()
        with urllib.request.urlopen(view.dashboard, timeout=30) as page:
            assert page.status == 200 and b"Dask" in page.read()


def test_an_ingest_run_shows_its_dask_dashboard_as_an_artifact(demo, scheduler):
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    pub, *_ = demo
    crate = json.loads((Path(pub.version_uri) / "ro-crate-metadata.json").read_text())
    [run_id] = {n["zarrchive:prefectFlowRun"] for n in crate["@graph"] if n.get("@type") == "CreateAction"}

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]), key=ArtifactFilterKey(any_=["dask-dashboard"])))

    [artifact] = asyncio.run(artifacts())
    link = view_cluster(scheduler).dashboard
    assert artifact.type == "markdown" and artifact.data == f"[Dask dashboard]({link})"
    assert f"Dask scheduler {scheduler}: 2 workers" in artifact.description
    with urllib.request.urlopen(link, timeout=30) as page:  # usable while the cluster runs
        assert page.status == 200
