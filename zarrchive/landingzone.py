"""The files of one submission as the landing zone holds them, read so that nothing outside it is ever read.

A submission is a folder of regular files (and of Zarr stores, folders of
regular files). Everything else is refused, with the entry named and the
reason: a symbolic link (to a file or a folder, anywhere at or below the
submission folder), a hard link whose other names lie outside the submission,
a device, a named pipe (FIFO) or a socket. zarrchive never follows a link,
so what a depositor's folder points at on the ingest machine can never be
fetched, converted or published.

On a local disk every path is opened one component at a time from the
submission folder with ``O_NOFOLLOW`` (``openat``), and the file opened is
checked again on its descriptor, so a folder swapped for a link between the
check and the copy is refused too. A file is opened non-blocking, so a named
pipe never hangs the reader. Other fsspec filesystems (S3 and the like) have
no links; an entry they report as a link or as anything but a file or folder
is refused the same way.
"""

from __future__ import annotations

import errno
import os
import stat
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Literal

from fsspec.implementations.local import LocalFileSystem

from zarrchive.archive.storage import ZARR_MARKERS, join, resolve
from zarrchive.errors import InputError

Kind = Literal["file", "store", "folder"]

LINK_ADVICE = "zarrchive never follows links: put the file itself in the submission folder"


class UnsafeEntry(InputError):
    """An entry of a submission that is not a regular file or folder of it (a link, a device, a pipe…)."""


@dataclass(frozen=True)
class Entry:
    """One entry found while walking a submission: its path and kind, or why it is refused."""

    path: str
    kind: Kind | None  # None: refused
    problem: str | None = None


def _what(mode: int) -> str | None:
    """Why an entry of this ``st_mode`` is not archived (None: a regular file or a folder)."""
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if stat.S_ISLNK(mode):
        return f"a symbolic link; {LINK_ADVICE}"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device, not a file"
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO), not a file"
    if stat.S_ISSOCK(mode):
        return "a socket, not a file"
    return "not a regular file"


