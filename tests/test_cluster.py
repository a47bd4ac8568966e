"""The run's Dask cluster: a LocalCluster per run, an existing scheduler, or Slurm jobs; its dashboard; worker death."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import yaml
import zarr
from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin

from zarrchive.cluster import client_for, cluster_for_run, local_sizes, slurm_cluster, view_cluster
from zarrchive.config import ClusterSettings, config_dir, load_settings
from zarrchive.errors import ClusterError, ConfigError


def test_a_local_cluster_is_started_for_the_run_and_closed_after():
    settings = ClusterSettings(n_workers=1, threads_per_worker=1, memory_limit="1GiB")
    with cluster_for_run(settings) as address:
        with client_for(address) as client:
            assert len(client.scheduler_info()["workers"]) == 1
            assert client.compute(da.ones((100, 100), chunks=50).sum()).result() == 10_000
    with pytest.raises(OSError):
        Client(address, timeout="2s", set_as_default=False)


@pytest.mark.parametrize("configured, default, in_this_process", [
    (None, True, False), (None, False, True), (True, False, False), (False, True, True)])
def test_a_local_cluster_s_workers_are_processes_or_threads_as_configured_else_as_the_caller_says(
        configured, default, in_this_process):
    settings = ClusterSettings(n_workers=2, threads_per_worker=1, memory_limit="1GiB", processes=configured)
    with cluster_for_run(settings, dashboard=False, processes=default) as address:
        with client_for(address) as client:
            pids = set(client.run(os.getpid).values())
            workers = client.scheduler_info(n_workers=-1)["workers"].values()
            assert client.submit(sum, [1, 2]).result() == 3
    assert (pids == {os.getpid()}) is in_this_process
    # in this process, one worker with both threads and both limits: it measures the whole process's memory
    assert sorted((w["nthreads"], w["memory_limit"]) for w in workers) == (
        [(2, 2 << 30)] if in_this_process else [(1, 1 << 30), (1, 1 << 30)])
    assert len(pids) == (1 if in_this_process else 2)
    with pytest.raises(OSError):
        Client(address, timeout="2s", set_as_default=False)


def test_zarrchive_convert_works_in_its_own_threads_unless_configured(tmp_path, monkeypatch):
    from builders import ome_tiff, random_image
    from zarrchive import cluster
    from zarrchive.standalone import convert_to_ome_zarr

    seen = []
    real = cluster.local_cluster
    monkeypatch.setattr(cluster, "local_cluster", lambda *a: seen.append(a[2]) or real(*a))
    src = ome_tiff(tmp_path / "a.ome.tif", random_image((2, 64, 64), "uint16"), axes="ZYX")
    for n, configured in enumerate([None, True]):
        settings = load_settings(overrides={"cluster": {"n_workers": 1, "processes": configured}})
        convert_to_ome_zarr(str(src), str(tmp_path / f"out{n}.ome.zarr"), settings)
        assert zarr.open_array(str(tmp_path / f"out{n}.ome.zarr" / "0"), mode="r").shape[-3:] == (2, 64, 64)
    assert seen == [False, True]


RUN_WITH_A_CLUSTER = """
import sys
from prefect import flow
from zarrchive.cluster import cluster_for_run
from zarrchive.config import load_settings

@flow(name="cluster-logs")
def run(level: str) -> None:
    settings = load_settings(None, overrides={"cluster": {"n_workers": 1, "log_level": level}})
    with cluster_for_run(settings.cluster, dashboard=False) as address:
        from zarrchive.cluster import client_for
        with client_for(address) as client:
            client.submit(sum, [1, 2]).result()
    print("END OF RUN", level, flush=True)

if __name__ == "__main__":
    run(sys.argv[1])
