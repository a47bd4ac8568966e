"""The run's Dask cluster: a LocalCluster started and closed per run, or an existing scheduler."""

from __future__ import annotations

import dask.array as da

from zarrchive.cluster import client_for, cluster_for_run
from zarrchive.config import ClusterSettings


def test_a_local_cluster_is_started_for_the_run_and_closed_after():
    settings = ClusterSettings(n_workers=1, threads_per_worker=1, memory_limit="1GiB")
    with cluster_for_run(settings) as address:
        with client_for(address) as client:
            assert len(client.scheduler_info()["workers"]) == 1
            assert client.compute(da.ones((100, 100), chunks=50).sum()).result() == 10_000
    import pytest
    from distributed import Client

    with pytest.raises(OSError):
        Client(address, timeout="2s")


def test_an_existing_scheduler_is_used_and_left_running(scheduler):
    with cluster_for_run(ClusterSettings(address=scheduler, threads_per_worker=1, memory_limit="auto")) as address:
        assert address == scheduler
    with client_for(scheduler) as client:
        assert client.compute(da.arange(10, chunks=5).sum()).result() == 45
        imported = client.run(lambda: sorted(m for m in __import__("sys").modules if m.startswith("zarrchive.tasks")))
        assert all("zarrchive.tasks.compress" in mods for mods in imported.values()) and len(imported) == 2