class SubmissionFiles:
    """Read-only access to the entries of the submission at ``source`` (a folder or fsspec URL)."""

    def __init__(self, source: str, follow_root: bool = False):
        self.source = source
        self.follow_root = follow_root  # the folder itself may be a link (a landing zone staff configured)
        self.fs, self.root = resolve(source)
        self.local = isinstance(self.fs, LocalFileSystem)
        self._names: Counter[tuple[int, int]] | None = None

    # ------------------------------------------------------------ one entry

    def kind(self, rel: str) -> Kind:
        """What ``rel`` is: a regular file, a Zarr store, or another folder. Raises ``FileNotFoundError`` when it
        does not exist and ``UnsafeEntry`` naming it when it is anything else, or lies behind a link."""
        if not self.local:
            return self._remote_kind(rel)
        fd, name = self._parent(rel)
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        finally:
            os.close(fd)
        if (problem := _what(st.st_mode)) is not None:
            raise UnsafeEntry(rel, problem)
        if stat.S_ISREG(st.st_mode):
            self._check_links(rel, st)
            return "file"
        return "store" if self._is_store(rel) else "folder"

    def is_small_file(self, rel: str, limit: int) -> bool:
        """Whether ``rel`` is a regular local file of fewer than ``limit`` bytes (its name's own status, no link
        followed); False for anything else, what cannot be found included (``kind`` and ``open`` say why)."""
        if not self.local:
            return False
        try:
            fd, name = self._parent(rel)
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            finally:
                os.close(fd)
        except (OSError, InputError):
            return False
        return stat.S_ISREG(st.st_mode) and st.st_size < limit

    def open(self, rel: str) -> BinaryIO:
        """``rel`` opened for reading, a regular file of the submission (checked again on the open file)."""
        if not self.local:
            if self._remote_kind(rel) != "file":
                raise UnsafeEntry(rel, "a folder, not a file")
            return self.fs.open(join(self.root, rel), "rb")
        fd, name = self._parent(rel)
        try:
            try:
                handle = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise UnsafeEntry(rel, f"a symbolic link; {LINK_ADVICE}") from None
                raise
        finally:
            os.close(fd)
        try:
            st = os.fstat(handle)
            if (problem := _what(st.st_mode)) is not None or stat.S_ISDIR(st.st_mode):
                raise UnsafeEntry(rel, problem or "a folder, not a file")
            self._check_links(rel, st)
            os.set_blocking(handle, True)
            return os.fdopen(handle, "rb")
        except BaseException:
            os.close(handle)
            raise

    def stamp(self, rel: str, handle: BinaryIO) -> tuple:
        """What changes when ``rel`` (open as ``handle``) is written to: compared before and after a copy."""
        if self.local:
            st = os.fstat(handle.fileno())
            return st.st_size, st.st_mtime_ns, st.st_ctime_ns
        info = self.fs.info(join(self.root, rel))
        return tuple(str(info.get(key)) for key in ("size", "ETag", "etag", "mtime", "LastModified", "VersionId"))

    def read(self, rel: str, limit: int) -> bytes:
        """The bytes of ``rel``, at most ``limit`` + 1 of them (so a caller can tell that it is larger)."""
        with self.open(rel) as fh:
            return fh.read(limit + 1)

    def store_objects(self, rel: str) -> list[str]:
        """Every object of the Zarr store ``rel`` (paths relative to it, sorted); ``UnsafeEntry`` naming the first
        entry inside it that is a link, a device, a pipe or a socket."""
        found = [e for e in self.walk(rel) if e.path != rel]
        bad = [e for e in found if e.kind is None]
        if bad:
            raise UnsafeEntry(bad[0].path, bad[0].problem or "not a regular file")
        return sorted(e.path[len(rel) + 1:] for e in found if e.kind == "file")

    # ------------------------------------------------------------ the whole tree

    def walk(self, top: str = "", max_depth: int | None = None) -> Iterator[Entry]:
        """Every entry at and below ``top`` (files, folders and what is refused), never through a link; at most
        ``max_depth`` folders below it when given."""
        if not self.local:
            yield from self._remote_walk(top, max_depth)
            return
        if top:
            fd, name = self._parent(top)
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if (problem := _what(st.st_mode)) is not None:
                    yield Entry(top, None, problem)
                    return
                if not stat.S_ISDIR(st.st_mode):
                    problem = self._link_problem(st)
                    yield Entry(top, None if problem else "file", problem)
                    return
                folder = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            finally:
                os.close(fd)
        else:
            folder = self._open_root()
        yield from self._walk_fd(folder, top, max_depth)

    def _walk_fd(self, folder: int, prefix: str, depth: int | None = None) -> Iterator[Entry]:
        try:
            with os.scandir(folder) as entries:
                listing = sorted((e.name, e.stat(follow_symlinks=False)) for e in entries)
            for name, st in listing:
                rel = f"{prefix}/{name}" if prefix else name
                if (problem := _what(st.st_mode)) is not None:
                    yield Entry(rel, None, problem)
                elif stat.S_ISDIR(st.st_mode):
                    yield Entry(rel, "folder")
                    if depth is not None and depth <= 0:
                        continue
                    try:
                        inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
                    except OSError as exc:  # swapped for a link since it was listed, or unreadable
                        yield Entry(rel, None, f"cannot be read: {exc.strerror}")
                        continue
                    yield from self._walk_fd(inner, rel, None if depth is None else depth - 1)
                else:
                    problem = self._link_problem(st)
                    yield Entry(rel, None if problem else "file", problem)
        finally:
            os.close(folder)

    # ------------------------------------------------------------ local helpers

    def _open_root(self) -> int:
        if self.follow_root:
            return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        st = os.lstat(self.root)
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeEntry(self.source, "the submission folder is a symbolic link (to "
                                           f"{os.path.realpath(self.root)}): give the folder itself")
        return os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)

    def _parent(self, rel: str) -> tuple[int, str]:
        """A descriptor of the folder holding ``rel`` (opened without following any link) and its last name."""
        parts = rel.split("/")
        fd = self._open_root()
        for i, part in enumerate(parts[:-1]):
            try:
                inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                os.close(fd)
                where = "/".join(parts[:i + 1])
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    try:
                        mode = os.lstat(os.path.join(self.root, where)).st_mode
                    except OSError:
                        mode = 0
                    if stat.S_ISLNK(mode):
                        raise UnsafeEntry(rel, f"lies in {where}/, a symbolic link to a folder; {LINK_ADVICE}") \
                            from None
                if exc.errno == errno.ENOENT:
                    raise FileNotFoundError(errno.ENOENT, "not found", rel) from None
                raise
            os.close(fd)
            fd = inner
        return fd, parts[-1]

    def _link_problem(self, st: os.stat_result) -> str | None:
        """Why a regular file is refused for its hard links (None: every name of it lies in the submission)."""
        if st.st_nlink <= 1:
            return None
        inside = self._census()[(st.st_dev, st.st_ino)]
        if inside >= st.st_nlink:
            return None
        return (f"a hard link to a file with {st.st_nlink} names, {st.st_nlink - inside} of them outside the "
                "submission; put a copy of the file in the submission folder")

    def _check_links(self, rel: str, st: os.stat_result) -> None:
        if (problem := self._link_problem(st)) is not None:
            raise UnsafeEntry(rel, problem)

    def _census(self) -> Counter[tuple[int, int]]:
        """How many names each multiply-linked regular file has inside the submission."""
        if self._names is None:
            names: Counter[tuple[int, int]] = Counter()

            def count(folder: int) -> None:
                try:
                    with os.scandir(folder) as entries:
                        for entry in entries:
                            st = entry.stat(follow_symlinks=False)
                            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                                names[(st.st_dev, st.st_ino)] += 1
                            elif stat.S_ISDIR(st.st_mode):
                                try:
                                    count(os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW,
                                                  dir_fd=folder))
                                except OSError:
                                    pass
                finally:
                    os.close(folder)

            count(self._open_root())
            self._names = names
        return self._names

    def _is_store(self, rel: str) -> bool:
        for marker in ZARR_MARKERS:
            try:
                if self.kind(f"{rel}/{marker}") == "file":
                    return True
            except (FileNotFoundError, NotADirectoryError, UnsafeEntry):
                continue
        return False

    # ------------------------------------------------------------ other filesystems

    def _remote_kind(self, rel: str) -> Kind:
        path = join(self.root, rel)
        info = self.fs.info(path)  # FileNotFoundError when absent
        if problem := _remote_problem(info):
            raise UnsafeEntry(rel, problem)
        if info["type"] == "file":
            return "file"
        return "store" if any(self.fs.isfile(join(path, m)) for m in ZARR_MARKERS) else "folder"

    def _remote_walk(self, top: str, max_depth: int | None = None) -> Iterator[Entry]:
        base = join(self.root, top) if top else self.root
        try:
            found = self.fs.find(base, detail=True, withdirs=True,
                                 maxdepth=None if max_depth is None else max_depth + 1)
        except FileNotFoundError:
            return
        for path, info in sorted(found.items()):
            rel = path[len(self.root) + 1:] if path.startswith(self.root + "/") else path
            if not rel or rel == top and info.get("type") == "directory":
                continue
            problem = _remote_problem(info)
            yield Entry(rel, None if problem else "folder" if info.get("type") == "directory" else "file", problem)


