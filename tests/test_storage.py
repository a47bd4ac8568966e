"""The same storage assertions on every backend: a local folder and S3 (moto server over real HTTP)."""

from __future__ import annotations

import hashlib
import json

import pytest
from zarrchive.tasks.intake import allocate_accession

from zarrchive.archive.storage import copy_hashing, join, read_json, resolve, sha256_stream, to_url, write_bytes_atomic
from zarrchive.config import ArchiveSettings


@pytest.fixture(params=["local", "s3"])
def location(request, tmp_path) -> str:
    """The URL of an empty archive location on each backend."""
    if request.param == "local":
        return str(tmp_path / "archive")
    bucket = request.getfixturevalue("s3_endpoint")()
    return f"s3://{bucket}/archive"


def test_copy_hashing_streams_and_reports_size_and_sha256(location, tmp_path):
    src = tmp_path / "src.bin"
    payload = bytes(range(256)) * 5000
    src.write_bytes(payload)
    fs, root = resolve(location)
    local, _ = resolve(str(tmp_path))
    size, sha = copy_hashing(local, str(src), fs, join(root, "a/b/src.bin"), block=4096)
    assert (size, sha) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert sha256_stream(fs, join(root, "a/b/src.bin")) == (size, sha)
    assert not [p for p in fs.find(root) if ".part" in p]


def test_write_bytes_and_read_json_round_trip(location):
    fs, root = resolve(location)
    sha = write_bytes_atomic(fs, join(root, "x/doc.json"), json.dumps({"a": 1}).encode())
    assert read_json(fs, join(root, "x/doc.json")) == {"a": 1}
    assert sha == hashlib.sha256(b'{"a": 1}').hexdigest()
    assert resolve(to_url(fs, root)) == (fs, root)


def test_accessions_are_claimed_exclusively_and_stable(location, tmp_path):
    settings = ArchiveSettings(accession_prefix="ZA", accession_digits=4)
    first = allocate_accession(str(tmp_path / "sub-a"), location, settings)
    second = allocate_accession(str(tmp_path / "sub-b"), location, settings)
    assert (first, second) == ("ZA0001", "ZA0002")
    assert allocate_accession(str(tmp_path / "sub-a"), location, settings) == "ZA0001"
    fs, root = resolve(location)
    with pytest.raises(FileExistsError):
        with fs.open(join(root, "ZA0002", "accession.json"), "xb") as fh:
            fh.write(b"{}")


def test_ingest_from_s3_landing_zone_into_s3_archive(s3_endpoint, tmp_path, config_file, prefect_server):
    import fsspec
    from builders import ome_tiff, random_image, submission
    from zarrchive.flows.ingest import ingest

    local = submission(tmp_path / "sub", [{"path": "img/a.ome.tif"}, {"path": "notes.txt", "kind": "attachment"}])
    ome_tiff(local / "img" / "a.ome.tif", random_image((1, 1, 40, 30)), "CZYX", {"x": 0.3, "y": 0.3})
    (local / "notes.txt").write_text("notes\n")
    bucket = s3_endpoint()
    fs = fsspec.filesystem("s3")
    fs.put(str(local) + "/", f"{bucket}/landing/sub/", recursive=True)

    pub = ingest(submission=f"s3://{bucket}/landing/sub", archive=f"s3://{bucket}/archive", config=config_file())
    assert pub.status == "published" and pub.version_uri == f"s3://{bucket}/archive/ZA000001/v1"
    vdir = f"{bucket}/archive/ZA000001/v1"
    manifest = json.loads(fs.cat_file(f"{vdir}/manifest.json"))
    listed = {f["path"]: f for f in manifest["files"]}
    stored = {p[len(vdir) + 1:] for p in fs.find(vdir)} - {"manifest.json"}
    assert set(listed) == stored
    for rel, entry in listed.items():
        assert hashlib.sha256(fs.cat_file(f"{vdir}/{rel}")).hexdigest() == entry["sha256"]
    assert fs.cat_file(f"{vdir}/originals/img/a.ome.tif") == (local / "img" / "a.ome.tif").read_bytes()
    again = ingest(submission=f"s3://{bucket}/landing/sub", archive=f"s3://{bucket}/archive", config=config_file())
    assert again.status == "unchanged" and again.version == 1
    fs.invalidate_cache()  # a listing holds no Content-Type: ask for each object itself
    types = {rel: fs.info(f"{vdir}/{rel}").get("ContentType") for rel in (
        "index.html", "qc/index.html", "manifest.json", "ro-crate-metadata.json", "qc/report.json",
        "images/img_a.ome.zarr/OME/METADATA.ome.xml", "originals/notes.txt")}
    assert types == {"index.html": "text/html; charset=utf-8", "qc/index.html": "text/html; charset=utf-8",
                     "manifest.json": "application/json", "ro-crate-metadata.json": "application/json",
                     "qc/report.json": "application/json", "originals/notes.txt": "text/plain; charset=utf-8",
                     "images/img_a.ome.zarr/OME/METADATA.ome.xml": "application/xml"}  # served, not downloaded
    assert fs.info(f"{bucket}/archive/changes.jsonl").get("ContentType") == "application/x-ndjson"


