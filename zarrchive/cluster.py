"""The Dask distributed cluster that does the array work of a run.

By default a ``LocalCluster`` is started for the run and closed after it; with
``cluster.address`` set, an existing scheduler is used and left running.
Tasks receive only the scheduler address and connect with ``client_for``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import dask.config
from distributed import Client, LocalCluster

from zarrchive.config import ClusterSettings


# distributed starts workers with MALLOC_TRIM_THRESHOLD_=64 KiB so they hand memory back to the system; set
# alone, it also pins glibc's mmap threshold at 128 KiB, so every chunk buffer is a fresh mmap and the pixel
# work spends as much time in page faults as in codecs (measured: 2.7x the system time). Large buffers are
# still returned: above 32 MiB they are mmapped, and a heap with 256 MiB free at its top is trimmed.
WORKER_MALLOC = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 256 << 20,
    "distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": 32 << 20,
}


@contextlib.contextmanager
def cluster_for_run(settings: ClusterSettings) -> Iterator[str]:
    """Yield the scheduler address of the run's cluster (started here unless configured)."""
    if settings.address:
        yield settings.address
        return
    n_workers = settings.n_workers or max(1, os.cpu_count() or 1)
    with dask.config.set(WORKER_MALLOC):
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=settings.threads_per_worker,
            memory_limit=settings.memory_limit,
            processes=True,
            dashboard_address=":0",
            host="127.0.0.1",
        )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


# Imported on every worker before a stage sends work: a worker that unpickles a zarr array in its
# communication thread while a task thread is still importing zarr hits a circular-import error
# (seen on fresh workers), and the nanny restarts it.
WORKER_MODULES = ("zarr", "zarr.core.array", "zarr.api.asynchronous", "numcodecs", "tifffile", "bioio",
                  "zarrchive.tasks.convert", "zarrchive.tasks.pyramid", "zarrchive.tasks.compress",
                  "zarrchive.tasks.qc")


def import_worker_modules() -> list[str]:
    """Import what stage tasks need (run on each worker); return the modules imported."""
    import importlib

    return [importlib.import_module(name).__name__ for name in WORKER_MODULES]


@contextlib.contextmanager
def client_for(address: str) -> Iterator[Client]:
    """A client of the scheduler at ``address`` for the duration of one stage, its workers ready."""
    client = Client(address, set_as_default=False, timeout="30s")
    try:
        client.run(import_worker_modules)
        with client.as_current():
            yield client
    finally:
        client.close()