def _remote_problem(info: dict) -> str | None:
    if info.get("islink"):
        return f"a symbolic link; {LINK_ADVICE}"
    if info.get("type") not in ("file", "directory"):
        return f"not a regular file (the store calls it {info.get('type')!r})"
    return None


def fold(path: str) -> str:
    """A path as a case-insensitive, normalising store would see it: two paths that fold alike collide there."""
    return unicodedata.normalize("NFC", path).casefold()


# ---------------------------------------------------------------- a landing zone of many submissions

READY = "READY"


def ready_submissions(landing_zone: str, depth: int = 3) -> list[Entry]:
    """The submission folders of a landing zone marked ready (a ``READY`` file beside their ``submission.yaml``),
    at most ``depth`` folders deep, as entries relative to it (sorted); a ``READY`` marker reached only through a
    link, or a submission folder that is a link, is listed with its problem."""
    zone = SubmissionFiles(landing_zone, follow_root=True)
    found = []
    for entry in zone.walk(max_depth=depth):
        parts = entry.path.split("/")
        if len(parts) > depth + 1:
            continue
        if parts[-1] == READY:
            folder = "/".join(parts[:-1])
            if not folder:
                continue  # the landing zone itself is not a submission
            found.append(Entry(folder, "folder" if entry.kind == "file" else None, entry.problem))
        elif entry.kind is None and entry.problem and "symbolic link" in entry.problem and len(parts) <= depth:
            found.append(Entry(entry.path, None, entry.problem))
    return sorted(found, key=lambda e: e.path)


def content_key(source: str) -> str:
    """What a submission folder holds, in one digest: its ``submission.yaml`` bytes and every entry's path, size and
    modification time (or its store's version tag), so that an unchanged submission is recognised without reading
    its files."""
    import hashlib

    files = SubmissionFiles(source)
    digest = hashlib.sha256()
    for entry in files.walk():
        if entry.kind != "file":
            digest.update(f"{entry.path}\0{entry.kind}\0{entry.problem}\n".encode("utf-8", "backslashreplace"))
            continue
        if files.local:
            fd, name = files._parent(entry.path)
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            finally:
                os.close(fd)
            stamp = f"{st.st_size}\0{st.st_mtime_ns}"
        else:
            info = files.fs.info(join(files.root, entry.path))
            stamp = "\0".join(str(info.get(k)) for k in ("size", "ETag", "etag", "mtime", "LastModified"))
        digest.update(f"{entry.path}\0{stamp}\n".encode("utf-8", "backslashreplace"))
    return digest.hexdigest()
