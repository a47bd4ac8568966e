"""The Dask distributed cluster that does the array work of a run.

``cluster_for_run`` yields the scheduler address of the run's cluster, whose
kind follows from the configuration (``ClusterSettings.kind``):

- ``local`` (the default): a ``LocalCluster`` sized to the machine, one worker
  process per core, each with an explicit memory limit; started for the run
  and closed after it;
- ``address``: an existing scheduler, used as it is and left running;
- ``slurm``: workers as Slurm batch jobs through dask-jobqueue (the optional
  ``zarrchive[slurm]`` extra); the scheduler runs in this process for the run,
  the jobs are cancelled at its end.

Workers zarrchive starts get the configured memory thresholds (spill, pause,
restart) and the scheduler the number of worker deaths a task may survive; a
task whose workers keep dying fails its stage with ``ClusterError``. Tasks
receive only the scheduler address and connect with ``client_for``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import dask
from dask.utils import parse_bytes
from distributed import Client, KilledWorker, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from zarrchive.config import ClusterSettings, SlurmSettings, WorkerMemory
from zarrchive.errors import ClusterError, ConfigError

if TYPE_CHECKING:
    from dask_jobqueue import SLURMCluster


# distributed starts workers with MALLOC_TRIM_THRESHOLD_=64 KiB so they hand memory back to the system; set
# alone, it also pins glibc's mmap threshold at 128 KiB, so every chunk buffer is a fresh mmap and the pixel
# work spends as much time in page faults as in codecs (measured: 2.7x the system time). Large buffers are
# still returned: above 32 MiB they are mmapped, and a heap with an eighth of the worker's memory (at most
# 256 MiB) free at its top is trimmed, so what a worker keeps stays a fraction of its limit.
def worker_malloc(memory_limit: int | None) -> dict[str, int]:
    """glibc's allocator thresholds for a worker with ``memory_limit`` bytes (None: unknown, the largest)."""
    trim = min(256 << 20, max(16 << 20, memory_limit // 8)) if memory_limit else 256 << 20
    return {"MALLOC_TRIM_THRESHOLD_": trim, "MALLOC_MMAP_THRESHOLD_": min(32 << 20, trim)}


@contextlib.contextmanager
def cluster_for_run(settings: ClusterSettings, dashboard: bool = True, processes: bool = True) -> Iterator[str]:
    """Yield the scheduler address of the run's cluster (started here unless ``settings.address`` is given);
    a LocalCluster started without ``dashboard`` starts faster (no Bokeh), for callers that show no link; its
    workers are processes, or threads of this process, as ``cluster.processes`` says (unset: ``processes``)."""
    distributed_log_level(settings.log_level)
    if settings.kind == "address":
        yield settings.address
        return
    in_processes = processes if settings.processes is None else settings.processes
    cluster = (slurm_cluster(settings) if settings.kind == "slurm"
               else local_cluster(settings, dashboard, in_processes))
    try:
        if settings.kind == "slurm":
            submit_jobs(cluster, settings.slurm)
        yield cluster.scheduler_address
    finally:
        release_clients(cluster.scheduler_address)
        cluster.close()


SITE_DASK_LOG_LEVEL = os.environ.get("DASK_LOGGING__DISTRIBUTED")  # a site's own, as the process started


def distributed_log_level(level: str) -> None:
    """Dask distributed's loggers at ``level`` (``cluster.log_level``) in this process and in the worker processes
    it starts (they read the environment as they import distributed): its per-connection INFO lines would otherwise
    drown a run's log, in a flow run a worker started as much as on the command line. A site's own
    ``DASK_LOGGING__DISTRIBUTED`` wins."""
    level = SITE_DASK_LOG_LEVEL or level
    os.environ["DASK_LOGGING__DISTRIBUTED"] = level
    logging.getLogger("distributed").setLevel(int(level) if level.isdigit() else level.upper())


def local_sizes(settings: ClusterSettings) -> tuple[int, int]:
    """Workers and memory limit (bytes) per worker of the LocalCluster: ``n_workers`` or as many workers as the
    machine's cores allow at ``threads_per_worker`` each; ``memory_limit`` or the machine's memory shared
    equally (both as the process may use them: CPU affinity and cgroup limits count)."""
    from dask.system import CPU_COUNT
    from distributed.system import MEMORY_LIMIT

    n_workers = settings.n_workers or max(1, CPU_COUNT // settings.threads_per_worker)
    if settings.memory_limit == "auto":
        return n_workers, MEMORY_LIMIT // n_workers
    return n_workers, parse_bytes(settings.memory_limit)


def local_cluster(settings: ClusterSettings, dashboard: bool = True, processes: bool = True) -> LocalCluster:
    """A LocalCluster on loopback, of worker processes (or, without ``processes``, one worker in this process with
    as many threads and as much memory as they would have had), with explicit memory limits and thresholds, and
    its dashboard on a free port (unless not ``dashboard``)."""
    n_workers, memory_limit = local_sizes(settings)
    threads = settings.threads_per_worker
    if not processes:
        # one worker holding every thread and all the memory: a worker measures its process's memory against its
        # own limit, and workers sharing a process would each count the others' (pausing at 0.8/n of it)
        n_workers, threads, memory_limit = 1, n_workers * threads, n_workers * memory_limit
    malloc = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in worker_malloc(memory_limit).items()}
    with dask.config.set(scheduler_config(settings) | worker_memory_config(settings.worker_memory) | malloc):
        # the nannies keep this configuration for the workers they start, restarts included; tcp, as worker
        # processes use, also for threads (host= names a tcp address)
        return LocalCluster(n_workers=n_workers, threads_per_worker=threads,
                            memory_limit=memory_limit, processes=processes, host="127.0.0.1", protocol="tcp",
                            dashboard_address=":0" if dashboard else None,
                            # imported as each worker process starts, in parallel; in this process the caller
                            # imports them (an import in the cluster's thread could meet the caller's half done)
                            preload=list(WORKER_MODULES) if processes else [])


def slurm_cluster(settings: ClusterSettings) -> SLURMCluster:
    """A SLURMCluster from ``settings.slurm``, not yet scaled (no job submitted): its scheduler runs here."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as exc:
        raise ConfigError("cluster.slurm", [
            f"Slurm clusters need dask-jobqueue, which is not installed ({exc}): pip install 'zarrchive[slurm]'"
        ]) from exc
    slurm: SlurmSettings = settings.slurm
    prologue = export_lines(worker_environment(settings.worker_memory,
                                               parse_bytes(slurm.memory) // max(1, slurm.processes)))
    scheduler_options: dict[str, Any] = {"dashboard_address": slurm.dashboard_address}
    if slurm.scheduler_interface:
        scheduler_options["interface"] = slurm.scheduler_interface
    with dask.config.set(scheduler_config(settings)):
        return SLURMCluster(
            queue=slurm.partition, account=slurm.account, cores=slurm.cores, memory=slurm.memory,
            processes=slurm.processes, walltime=slurm.walltime, job_name=slurm.job_name,
            job_extra_directives=list(slurm.job_extra_directives),
            job_script_prologue=prologue + list(slurm.job_script_prologue),
            python=slurm.python, local_directory=slurm.local_directory, log_directory=slurm.log_directory,
            interface=slurm.interface, scheduler_options=scheduler_options,
        )


def submit_jobs(cluster: SLURMCluster, slurm: SlurmSettings) -> None:
    """Ask for the configured number of jobs, or let the cluster adapt between the minimum and maximum."""
    if isinstance(slurm.jobs, int):
        cluster.scale(jobs=slurm.jobs)
    else:
        cluster.adapt(minimum_jobs=slurm.jobs.minimum, maximum_jobs=slurm.jobs.maximum)


def scheduler_config(settings: ClusterSettings) -> dict[str, Any]:
    """Dask configuration of a scheduler zarrchive starts."""
    return {"distributed.scheduler.allowed-failures": settings.allowed_failures}


def worker_memory_config(memory: WorkerMemory) -> dict[str, Any]:
    """Dask configuration of the memory thresholds of the workers zarrchive starts."""
    return {f"distributed.worker.memory.{name}": value for name, value in memory.model_dump().items()}


def worker_memory_environment(memory: WorkerMemory) -> list[tuple[str, str]]:
    """The same thresholds as environment variables, for workers started elsewhere (a Slurm job script)."""
    return [(f"DASK_DISTRIBUTED__WORKER__MEMORY__{name.upper()}", str(value))
            for name, value in memory.model_dump().items()]


def worker_malloc_environment(memory_limit: int | None) -> list[tuple[str, str]]:
    """``worker_malloc`` for nannies started elsewhere (a Slurm job script): set in the job's environment, which
    a nanny's pre-spawn environment gives way to (and which overrides what the submitting process had)."""
    return [(name, str(value)) for name, value in worker_malloc(memory_limit).items()]


def worker_environment(memory: WorkerMemory, memory_limit: int | None) -> list[tuple[str, str]]:
    """The environment of workers zarrchive does not start itself (a Slurm job's, a facility's: ``zarrchive
    worker-env``) of ``memory_limit`` bytes each: the memory thresholds and glibc's allocator thresholds."""
    return worker_memory_environment(memory) + worker_malloc_environment(memory_limit)


def export_lines(variables: list[tuple[str, str]]) -> list[str]:
    """``variables`` as a shell's ``export`` lines."""
    return [f"export {name}={shlex.quote(value)}" for name, value in variables]


@dataclass(frozen=True)
class ClusterView:
    """What a run's cluster looks like from its scheduler, at one moment."""

    address: str
    dashboard: str | None
    workers: int
    threads: int
    memory: int

    def describe(self) -> str:
        from dask.utils import format_bytes

        return (f"Dask scheduler {self.address}: {self.workers} workers, {self.threads} threads, "
                f"{format_bytes(self.memory)} memory limit in all")


def view_cluster(address: str) -> ClusterView:
    """Ask the scheduler at ``address`` for its dashboard link (None without a dashboard) and its workers."""
    with Client(address, set_as_default=False, timeout="30s") as client:
        info = client.scheduler_info(n_workers=-1)
        try:
            dashboard = client.dashboard_link  # follows dask's distributed.dashboard.link template
        except KeyError:  # a scheduler started without its dashboard
            dashboard = None
    workers = info["workers"].values()
    return ClusterView(address=address, dashboard=dashboard, workers=len(workers),
                       threads=sum(w["nthreads"] for w in workers), memory=sum(w["memory_limit"] for w in workers))


def link_dashboard(address: str) -> ClusterView:
    """Show the Dask dashboard of the scheduler at ``address`` as a link artifact of the current Prefect flow run,
    keyed by the run's name (``ingest-lab1-cells-dask-dashboard``; nothing is created when the scheduler has no
    dashboard)."""
    from prefect.artifacts import create_link_artifact
    from prefect.runtime import flow_run

    from zarrchive.outcome import key_of

    view = view_cluster(address)
    if view.dashboard:
        create_link_artifact(view.dashboard, link_text="Dask dashboard", key=key_of(f"{flow_run.name or 'run'}-dask-dashboard"),
                             description=view.describe())
    return view


# Imported on every worker before it runs stage work: a worker that unpickles a zarr array in its
# communication thread while a task thread is still importing zarr hits a circular-import error
# (seen on fresh workers), and the nanny restarts it.
WORKER_MODULES = ("zarr", "zarr.core.array", "zarr.api.asynchronous", "numcodecs", "tifffile",
                  "zarrchive.pixels")  # light: no Prefect, no bioio (tests/test_architecture.py)


def import_worker_modules() -> list[str]:
    """Import what stage tasks need (run on each worker); return the modules imported."""
    import importlib

    return [importlib.import_module(name).__name__ for name in WORKER_MODULES]


class ImportStageModules(WorkerPlugin):
    """Imports the stage modules on every worker of the scheduler, those that join later included (a worker
    the nanny restarted after a crash, a Slurm job that started late), before the worker takes tasks."""

    name = "zarrchive-import-stage-modules"
    idempotent = True  # registered once per scheduler, however many stages connect

    def setup(self, worker) -> None:
        import_worker_modules()


_CLIENTS: dict[str, tuple[Client, str | None]] = {}  # per scheduler: this process's client, and the scheduler
#                                                     id its worker plugin was registered with
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


def shared_client(address: str) -> Client:
    """This process's client of the scheduler at ``address``, shared by every stage and thread (a client costs a
    connection and round trips to make: per image of a plate, more than the image's own pixel work). Made the
    first time and again once closed; one that is reconnecting is left to reconnect. The stage modules' worker
    plugin is registered again when the scheduler changed (a restarted scheduler forgets it)."""
    with _LOCKS_LOCK:
        lock = _LOCKS.setdefault(address, threading.Lock())
    with lock:
        client, registered = _CLIENTS.get(address, (None, None))
        if client is not None and client.status not in ("running", "connecting", "newly-created"):
            with contextlib.suppress(Exception):
                client.close()
            client = None
        if client is None:
            client = Client(address, set_as_default=False, timeout="30s")
            registered = None
        current = getattr(client, "_scheduler_identity", {}).get("id")
        if registered is None or current != registered:
            try:
                client.register_plugin(ImportStageModules())
            except Exception:
                client.close()
                _CLIENTS.pop(address, None)
                raise
            registered = getattr(client, "_scheduler_identity", {}).get("id") or "registered"
        _CLIENTS[address] = (client, registered)
        return client


def release_clients(address: str | None = None) -> None:
    """Close this process's client of ``address`` (every client when None): the cluster is going away."""
    for known in [a for a in list(_CLIENTS) if address is None or a == address]:
        with _LOCKS_LOCK:
            lock = _LOCKS.setdefault(known, threading.Lock())
        with lock:
            client, _ = _CLIENTS.pop(known, (None, None))
            if client is not None:
                with contextlib.suppress(Exception):
                    client.close()


class Sealed:
    """An argument handed to a Dask task as one object: Dask does not look inside it.

    Dask walks every list, tuple and dict of a task's arguments, looking for keys and futures. A convert batch
    of 64 files carries each file's companions (the digests of its folder's files: 10,000 in a screen's folder),
    so submitting it walked 640,000 entries, under the flow's lock, before a worker began: 0.16 s a batch, 25 s
    of a 10,000-file run with the workers idle. Sealed, the batch is pickled as it is and unpacked by the task."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def wait_until_stopped(client: Client, keys: list[str], timeout: float = 120.0) -> bool:
    """Wait until no worker still runs a task of ``keys`` that was cancelled after it began: Dask forgets a
    cancelled task at once, but its thread runs on to the task's end (and goes on writing what it writes). False
    when one still ran after ``timeout`` seconds, or a worker could not answer (it may be running one); True
    when none does, or when the scheduler cannot be reached at all (then neither can the work be sent again)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            running = client.run(_running, list(keys), on_error="return")
        except Exception:
            return True
        if not any(found for found in running.values()):  # (an error answered is true: it may be running one)
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _running(keys: list[str], dask_worker: Any = None) -> list[str]:
    """On a worker: those of ``keys`` it still holds (a cancelled task it is still running)."""
    return [key for key in keys if key in dask_worker.state.tasks]


@contextlib.contextmanager
def client_for(address: str) -> Iterator[Client]:
    """A client of the scheduler at ``address`` for the duration of one stage, its workers ready (this process's
    shared client: ``shared_client``).

    A task that was running each time one of ``allowed_failures + 1`` workers died (a crash, an out-of-memory
    kill) fails the stage with ``ClusterError``; work lost with fewer deaths is simply redone.

    The client is used explicitly (``submit``, ``map``, ``compute``), never made "current": that sets dask's
    global scheduler option, which stages running at the same time in other threads would then restore out of
    order, leaving the process asking for a distributed client that no longer exists.
    """
    client = shared_client(address)
    try:
        yield client
    except KilledWorker as exc:
        raise ClusterError(
            f"Dask workers died {exc.allowed_failures + 1} time(s) while running {exc.task!r}, the last one "
            f"{exc.last_worker.address} (cluster.allowed_failures: {exc.allowed_failures}). Workers killed for "
            "their memory need a larger memory limit per thread for these chunk and shard sizes"
        ) from exc
