"""Storage through fsspec: one URL syntax for local folders, s3:// and the rest.

Copies write to a temporary name and move into place only when complete, so a
reader never sees half a file. They stream in blocks, hashing what they read;
``copy_as_stored`` (publish's copies of what it has digests of) hard-links a
local file into place when asked and on the same filesystem (no bytes written
at all), or has the kernel copy it onto a local disk (``copy_file_range``: no
bytes through this process), and hashes what is stored, read back.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import posixpath
import re
import stat
import uuid
from typing import Any, Iterable, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

BLOCK = 8 * 1024 * 1024


# fsspec options (credentials among them) by location prefix, set when a run starts (``use_options``)
_OPTIONS: dict[str, dict[str, Any]] = {}


def use_options(prefix: str, options: dict[str, Any]) -> None:
    """Open every location under ``prefix`` with these fsspec options (the longest matching prefix wins)."""
    _OPTIONS[prefix] = dict(options)


def options_for(url: str) -> dict[str, Any]:
    matches = [p for p in _OPTIONS if url.startswith(p)]
    return dict(_OPTIONS[max(matches, key=len)]) if matches else {}


def resolve(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and path for ``url``; local paths become absolute."""
    fs, path = fsspec.core.url_to_fs(url, **options_for(url))
    if isinstance(fs, LocalFileSystem):
        path = os.path.abspath(path)
    return fs, path.rstrip("/") or "/"


def to_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A URL that ``resolve`` turns back into (fs, path)."""
    return fs.unstrip_protocol(path) if not isinstance(fs, LocalFileSystem) else path


def join(path: str, *parts: str) -> str:
    return "/".join([path.rstrip("/"), *(p.strip("/") for p in parts if p)])


def sha256_stream(fs: fsspec.AbstractFileSystem, path: str, block: int = BLOCK) -> tuple[int, str]:
    """Size and sha256 of one object, read in blocks."""
    digest = hashlib.sha256()
    size = 0
    with fs.open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".json": "application/json", ".jsonl": "application/x-ndjson",
                 ".png": "image/png", ".xml": "application/xml", ".txt": "text/plain; charset=utf-8",
                 ".css": "text/css", ".js": "text/javascript", ".yaml": "application/yaml", ".tif": "image/tiff",
                 ".tiff": "image/tiff", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


def upload_options(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, str]:
    """What an object store needs to serve ``path`` as what it is: its Content-Type (on S3; a browser then shows
    a landing page instead of downloading it). A Zarr chunk or an unknown kind stays binary."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    if not {"s3", "s3a"} & set(protocols):
        return {}
    name = path.rsplit("/", 1)[-1].lower()
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    if name.endswith(".ome.xml"):
        suffix = ".xml"
    kind = CONTENT_TYPES.get(suffix)
    return {"ContentType": kind} if kind else {}