# ---------------------------------------------------------------- publish's copies: by the kernel, read back


def _payload(n: int = 3 * 4096 + 123) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(n))


def _kernel(monkeypatch, behave):
    """Route os.copy_file_range through ``behave(call number, real, *args)``; the calls' counts."""
    import os

    real, calls = os.copy_file_range, []

    def routed(src, dst, count, offset_src=None, offset_dst=None):
        calls.append(count)
        return behave(len(calls), real, src, dst, count, offset_src, offset_dst)

    monkeypatch.setattr(os, "copy_file_range", routed)
    return calls


def test_copy_as_stored_onto_a_disk_is_made_by_the_kernel_and_read_back_and_onto_s3_streamed(location, tmp_path,
                                                                                           monkeypatch):
    """Onto a local disk: copy_file_range, a block a call, the size and sha256 of the copy as stored (read back);
    onto an object store: streamed and hashed as read (the caller reads it back). Nothing of a temporary name."""
    from zarrchive.archive.storage import copy_as_stored

    payload = _payload()
    (tmp_path / "src.bin").write_bytes(payload)
    calls = _kernel(monkeypatch, lambda _n, real, *args: real(*args))
    fs, root = resolve(location)
    size, digest, read_back = copy_as_stored(str(tmp_path / "src.bin"), fs, join(root, "a/dst.bin"), block=4096)
    assert (size, digest) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert fs.cat_file(join(root, "a/dst.bin")) == payload and not [p for p in fs.find(root) if ".part" in p]
    local = not location.startswith("s3://")
    assert read_back is local and (set(calls) == {4096} if local else calls == [])


@pytest.mark.parametrize("code", ["EXDEV", "ENOSYS", "EOPNOTSUPP", "EINVAL"])
@pytest.mark.parametrize("after", [0, 2])
def test_where_the_kernel_cannot_copy_the_file_is_streamed_whole(tmp_path, monkeypatch, code, after):
    """Another filesystem, an old kernel, a file it cannot copy: at the first call or after some blocks, the copy
    starts again streamed, whole, hashed as read (not read back)."""
    import errno

    from zarrchive.archive.storage import copy_as_stored

    def refusing(n, real, *args):
        if n > after:
            raise OSError(getattr(errno, code), code)
        return real(*args)

    payload = _payload()
    (tmp_path / "src.bin").write_bytes(payload)
    _kernel(monkeypatch, refusing)
    fs, root = resolve(str(tmp_path / "out"))
    size, digest, read_back = copy_as_stored(str(tmp_path / "src.bin"), fs, join(root, "dst.bin"), block=4096)
    assert (size, digest, read_back) == (len(payload), hashlib.sha256(payload).hexdigest(), False)
    assert (tmp_path / "out" / "dst.bin").read_bytes() == payload
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["dst.bin"]


def test_copy_as_stored_linked_on_one_filesystem_is_the_same_file_read_back(location, tmp_path, monkeypatch):
    """Asked to link, onto the same local filesystem: a hard link (the same inode, nothing copied), read back as
    stored, at no temporary name; the source unchanged. Onto an object store: streamed as without."""
    import os

    from zarrchive.archive.storage import copy_as_stored

    payload = _payload()
    (tmp_path / "src.bin").write_bytes(payload)
    calls = _kernel(monkeypatch, lambda _n, real, *args: real(*args))
    fs, root = resolve(location)
    size, digest, read_back = copy_as_stored(str(tmp_path / "src.bin"), fs, join(root, "a/dst.bin"), block=4096,
                                             link=True)
    assert (size, digest) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert fs.cat_file(join(root, "a/dst.bin")) == payload and not [p for p in fs.find(root) if ".part" in p]
    assert (tmp_path / "src.bin").read_bytes() == payload and calls == []
    if location.startswith("s3://"):
        assert read_back is False
    else:
        assert read_back is True and os.path.samefile(tmp_path / "src.bin", join(root, "a/dst.bin"))
        assert os.stat(tmp_path / "src.bin").st_nlink == 2
        # into the folder now there (made by the first, when it was missing)
        assert copy_as_stored(str(tmp_path / "src.bin"), fs, join(root, "a/again.bin"), block=4096, link=True)[2]
        assert os.stat(tmp_path / "src.bin").st_nlink == 3 and sorted(os.listdir(join(root, "a"))) == [
            "again.bin", "dst.bin"]


