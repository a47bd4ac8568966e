"""One publisher per accession at a time: a lease held in the archive store itself, with an expiry.

Local locks would not hold across machines sharing an S3 archive, so the lease
is built from the store's one atomic operation, the exclusive create (a local
hard link, ``If-None-Match: *`` on S3). The lease of an accession is a
sequence of objects ``<accession>/_lease/<n>.json``; the holder is the
writer of the highest one, until it expires or its holder deletes it. A run
takes the lease by creating the next number: of two runs racing for it, exactly
one succeeds. A lease that expired, or whose holder is a process of this host
that no longer runs (killed), is taken over the same way. The holder renews it
(the next number, a new expiry) while it works, and checks it before each write
and before committing: a holder that lost it stops without committing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

import fsspec

from zarrchive.archive.storage import join, resolve, write_bytes_exclusive
from zarrchive.errors import ZarrchiveError
from zarrchive.host import process_start

LEASE_DIR = "_lease"


class LeaseBusy(ZarrchiveError):
    """Another run holds the publishing lease of the accession."""

    def __init__(self, accession: str, holder: dict[str, Any]):
        self.accession, self.holder = accession, holder
        super().__init__(f"another run is publishing {accession} (since {holder.get('acquired', '?')}, "
                         f"{holder.get('host', '?')} process {holder.get('pid', '?')}): retry later")

    def __reduce__(self):
        return type(self), (self.accession, self.holder)


class LeaseLost(ZarrchiveError):
    """The lease expired and another run took it: this run must not commit."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@dataclass
class Lease:
    """A held publishing lease of one accession."""

    fs: fsspec.AbstractFileSystem
    folder: str
    accession: str
    seconds: float
    number: int
    expires: float  # time.monotonic() of this process at which the lease ends
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    def check(self) -> None:
        """Before a write: the lease has not run out (a local clock check, no request); renewed when half gone."""
        left = self.expires - time.monotonic()
        if left <= 0:
            raise LeaseLost(f"the publishing lease of {self.accession} ran out ({self.seconds:.0f} s): nothing "
                            "was committed; run again")
        if left < self.seconds / 2:
            self.renew()

    def renew(self) -> None:
        """Take the next number of the sequence with a new expiry, then drop the old one."""
        if self.expires - time.monotonic() <= 0:
            raise LeaseLost(f"the publishing lease of {self.accession} ran out before it was renewed")
        nxt = self.number + 1
        try:
            _create(self.fs, self.folder, nxt, self.seconds, self.token)
        except FileExistsError:
            raise LeaseLost(f"the publishing lease of {self.accession} was taken by another run") from None
        self.expires = time.monotonic() + self.seconds
        _remove(self.fs, self.folder, self.number)
        self.number = nxt

    def release(self) -> None:
        _remove(self.fs, self.folder, self.number)


def _path(folder: str, number: int) -> str:
    return join(folder, f"{number:012d}.json")


def _create(fs: fsspec.AbstractFileSystem, folder: str, number: int, seconds: float, token: str) -> None:
    now = _now()
    pid = os.getpid()
    record = {"host": socket.gethostname(), "pid": pid, "started": process_start(pid), "token": token,
              "acquired": now.isoformat(), "expires": (now + dt.timedelta(seconds=seconds)).isoformat()}
    write_bytes_exclusive(fs, _path(folder, number), json.dumps(record).encode())


def _remove(fs: fsspec.AbstractFileSystem, folder: str, number: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        fs.rm(_path(folder, number))


def _numbers(fs: fsspec.AbstractFileSystem, folder: str) -> list[int]:
    fs.invalidate_cache(folder)
    try:
        names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(folder, detail=False)]
    except FileNotFoundError:
        return []
    return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())


def _holder(fs: fsspec.AbstractFileSystem, folder: str, number: int) -> dict[str, Any] | None:
    """The record of lease ``number`` while it is held; None when it expired, was released, or its holder is a
    process of this host that no longer runs."""
    try:
        with fs.open(_path(folder, number), "rb") as fh:
            record = json.load(fh)
    except (FileNotFoundError, ValueError):
        return None
    if dt.datetime.fromisoformat(record["expires"]) <= _now():
        return None
    if record.get("host") == socket.gethostname() and process_start(record.get("pid", -1)) != record.get("started"):
        return None  # killed: its process is gone (or the number now names another process)
    return record


def acquire(archive: str, accession: str, seconds: float, wait_seconds: float = 0.0,
            poll_seconds: float = 1.0) -> Lease:
    """The publishing lease of ``accession``, waiting up to ``wait_seconds`` for a holder to finish;
    ``LeaseBusy`` naming the holder when it does not."""
    fs, root = resolve(archive)
    folder = join(root, accession, LEASE_DIR)
    deadline = time.monotonic() + wait_seconds
    token = uuid.uuid4().hex
    while True:
        numbers = _numbers(fs, folder)
        top = numbers[-1] if numbers else 0
        holder = _holder(fs, folder, top) if top else None
        if holder is None:
            try:
                _create(fs, folder, top + 1, seconds, token)
            except FileExistsError:  # another run took it first
                continue
            for stale in numbers:  # expired or killed holders' objects
                _remove(fs, folder, stale)
            return Lease(fs=fs, folder=folder, accession=accession, seconds=seconds, number=top + 1,
                         expires=time.monotonic() + seconds, token=token)
        if time.monotonic() >= deadline:
            raise LeaseBusy(accession, holder)
        time.sleep(poll_seconds)


@contextlib.contextmanager
def publishing(archive: str, accession: str, seconds: float, wait_seconds: float = 0.0) -> Iterator[Lease]:
    """Hold the publishing lease of ``accession`` for the duration of the block."""
    lease = acquire(archive, accession, seconds, wait_seconds)
    try:
        yield lease
    finally:
        lease.release()
