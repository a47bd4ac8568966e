"""What a command-line run sets up around a flow: a Prefect API that dies with it, and a prompt, clean stop.

Without ``PREFECT_API_URL``, a run needs a Prefect API of its own. Prefect's
ephemeral server is a child process that outlives a parent killed with
SIGKILL, and gives up after 20 s on a loaded machine; this one is started
with the kernel's parent-death signal (it ends when the command ends,
however it ends) and waits longer (``ZARRCHIVE_API_STARTUP_SECONDS``, 180 s by
default) for the server to answer.

SIGTERM and SIGINT stop a run within seconds: the flow is interrupted in the
main thread, so its context managers remove the run's staging folder and
close the Dask cluster it started, and the process then exits at once rather
than waiting for worker threads still busy with work that no longer matters.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Iterator

STARTUP_SECONDS = float(os.environ.get("ZARRCHIVE_API_STARTUP_SECONDS", "180"))
STOP_GRACE_SECONDS = 20.0  # after a stop signal, the most the run's cleanup may take before the process exits
PR_SET_PDEATHSIG = 1


class Interrupted(BaseException):
    """The run was asked to stop (SIGTERM or SIGINT)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")


def _die_with_parent(parent: int) -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:  # not Linux: the server is stopped by the normal exit path only
        return
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def prefect_api(timeout: float = STARTUP_SECONDS) -> Iterator[str]:
    """The Prefect API for this command: ``PREFECT_API_URL`` when set, else a local server started for it."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return
    import prefect

    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
           "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = tempfile.TemporaryFile()
    parent = os.getpid()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
         "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(port), "--log-level",
         "error", "--lifespan", "on"],
        env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=lambda: _die_with_parent(parent))
    try:
        _wait_healthy(url, server, log, timeout)
        with temporary_settings({PREFECT_API_URL: url}):
            yield url
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _wait_healthy(url: str, server: subprocess.Popen, log: Any, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                break
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    log.seek(0)
    tail = log.read()[-2000:].decode(errors="replace")
    state = f"exited with code {server.returncode}" if server.poll() is not None else f"did not answer in {timeout:.0f} s"
    raise RuntimeError(f"the local Prefect API server {state} (set PREFECT_API_URL to use a running server, or "
                       f"ZARRCHIVE_API_STARTUP_SECONDS to wait longer): {tail}")


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into ``Interrupted`` in the main thread for the duration of the block; a second
    signal, or cleanup taking longer than ``STOP_GRACE_SECONDS``, ends the process at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        if stopping:
            os._exit(128 + signum)
        stopping.append(signum)
        timer = threading.Timer(STOP_GRACE_SECONDS, os._exit, args=(128 + signum,))
        timer.daemon = True
        timer.start()
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