@contextlib.contextmanager
def open_for_commit(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[Any]:
    """A writable file that appears at ``path`` only once closed without error.

    On a local disk: a temporary name moved into place; an object store commits
    an upload only when it is closed, and an aborted one leaves nothing.
    """
    parent = posixpath.dirname(path)  # ("" for a bare name: the current folder)
    if not isinstance(fs, LocalFileSystem):
        if parent:
            fs.makedirs(parent, exist_ok=True)
        fh = fs.open(path, "wb", **upload_options(fs, path))
        try:
            yield fh
        except BaseException:
            # Closing would commit what was written so far (fsspec's files commit on close, in a ``with``
            # too): the upload is aborted instead, and the file marked closed so that nothing commits it later
            # (not even when the abort fails, as it will when the store is what failed). The error raised is
            # the write's own.
            try:
                with contextlib.suppress(Exception):
                    if discard := getattr(fh, "discard", None):
                        discard()
            finally:
                with contextlib.suppress(AttributeError):  # (a file whose ``closed`` cannot be set)
                    fh.closed = True
            raise
        fh.close()
        return
    tmp, moved = f"{path}.part-{uuid.uuid4().hex[:8]}", False
    # The folder is made when the file cannot be opened for want of it, not asked for first: a version of 10,000
    # small images writes 150,000 objects, nearly all into folders that already exist.
    try:
        opened = open(tmp, "wb")
    except FileNotFoundError:
        if not parent:
            raise
        os.makedirs(parent, exist_ok=True)
        opened = open(tmp, "wb")
    try:
        with opened as fh:
            yield fh
        os.replace(tmp, path)
        moved = True
    finally:
        if not moved:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def copy_hashing(
    src_fs: fsspec.AbstractFileSystem,
    src: str,
    dst_fs: fsspec.AbstractFileSystem,
    dst: str,
    block: int = BLOCK,
) -> tuple[int, str]:
    """Stream ``src`` to ``dst`` hashing on the way; ``dst`` appears only when complete."""
    with src_fs.open(src, "rb") as fin:
        return copy_stream_hashing(fin, dst_fs, dst, block)


def copy_stream_hashing(fin: Any, dst_fs: fsspec.AbstractFileSystem, dst: str, block: int = BLOCK) -> tuple[int, str]:
    """Stream the open file ``fin`` to ``dst`` hashing what was read on the way; ``dst`` appears only when
    complete."""
    with open_for_commit(dst_fs, dst) as fout:
        return _stream(fin, fout, block)


def _stream(fin: Any, fout: Any, block: int) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    while chunk := fin.read(block):
        digest.update(chunk)
        fout.write(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def copy_as_stored(src: str, dst_fs: fsspec.AbstractFileSystem, dst: str, block: int = BLOCK, link: bool = False
                   ) -> tuple[int, str, bool]:
    """Copy the local file ``src`` to ``dst``, which appears only when complete: its size and sha256, and whether
    they are of ``dst`` as stored, read back. With ``link``, onto the same local filesystem, ``dst`` becomes a hard
    link to ``src`` where the file would look as a new one there would (``_links_as_new``): nothing is written,
    and what is read back is ``src``'s own file, so the check is that it still holds what the caller hashed
    before. Otherwise onto a local disk the kernel copies it (``copy_file_range``; a copy shorter than the file is
    an ``OSError`` naming ``dst``), and the copy is read back. Either way nothing is hashed on the way, so the
    caller compares the digest with one it had before (a store's tree digest, an original's sha256 from fetch).
    Elsewhere, or where the kernel can neither link nor copy it, it is streamed and hashed as read (False: the
    caller reads it back)."""
    local = isinstance(dst_fs, LocalFileSystem)
    if local and link and (linked := _linked_as_stored(src, dst, block)):
        return (*linked, True)
    kernel = local and hasattr(os, "copy_file_range")
    with open(src, "rb") as fin, open_for_commit(dst_fs, dst) as fout:
        if kernel and _copied_by_kernel(fin, fout, block, dst):
            return (*sha256_stream(dst_fs, fout.name, block), True)
        return (*_stream(fin, fout, block), False)


# os.link cannot link these two names: another filesystem, links not supported (EINVAL on some) or not allowed, too
# many links
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EACCES,
            errno.EINVAL}


def _linked_as_stored(src: str, dst: str, block: int) -> tuple[int, str] | None:
    """Hard-link the regular local file ``src`` at a temporary name beside ``dst``, hash it as stored, move it into
    place: its size and sha256, or None (nothing left) when ``src`` is not a regular file, would not look there as
    a new file would, or cannot be linked."""
    file = os.lstat(src)
    if not stat.S_ISREG(file.st_mode):
        return None
    parent = os.path.dirname(dst) or "."
    try:
        as_new = _links_as_new(src, file, parent)
    except FileNotFoundError:  # its folder made when missing, not asked for first (as ``open_for_commit``)
        os.makedirs(parent, exist_ok=True)
        as_new = _links_as_new(src, file, parent)
    if not as_new:
        return None
    tmp = f"{dst}.part-{uuid.uuid4().hex[:8]}"
    try:
        os.link(src, tmp, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _NO_LINK:
            return None
        raise
    try:
        if not stat.S_ISREG(os.lstat(tmp).st_mode):  # (``src`` replaced by a link since: not this way)
            return None
        size, digest = sha256_stream(LocalFileSystem(), tmp, block)
        os.replace(tmp, dst)
        return size, digest
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


_ACCESS_ACL, _DEFAULT_ACL = "system.posix_acl_access", "system.posix_acl_default"
_SELINUX = "security.selinux"


def _links_as_new(src: str, file: os.stat_result, parent: str) -> bool:
    """Whether a link to ``src`` (its status ``file``) in ``parent`` is what a file created there would be: a link keeps its file's group,
    access list and security label, where a new file takes the folder's group (a setgid folder), its default
    access list (none of its own otherwise), and its label. A group-shared archive, or one served under SELinux,
    would otherwise have originals that cannot be read where every other object can."""
    folder = os.stat(parent)
    if folder.st_mode & stat.S_ISGID and file.st_gid != folder.st_gid:
        return False
    if not hasattr(os, "listxattr"):  # (no extended attributes here: group and mode are all there is)
        return True
    try:
        names = {path: os.listxattr(path) for path in (src, parent)}
        if _ACCESS_ACL in names[src] or _DEFAULT_ACL in names[parent]:
            return False
        labels = [os.getxattr(path, _SELINUX) if _SELINUX in names[path] else None for path in (src, parent)]
    except OSError:  # attributes cannot be read: copy, which needs none of this
        return False
    return labels[0] == labels[1]


# Copies of local files smaller than this onto a local disk are made one after another, larger ones (and copies from
# or to an object store) in threads: small files created from several threads at once contend in the kernel (10,000
# files of 0.3-30 KB from 4 threads into one folder: about twice the kernel's CPU of one thread, and slower), while a
# large file's copy is bytes (2.1 GB in 64 files: 1.8-2.3 s in one thread, 1.0-1.1 s in three, on two cores).
SMALL_COPY = 1 << 20


# copy_file_range cannot copy between these two files (another filesystem, an old kernel, a special file): stream
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM,
                   errno.ETXTBSY}


def _copied_by_kernel(fin: Any, fout: Any, block: int, dst: str) -> bool:
    """Copy the regular local file ``fin`` whole into the fresh local file ``fout`` inside the kernel, a block a
    call; False (``fout`` left empty, ``fin`` where it was: at its start) when the kernel cannot copy them. A copy
    that ends before the file's end is an ``OSError`` naming ``dst``."""
    src, out = fin.fileno(), fout.fileno()
    st = os.fstat(src)
    if not stat.S_ISREG(st.st_mode):
        return False
    done = 0
    try:
        while n := os.copy_file_range(src, out, block, done, done):
            done += n
    except OSError as exc:
        if exc.errno not in _NO_KERNEL_COPY:
            raise
        os.ftruncate(out, 0)
        return False
    if done != st.st_size:
        raise OSError(errno.EIO, f"{dst}: the kernel copied {done} of the file's {st.st_size} bytes")
    return True


ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")  # what a Zarr store (v3, v2) has at its root


def is_zarr_store(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """A folder that is a Zarr store: submitted, fetched and published as one entry (its objects inside)."""
    return fs.isdir(path) and any(fs.isfile(join(path, marker)) for marker in ZARR_MARKERS)


def store_objects(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    """Relative paths of every object under ``root`` (a folder or prefix), sorted."""
    base = root.rstrip("/")
    return sorted(p[len(base) + 1:] for p in fs.find(base))


def store_tree_digest(fs: fsspec.AbstractFileSystem, root: str) -> tuple[int, str]:
    """Total size and tree digest of every object of a store, read in place."""
    entries, total = [], 0
    for rel in store_objects(fs, root):
        size, sha256 = sha256_stream(fs, join(root, rel))
        entries.append((rel, sha256))
        total += size
    return total, tree_digest(entries)


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` so that it appears whole or not at all; return its sha256."""
    with open_for_commit(fs, path) as fh:
        fh.write(data)
    return hashlib.sha256(data).hexdigest()


def write_bytes_exclusive(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> str:
    """Write ``data`` to ``path`` whole, only if nothing is there yet (``FileExistsError`` otherwise): a local
    temporary file hard-linked into place, ``If-None-Match: *`` on an object store. Return its sha256."""
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    if isinstance(fs, LocalFileSystem):
        tmp = f"{path}.part-{uuid.uuid4().hex[:8]}"
        try:
            for attempt in range(3):
                try:
                    with open(tmp, "wb") as fh:
                        fh.write(data)
                    break
                except FileNotFoundError:  # another process removed the empty folder in between (a claim let go)
                    if attempt == 2:
                        raise
                    os.makedirs(parent, exist_ok=True)
            os.link(tmp, path)  # atomic, and fails when the name exists
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    else:
        with fs.open(path, "xb", **upload_options(fs, path)) as fh:
            fh.write(data)
    return hashlib.sha256(data).hexdigest()


def dumps(obj: Any) -> bytes:
    """Canonical JSON bytes (sorted keys, indented, trailing newline)."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode()


def read_json(fs: fsspec.AbstractFileSystem, path: str) -> Any:
    with fs.open(path, "rb") as fh:
        return json.load(fh)


def tree_digest(entries: Iterable[tuple[str, str]]) -> str:
    """One sha256 for a tree of objects (a Zarr store): over sorted 'relative-path sha256' lines.

    It changes when any object's bytes, name, or the set of objects changes.
    """
    lines = sorted(f"{path} {sha256}\n" for path, sha256 in entries)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def walk_files(root: str) -> Iterator[str]:
    """Relative paths of every file under a local folder, sorted."""
    out = []
    for base, _dirs, files in os.walk(root):
        for name in files:
            out.append(os.path.relpath(os.path.join(base, name), root).replace(os.sep, "/"))
    yield from sorted(out)


# zarr's local store writes <key>.<32 hex digits>.partial and renames it into place
_UNFINISHED_ZARR_WRITE = re.compile(r"\.[0-9a-f]{32}\.partial$")


def remove_unfinished_writes(root: str) -> list[str]:
    """Delete what a process killed mid-write left under a local Zarr store (a temporary file never renamed into
    place: the object itself is whole, or rewritten by the task's retry); return their relative paths."""
    left = [rel for rel in walk_files(root) if _UNFINISHED_ZARR_WRITE.search(rel)]
    for rel in left:
        os.remove(os.path.join(root, rel))
    return left
