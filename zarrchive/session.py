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
import gc
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Iterator

STARTUP_SECONDS = float(os.environ.get("ZARRCHIVE_API_STARTUP_SECONDS", "180"))
STOP_GRACE_SECONDS = 8.0  # after a stop signal, the most the run's cleanup may take before the process exits
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


# What a run's stages import when they first run, the largest first (seconds each on this project's machine):
# Great Expectations (QC, 2.6) and the readers (convert, 1.4). Imported while the local API server starts, they
# cost the run nothing: that server starts on one core, and this process would only wait for it.
PRELOADED = ("great_expectations", "bioio", "bioio_ome_tiff", "bioio_tifffile", "ome_types")


def preload(modules: tuple[str, ...] = PRELOADED) -> None:
    """Import ``modules`` now; one that fails to import is left for its stage to report."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # (the stage that needs it imports it again and says what is wrong)
            pass


COLLECT_AFTER = (100_000, 50, 100)  # allocations before a collection of generation 0, and collections of 0 and 1
#                                     before one of the next (Python's default: 700, 10, 10)


def collect_less() -> None:
    """Run Python's cyclic garbage collector less often in the process running an ingest (``COLLECT_AFTER``).

    A run of many images holds many live objects (its records and their lineage, Prefect's and Dask's state), and
    a collection of the older generations walks every one of them: with the default thresholds a run of 10,000
    images spent more of its time on that the longer it ran (convert 7-8 ms an image at 1,000 images, 10.4 at
    10,000). With these, convert and compress of 10,000 images took 76 and 141 s against 104 and 160 (one run
    each, 2026-11-26). Reference counting still frees what is not in a cycle at once; cycles wait longer."""
    gc.set_threshold(*COLLECT_AFTER)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def prefect_api(timeout: float = STARTUP_SECONDS, meanwhile: Callable[[], None] | None = None) -> Iterator[str]:
    """The Prefect API for this command: ``PREFECT_API_URL`` when set, else a local server started for it.
    ``meanwhile`` runs while that server starts (seconds in which this process would only wait for it)."""
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
        if meanwhile is not None:
            meanwhile()
        _wait_healthy(url, server, log, timeout)
        with temporary_settings({PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                _send_logs()
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def _send_logs() -> None:
    """Send the run's log lines and events (its task runs' last states) still queued for the API before its server
    stops (at most a few seconds each), rather than at the process's exit, to a server gone by then."""
    for module, worker in (("prefect.logging.handlers", "APILogWorker"), ("prefect.events.worker", "EventsWorker")):
        try:
            getattr(__import__(module, fromlist=[worker]), worker).drain_all(timeout=5)
        except Exception:  # the lines stay in the terminal's output either way; the events are Prefect's own
            pass


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
    state = (f"exited with code {server.returncode}" if server.poll() is not None
             else f"did not answer in {timeout:.0f} s")
    raise RuntimeError(f"the local Prefect API server {state} (set PREFECT_API_URL to use a running server, or "
                       f"ZARRCHIVE_API_STARTUP_SECONDS to wait longer): {tail}")


@contextlib.contextmanager
def stop_on_signals(on_stuck: Callable[[int], None] = lambda _signum: None) -> Iterator[None]:
    """Turn SIGTERM and SIGINT into a prompt stop for the duration of the block.

    The signal interrupts the main thread (Prefect's own handler during a flow run, ``Interrupted`` outside
    one), so the run unwinds: its staging folder is removed, the cluster it started is closed. A watchdog
    thread hears every signal too (through the interpreter's wakeup file descriptor, whoever handles it);
    when the run is not over ``STOP_GRACE_SECONDS`` later (a worker thread still busy with work that no longer
    matters keeps the interpreter waiting), it removes the run's staging folders, calls ``on_stuck`` and ends
    the process. A second signal ends it at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        if stopping:
            _stop_now(signum, on_stuck)
        stopping.append(signum)
        raise Interrupted(signum)

    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(read_end, on_stuck), daemon=True, name="zarrchive-stop").start()
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_end)


def _watch(read_end: int, on_stuck: Callable[[int], None]) -> None:
    heard: list[int] = []
    while True:
        try:
            data = os.read(read_end, 16)
        except OSError:
            return
        if not data:  # the run is over: the block closed the pipe
            os.close(read_end)
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                if heard:
                    _stop_now(signum, on_stuck)
                heard.append(signum)
                timer = threading.Timer(STOP_GRACE_SECONDS, _stop_now, args=(signum, on_stuck))
                timer.daemon = True
                timer.start()


def _stop_now(signum: int, on_stuck: Callable[[int], None]) -> None:
    """End the process now: the run's staging folders removed, ``on_stuck`` told, the exit code 128 + signal."""
    from zarrchive.archive.staging import remove_active

    try:
        remove_active()
        on_stuck(signum)
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(128 + signum)
