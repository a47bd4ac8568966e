"""A Prefect service as archive staff run it, for the operations tests: a real ``prefect server start`` process
(SQLite, its own PREFECT_HOME, the UI on), a process work pool and a real ``prefect worker`` process on
loopback. Started once per session by the fixtures in ``test_service.py``; every process is stopped with its
process group at the end."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Service:
    url: str  # the API, http://127.0.0.1:<port>/api
    ui: str  # the UI, http://127.0.0.1:<port>
    env: dict[str, str]  # what a process talking to this server needs
    home: Path
    processes: list[subprocess.Popen] = field(default_factory=list)

    def cli(self, *args: str, timeout: float = 300, extra_env: dict[str, str] | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
        """Run a console command (``zarrchive`` or ``prefect``) against this server."""
        done = subprocess.run([str(BIN / args[0]), *args[1:]], env={**self.env, **(extra_env or {})},
                              capture_output=True, text=True, timeout=timeout)
        if check and done.returncode:
            raise AssertionError(f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    @contextlib.contextmanager
    def client_settings(self) -> Iterator[None]:
        """This process's Prefect client pointed at this server for the duration of the block."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.url}):
            yield


def start_server(home: Path, log: Path) -> Service:
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": url, "PREFECT_UI_API_URL": url,
           "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
           "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED": "false", "PREFECT_WORKER_QUERY_SECONDS": "1",
           "PREFECT_WORKER_PREFETCH_SECONDS": "5", "PREFECT_LOGGING_LEVEL": "INFO"}
    env.pop("PREFECT_PROFILES_PATH", None)
    env.pop("DASK_LOGGING__DISTRIBUTED", None)  # runs quiet Dask themselves (cluster.log_level), as at a site
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    service = Service(url=url, ui=f"http://127.0.0.1:{port}", env=env, home=home, processes=[server])
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited {server.returncode}: {log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return service
        time.sleep(0.5)
    stop(service)
    raise RuntimeError(f"prefect server did not answer in 180 s: {log.read_text()[-3000:]}")


def start_worker(service: Service, pool: str, log: Path, env: dict[str, str]) -> subprocess.Popen:
    service.cli("prefect", "work-pool", "create", pool, "--type", "process", "--overwrite", check=True)
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process",
                               "--limit", "6"], env={**service.env, **env}, stdout=log.open("ab"),
                              stderr=subprocess.STDOUT, start_new_session=True)
    service.processes.append(worker)
    return worker


def stop(service: Service) -> None:
    for process in reversed(service.processes):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    for process in reversed(service.processes):
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for_run(service: Service, run_id: Any, timeout: float = 300, until=None) -> Any:
    """The flow run once it is final (or ``until(run)`` holds); fails after ``timeout`` seconds."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with service.client_settings(), get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            final = run.state is not None and run.state.is_final()
            if until(run) if until else final:
                return run
            if final:
                raise AssertionError(f"flow run {run.name} ended {run.state} before what the test waits for")
            if time.monotonic() > deadline:
                raise AssertionError(f"flow run {run.name} still {run.state} after {timeout} s")
            time.sleep(1)
