"""The processes of this machine: who owns what a run leaves behind, and whether it still runs.

A process is named by its id and the time it started (from ``/proc``), so an id the
system has since given to another process is not mistaken for the owner.
"""

from __future__ import annotations

import os
import socket


def process_start(pid: int) -> str | None:
    """When process ``pid`` of this host started (clock ticks since boot); None when it does not run."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError, ValueError):
        return None


_THIS: tuple[int, str] = (0, "")


def this_process() -> str:
    """This process as ``<pid>-<start>``: the owner mark of what it writes. Read from ``/proc`` once per process
    (a forked child has a pid of its own, and reads its own): every temporary name a run writes carries it."""
    global _THIS
    pid = os.getpid()
    if _THIS[0] == pid:
        return _THIS[1]
    start = process_start(pid)
    if start is None:  # (not read this time: not kept, so one failed read marks one name, not every later one)
        return f"{pid}-0"
    _THIS = (pid, f"{pid}-{start}")
    return _THIS[1]


def owner_alive(owner: str, host: str | None = None) -> bool:
    """Whether the process ``<pid>-<start>`` (of ``host``; this host when None) still runs. A process of another
    host is taken to run: only its own host can tell."""
    if host is not None and host != socket.gethostname():
        return True
    pid, _, start = owner.partition("-")
    try:
        return process_start(int(pid)) == start
    except ValueError:
        return True  # not an owner mark: leave it alone