@pytest.mark.parametrize("code", ["EXDEV", "EPERM", "EMLINK", "EOPNOTSUPP", "ENOSYS", "EACCES"])
def test_where_the_file_cannot_be_linked_the_kernel_copies_it(tmp_path, monkeypatch, code):
    """Another filesystem, links not supported or not allowed, too many links: a copy made by the kernel and read
    back instead, sharing nothing with the source; nothing of a temporary name."""
    import errno
    import os

    from zarrchive.archive.storage import copy_as_stored

    def refused(*args, **kwargs):
        raise OSError(getattr(errno, code), code)

    monkeypatch.setattr(os, "link", refused)
    calls = _kernel(monkeypatch, lambda _n, real, *args: real(*args))
    payload = _payload()
    (tmp_path / "src.bin").write_bytes(payload)
    fs, root = resolve(str(tmp_path / "out"))
    size, digest, read_back = copy_as_stored(str(tmp_path / "src.bin"), fs, join(root, "dst.bin"), block=4096,
                                             link=True)
    assert (size, digest, read_back) == (len(payload), hashlib.sha256(payload).hexdigest(), True) and calls
    assert not os.path.samefile(tmp_path / "src.bin", tmp_path / "out" / "dst.bin")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["dst.bin"]


@pytest.mark.parametrize("why", ["a setgid folder of another group", "a default access list",
                                 "an access list of its own", "another security label", "a link swapped in since"])
def test_a_file_that_would_not_look_as_a_new_one_there_is_copied_not_linked(tmp_path, monkeypatch, why):
    """A link keeps its file's group, access list and security label, where a file made in the folder takes the
    folder's: then (and when what was linked is no longer a regular file) a copy is made instead."""
    import os
    import stat

    from zarrchive.archive import storage

    payload = _payload()
    (tmp_path / "src.bin").write_bytes(payload)
    out = tmp_path / "out"
    out.mkdir()
    src, dst = str(tmp_path / "src.bin"), str(out / "dst.bin")
    attrs = {str(out): [], src: []}
    if why == "a setgid folder of another group":
        os.chown(out, -1, os.stat(src).st_gid + 4242)
        os.chmod(out, os.stat(out).st_mode | stat.S_ISGID)
    elif why == "a default access list":
        attrs[str(out)] = [storage._DEFAULT_ACL]
    elif why == "an access list of its own":
        attrs[src] = [storage._ACCESS_ACL]
    elif why == "another security label":
        attrs = {str(out): [storage._SELINUX], src: [storage._SELINUX]}
        labels = {str(out): b"system_u:object_r:httpd_sys_content_t:s0", src: b"system_u:object_r:tmp_t:s0"}
        monkeypatch.setattr(os, "getxattr", lambda path, name: labels[str(path)])
    else:
        monkeypatch.setattr(os, "link", lambda a, b, **kw: os.symlink(a, b))
    if why != "a link swapped in since":
        monkeypatch.setattr(os, "listxattr", lambda path: attrs.get(str(path), []))
    fs, root = resolve(str(out))
    size, digest, _read_back = storage.copy_as_stored(src, fs, dst, block=4096, link=True)
    assert (size, digest) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert not os.path.islink(dst) and not os.path.samefile(src, dst) and os.stat(src).st_nlink == 1
    assert sorted(p.name for p in out.iterdir()) == ["dst.bin"]
    if why == "another security label":  # the same label: linked
        labels[str(out)] = labels[src]
        storage.copy_as_stored(src, fs, str(out / "same.bin"), block=4096, link=True)
        assert os.path.samefile(src, out / "same.bin")


@pytest.mark.parametrize("kind", ["a symbolic link", "a folder"])
def test_only_a_regular_file_is_linked(tmp_path, kind):
    """A symbolic link is never linked as itself (its target's bytes are copied), nor anything but a regular file."""
    import os

    from zarrchive.archive.storage import copy_as_stored

    payload = _payload()
    (tmp_path / "target.bin").write_bytes(payload)
    src = tmp_path / "src"
    fs, root = resolve(str(tmp_path / "out"))
    if kind == "a symbolic link":
        src.symlink_to(tmp_path / "target.bin")
        size, digest, _read_back = copy_as_stored(str(src), fs, join(root, "dst.bin"), block=4096, link=True)
        assert (size, digest) == (len(payload), hashlib.sha256(payload).hexdigest())
        dst = tmp_path / "out" / "dst.bin"
        assert not dst.is_symlink() and not os.path.samefile(dst, tmp_path / "target.bin")
        return
    src.mkdir()
    with pytest.raises(OSError):
        copy_as_stored(str(src), fs, join(root, "dst.bin"), block=4096, link=True)
    assert not (tmp_path / "out" / "dst.bin").exists()


