"""A real PostgreSQL server for the catalog tests: Debian's ``postgresql`` package, a fresh cluster on loopback.

Installed with apt-get when missing and the tests run as root (as ``.ci/run`` does); run as the
``postgres`` user when the tests run as root (the server refuses root).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
from pathlib import Path


def binaries() -> Path:
    """The folder of PostgreSQL's server programs (Debian keeps them out of PATH)."""
    def found() -> list[str]:
        return sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))

    if not found() and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=False, capture_output=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=900)
    assert found(), "the catalog tests need PostgreSQL's server: apt-get install -y postgresql"
    return Path(found()[-1]).parent


class Postgres:
    """A PostgreSQL cluster in ``folder``, started; ``url`` connects to its database ``zarrchive``."""

    def __init__(self, folder: Path):
        self.bin = binaries()
        self.folder = folder
        self.data = folder / "data"
        self.as_root = os.geteuid() == 0
        folder.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            shutil.chown(folder, "postgres", "postgres")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self._run("initdb", "-D", str(self.data), "-U", "zarrchive", "-A", "trust", "--no-sync", "-E", "UTF8")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(folder / "server.log"), "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "zarrchive", "zarrchive")
        self.url = f"postgresql+psycopg://zarrchive@127.0.0.1:{self.port}/zarrchive"

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin / program), *args]
        if self.as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd="/")
        assert done.returncode == 0, f"{program} failed: {done.stderr or done.stdout}"

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