"""


@pytest.mark.parametrize("level, quiet", [("warning", True), ("info", False)])
def test_a_flow_run_s_log_holds_no_dask_info_lines_unless_configured(tmp_path, level, quiet):
    """Dask's per-connection INFO lines stay out of a run's log in a flow (as a worker runs it), not only on the
    command line; the setting turns them back on."""
    import subprocess

    script = tmp_path / "run.py"
    script.write_text(RUN_WITH_A_CLUSTER)
    env = {k: v for k, v in os.environ.items() if k != "DASK_LOGGING__DISTRIBUTED"}
    env["PREFECT_LOGGING_LEVEL"] = "INFO"
    done = subprocess.run([sys.executable, str(script), level], env=env, capture_output=True, text=True,
                          timeout=300)
    log = done.stdout + done.stderr
    assert f"END OF RUN {level}" in log, log[-3000:]
    dask_lines = [line for line in log.splitlines() if "distributed." in line and "INFO" in line]
    assert (not dask_lines) if quiet else len(dask_lines) > 5, dask_lines[:10]


def test_an_existing_scheduler_is_used_and_left_running(scheduler):
    with cluster_for_run(ClusterSettings(address=scheduler, threads_per_worker=1, memory_limit="auto")) as address:
        assert address == scheduler
    with client_for(scheduler) as client:
        assert client.compute(da.arange(10, chunks=5).sum()).result() == 45
        imported = client.run(lambda: sorted(m for m in __import__("sys").modules if m.startswith("zarrchive.")))
        assert all("zarrchive.pixels.passes" in mods for mods in imported.values()) and len(imported) == 2


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
        "export MALLOC_TRIM_THRESHOLD_=268435456", "export MALLOC_MMAP_THRESHOLD_=33554432",  # 16 GiB workers
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
        # the job's nanny started its worker process with the allocator thresholds for a 1 GiB worker
        assert list(client.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"),
                                        os.environ.get("MALLOC_MMAP_THRESHOLD_"))).values()) == [
            (str(128 << 20), str(32 << 20))]
    assert (bin_dir / "job-1.sh").exists() and (bin_dir / "cancelled").read_text().split() == ["1"]
    with pytest.raises(OSError):
        Client(address, timeout="2s", set_as_default=False)


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
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    pub, *_ = demo
    crate = json.loads((Path(pub.version_uri) / "ro-crate-metadata.json").read_text())
    [run_id] = {n["zarrchive:prefectFlowRun"] for n in crate["@graph"] if n.get("@type") == "CreateAction"}

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))

    # keyed by the run's name (ingest <folder>), so one run's dashboard does not hide another's
    [artifact] = [a for a in asyncio.run(artifacts()) if a.key and a.key.endswith("-dask-dashboard")]
    assert artifact.key.startswith("ingest-")
    link = view_cluster(scheduler).dashboard
    assert artifact.type == "markdown" and artifact.data == f"[Dask dashboard]({link})"
    assert f"Dask scheduler {scheduler}: 2 workers" in artifact.description
    with urllib.request.urlopen(link, timeout=30) as page:  # usable while the cluster runs
        assert page.status == 200


# --- a worker that dies mid-image ----------------------------------------------------------------------------

# Where the victim dies: inside the shard writer, as a shard is put in place: its bytes are in the temporary file
# and not yet renamed; the task's earlier writes are in place, the rest of the image is not.
DYING_WRITE = "zarrchive.pixels.shards._publish"


class DieInFirstWrite(WorkerPlugin):
    """The first write into a ``/compress/`` store on any worker of the cluster records its process id in
    ``marker`` and then waits (to be killed); later writes, and restarted workers, go on normally."""

    name = "zarrchive-test-die-in-first-write"
    idempotent = True

    def __init__(self, marker: str):
        self.marker = marker

    def setup(self, worker) -> None:
        import importlib

        module_name, _, attr = DYING_WRITE.rpartition(".")
        module = importlib.import_module(module_name)
        original, marker = getattr(module, attr), self.marker

        def dying(partial, target):
            if "/compress/" in target and "/c/" in target.replace(os.sep, "/"):
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    return original(partial, target)
                assert os.path.getsize(partial) > 0
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                time.sleep(120)  # killed long before this ends
            return original(partial, target)

        setattr(module, attr, dying)


def smooth(shape):
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:shape[-2], 0:shape[-1]]
    base = (np.sin(yy / 9.0) + np.cos(xx / 7.0) + 2) * 800
    return (np.broadcast_to(base, shape) + rng.normal(0, 5, shape)).clip(0, 65535).astype(np.uint16)


def prepared_image(tmp_path: Path, scheduler: str):
    """A converted, pyramided 2-channel z-stack in small chunks (level 0: ten compress tasks of 8 shards)."""
    from builders import ome_tiff
    from zarrchive.records import FileRecord
    from zarrchive.tasks.convert import convert_file
    from zarrchive.tasks.pyramid import build_pyramid

    settings = load_settings()
    data = smooth((2, 2, 140, 100))
    path = ome_tiff(tmp_path / "x.ome.tif", data, "CZYX", {"x": 0.5, "y": 0.5, "z": 1.0}, ["a", "b"])
    record = FileRecord(path="x.ome.tif", source_uri=str(path), staged_path=str(path), size=path.stat().st_size,
                        sha256=hashlib.sha256(path.read_bytes()).hexdigest(), kind="image")
    small = settings.convert.model_copy(update={"chunk_xy": 16})
    [image] = convert_file(record, None, str(tmp_path / "work"), small)
    return build_pyramid(image, settings.pyramid), data, record


def compress(image, record, work: Path, scheduler: str):
    """The compress stage on ``image`` (shards of 2x2 chunks) into ``work``, as the flow calls it."""
    from zarrchive.tasks.compress import compress_image

    settings = load_settings().compress.model_copy(update={"shard_xy": 32, "shard_z": 1, "profile": "fixed"})
    return compress_image(image, record, str(work), settings, scheduler)


def compress_while_a_worker_dies(tmp_path: Path, allowed_failures: int):
    """Compress a prepared image on a cluster of its own (2 workers) while the first worker to write a shard is
    killed (SIGKILL) mid-write. Return the image, its pixels, the report or error, the store, and the report of
    the same compression undisturbed (None after an error)."""
    cluster = ClusterSettings(n_workers=2, threads_per_worker=1, memory_limit="1GiB",
                              allowed_failures=allowed_failures)
    with cluster_for_run(cluster) as address:
        image, data, record = prepared_image(tmp_path, address)
        marker = tmp_path / "victim.pid"
        with Client(address, set_as_default=False) as client:
            pids = set(client.run(os.getpid).values())
            client.register_plugin(DieInFirstWrite(str(marker)))
            killed: list[int] = []

            def kill_the_victim():
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and not (marker.exists() and marker.read_text()):
                    time.sleep(0.02)
                pid = int(marker.read_text())
                assert pid in pids
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

            killer = threading.Thread(target=kill_the_victim, daemon=True)
            killer.start()
            try:
                outcome = compress(image, record, tmp_path / "work", address)
            except ClusterError as exc:
                outcome = exc
            killer.join(timeout=130)
            assert killed, "no worker was killed"
            client.wait_for_workers(2, timeout=60)  # the nanny started a new worker process
            assert killed[0] not in set(client.run(os.getpid).values())
        undisturbed = None if isinstance(outcome, Exception) else \
            compress(image, record, tmp_path / "undisturbed", address)
    return image, data, outcome, tmp_path / "work" / "compress", undisturbed


@pytest.fixture(params=["whole_image", "stream_region"])
def pass_kind(request, monkeypatch):
    """The pass a small image takes: its whole pass in one task, or streamed region by region (as a larger one)."""
    if request.param == "stream_region":
        from zarrchive.tasks import compress

        monkeypatch.setattr(compress, "_level0_bytes", lambda image: 1 << 62)
    return request.param


def test_work_lost_with_a_killed_worker_is_redone_and_the_image_is_bit_exact(tmp_path, pass_kind):
    from zarrchive.ngff import validate_image
    from zarrchive.pixels.blocks import chunk_slices, downsample_mean

    from zarrchive.records import factors

    image, data, report, work, undisturbed = compress_while_a_worker_dies(tmp_path, allowed_failures=3)
    assert not isinstance(report, Exception), report
    above = data
    for level, below in zip(image.levels, image.levels[1:] + (None,)):
        written = zarr.open_array(f"{report.store}/{level.path}", mode="r")[...]
        np.testing.assert_array_equal(written, above)
        if below is not None:
            above = downsample_mean(written, tuple(i for i, f in enumerate(factors(level, below)) if f == 2))
    assert report.chunks_verified == sum(len(chunk_slices(l.shape, l.chunks)) for l in image.levels)
    digests = "".join(hashlib.sha256(np.ascontiguousarray(data[r]).tobytes()).hexdigest()
                      for r in chunk_slices(image.levels[0].shape, image.levels[0].chunks))
    assert report.level0_sha256 == hashlib.sha256(digests.encode()).hexdigest()
    assert validate_image(report.store) == []
    # the dead worker's unfinished write leaves nothing behind: the store is the one an undisturbed run writes
    picture = [Path(report.thumbnail).name] if report.thumbnail else []  # a small image's, beside its store
    assert sorted(p.name for p in work.iterdir()) == sorted([Path(report.store).name, *picture])
    assert report.thumbnail in (None, f"{report.store}.png")
    assert not [p for p in work.rglob("*") if p.is_file() and p.name.endswith(".partial")]
    assert (report.store_sha256, report.bytes_out) == (undisturbed.store_sha256, undisturbed.bytes_out)


def test_an_image_whose_worker_dies_beyond_allowed_failures_fails_cleanly(tmp_path, pass_kind):
    _image, _data, outcome, work, _ = compress_while_a_worker_dies(tmp_path, allowed_failures=0)
    assert isinstance(outcome, ClusterError)
    assert "died 1 time(s) while running" in str(outcome) and pass_kind in str(outcome)
    # nothing was reported, and nothing half-written is left: the store was built under a temporary name
    assert list(work.iterdir()) == []


def test_stages_in_threads_leave_dask_s_global_scheduler_alone(scheduler):
    """Stages run in Prefect's worker threads at the same time; none may leave the process asking for a
    distributed client (dask's global ``scheduler`` option) once it is done."""
    from concurrent.futures import ThreadPoolExecutor

    import dask

    before = dask.config.get("scheduler", None)

    def stage(delay: float) -> int:
        with client_for(scheduler) as client:
            time.sleep(delay)
            return client.submit(sum, [1, 2], pure=False).result()

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(stage, [0.3, 0.1, 0.4, 0.2])) == [3] * 4
    assert dask.config.get("scheduler", None) == before
    assert da.ones((4, 4), chunks=2).sum().compute() == 16  # the local scheduler still computes


def _sleeping(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_a_cancelled_task_still_running_is_waited_for_until_it_ends(scheduler):
    """Dask forgets a cancelled task at once, but its thread runs on (and goes on writing): ``wait_until_stopped``
    asks the workers until none still runs it, and says so when it is still running past its time; a task that
    had only been queued is gone at once."""
    from zarrchive.cluster import release_clients, wait_until_stopped

    try:
        with client_for(scheduler) as client:
            running = client.submit(_sleeping, 3, pure=False)
            while not client.processing() or not any(running.key in keys for keys in client.processing().values()):
                time.sleep(0.05)
            time.sleep(0.3)  # (begun on its worker)
            client.cancel([running])
            assert running.status == "cancelled"
            started = time.monotonic()
            assert wait_until_stopped(client, [running.key], 0.5) is False
            assert wait_until_stopped(client, [running.key], 30) is True
            assert 2.0 < time.monotonic() - started < 10
            queued = client.submit(_sleeping, 60, pure=False, workers=["tcp://127.0.0.1:1"], allow_other_workers=False)
            client.cancel([queued])
            started = time.monotonic()
            assert wait_until_stopped(client, [queued.key], 30) is True and time.monotonic() - started < 5
    finally:
        release_clients(scheduler)