@pytest.mark.parametrize("fault", ["an I/O error", "a short copy"])
def test_a_failing_or_short_kernel_copy_fails_naming_it_and_leaves_nothing(tmp_path, monkeypatch, fault):
    """A kernel copy that fails, or that ends before the file does (it reports no more bytes: a filesystem's bug),
    is an error naming the copy; nothing appears."""
    import errno

    from zarrchive.archive.storage import copy_as_stored

    def faulty(n, real, *args):
        if n > 1 and fault == "an I/O error":
            raise OSError(errno.EIO, "Input/output error")
        return real(*args) if n == 1 else 0

    (tmp_path / "src.bin").write_bytes(_payload())
    _kernel(monkeypatch, faulty)
    fs, root = resolve(str(tmp_path / "out"))
    with pytest.raises(OSError, match="Input/output" if fault == "an I/O error" else
                       r"dst.bin: the kernel copied 4096 of the file's 12411 bytes"):
        copy_as_stored(str(tmp_path / "src.bin"), fs, join(root, "dst.bin"), block=4096)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_file_committed_appears_whole_in_its_folder_made_when_missing_and_a_failed_one_leaves_nothing(
        location, tmp_path, monkeypatch):
    """``open_for_commit`` on every backend: into a folder that exists, into nested folders that do not yet (made),
    a file at a name with no folder (the current one); a write that fails leaves neither the file nor a temporary
    name, and where a file stands in for the folder the write fails and leaves nothing either."""
    from zarrchive.archive.storage import open_for_commit

    fs, root = resolve(location)
    for path in ("one.bin", "a/b/c/two.bin", "a/b/c/three.bin"):  # (the last into the folder just made)
        with open_for_commit(fs, join(root, path)) as fh:
            fh.write(path.encode())
        assert fs.cat_file(join(root, path)) == path.encode()
    with pytest.raises(RuntimeError), open_for_commit(fs, join(root, "a/b/failed.bin")) as fh:
        fh.write(b"half")
        raise RuntimeError("the writer failed")
    block = getattr(fs, "default_block_size", 0)
    if location.startswith("s3://"):  # past one block an object store has begun the upload in parts: aborted
        with pytest.raises(RuntimeError), open_for_commit(fs, join(root, "a/b/large.bin")) as fh:
            fh.write(b"\0" * (block + 1024))
            fh.flush()
            assert fh.mpu  # (the upload in parts was begun)
            raise RuntimeError("the writer failed")
        assert not fs.call_s3("list_multipart_uploads", Bucket=root.split("/")[0]).get("Uploads")
        # the abort fails too (the store is what failed): the write's own error, and nothing committed later
        import gc

        import s3fs

        def unreachable(self):
            raise OSError("the object store does not answer")

        monkeypatch.setattr(s3fs.core.S3File, "discard", unreachable)
        with pytest.raises(RuntimeError, match="the writer failed"), \
                open_for_commit(fs, join(root, "a/b/unaborted.bin")) as fh:
            fh.write(b"\0" * (block + 1024))
            fh.flush()
            raise RuntimeError("the writer failed")
        del fh
        gc.collect()  # (an unclosed fsspec file commits when it is collected)
        fs.invalidate_cache()
        assert not fs.exists(join(root, "a/b/unaborted.bin"))
    listed = sorted(p.rsplit("/", 1)[-1] for p in fs.find(root))
    assert listed == ["one.bin", "three.bin", "two.bin"]
    if location.startswith("s3://"):
        return
    monkeypatch.chdir(tmp_path)  # a bare name: the current folder
    with open_for_commit(fs, "bare.bin") as fh:
        fh.write(b"bare")
    assert (tmp_path / "bare.bin").read_bytes() == b"bare"
    (tmp_path / "archive" / "plain").write_bytes(b"a file, not a folder")
    with pytest.raises((NotADirectoryError, FileExistsError)) as failed, \
            open_for_commit(fs, join(root, "plain/x.bin")) as fh:
        fh.write(b"x")
    assert failed.value.__context__ is None  # the open's own error, not another raised while cleaning up
    assert sorted(p.name for p in (tmp_path / "archive").iterdir()) == ["a", "one.bin", "plain"]
    assert sorted(p.name for p in (tmp_path / "archive" / "a" / "b").iterdir()) == ["c"]
