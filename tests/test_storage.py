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


# ---------------------------------------------------------------- copies onto a local disk


def _payload(n: int = 3 * 4096 + 123) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(n))


def test_a_local_copy_is_made_by_the_kernel_and_hashed_as_stored(tmp_path, monkeypatch):
    """From a local file onto a local disk: copy_file_range, a block a call, from where the file is open; the size
    and sha256 are of the copy as stored; nothing of the temporary name is left."""
    import os

    from zarrchive.archive.storage import copy_stream_hashing

    payload = _payload()
    (tmp_path / "src.bin").write_bytes(payload)
    calls = []
    kernel = os.copy_file_range

    def counting(src, dst, count, offset_src=None, offset_dst=None):
        calls.append(count)
        return kernel(src, dst, count, offset_src, offset_dst)

    monkeypatch.setattr(os, "copy_file_range", counting)
    fs, root = resolve(str(tmp_path / "out"))
    for start in (0, 1000, len(payload)):
        with open(tmp_path / "src.bin", "rb") as fin:
            fin.read(start)  # (a buffered reader has read ahead: the copy starts where the file is for its reader)
            size, digest = copy_stream_hashing(fin, fs, join(root, f"from{start}.bin"), block=4096)
        rest = payload[start:]
        assert (size, digest) == (len(rest), hashlib.sha256(rest).hexdigest())
        assert (tmp_path / "out" / f"from{start}.bin").read_bytes() == rest
    assert calls and set(calls) == {4096}
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"from0.bin", "from1000.bin", f"from{len(payload)}.bin"}


@pytest.mark.parametrize("code", ["EXDEV", "ENOSYS", "EOPNOTSUPP", "EINVAL"])
@pytest.mark.parametrize("after", [0, 2])
def test_where_the_kernel_cannot_copy_the_file_is_streamed_whole(tmp_path, monkeypatch, code, after):
    """Another filesystem, an old kernel, a file it cannot copy: at the first call or after some blocks, the copy
    starts again streamed and is whole."""
    import errno
    import os

    from zarrchive.archive.storage import copy_stream_hashing

    payload = _payload()
    (tmp_path / "src.bin").write_bytes(payload)
    kernel, calls = os.copy_file_range, []

    def refusing(src, dst, count, offset_src=None, offset_dst=None):
        calls.append(count)
        if len(calls) > after:
            raise OSError(getattr(errno, code), code)
        return kernel(src, dst, count, offset_src, offset_dst)

    monkeypatch.setattr(os, "copy_file_range", refusing)
    fs, root = resolve(str(tmp_path / "out"))
    with open(tmp_path / "src.bin", "rb") as fin:
        size, digest = copy_stream_hashing(fin, fs, join(root, "dst.bin"), block=4096)
    assert (size, digest) == (len(payload), hashlib.sha256(payload).hexdigest())
    assert (tmp_path / "out" / "dst.bin").read_bytes() == payload
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["dst.bin"]


def test_a_failing_kernel_copy_fails_and_leaves_nothing(tmp_path, monkeypatch):
    import errno
    import os

    from zarrchive.archive.storage import copy_stream_hashing

    (tmp_path / "src.bin").write_bytes(_payload())
    kernel, calls = os.copy_file_range, []

    def failing(src, dst, count, offset_src=None, offset_dst=None):
        calls.append(count)
        if len(calls) > 1:
            raise OSError(errno.EIO, "Input/output error")
        return kernel(src, dst, count, offset_src, offset_dst)

    monkeypatch.setattr(os, "copy_file_range", failing)
    fs, root = resolve(str(tmp_path / "out"))
    with open(tmp_path / "src.bin", "rb") as fin, pytest.raises(OSError, match="Input/output"):
        copy_stream_hashing(fin, fs, join(root, "dst.bin"), block=4096)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_streamed_copy_stored_otherwise_than_it_was_read_is_an_error_naming_it(tmp_path, monkeypatch):
    """Read back before it is moved into place: a disk that stores other bytes than were written fails the copy,
    naming it, and nothing appears."""
    import contextlib
    import io
    import os

    from zarrchive.archive import storage

    payload = _payload()

    class Flipping(io.FileIO):
        def write(self, data):
            data = bytearray(data)
            data[0] ^= 1
            return super().write(bytes(data))

    @contextlib.contextmanager
    def faulty(fs, path):
        tmp = f"{path}.part-test"
        os.makedirs(os.path.dirname(tmp), exist_ok=True)
        try:
            with Flipping(tmp, "w") as fh:
                yield fh
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    monkeypatch.setattr(storage, "open_for_commit", faulty)
    fs, root = resolve(str(tmp_path / "out"))
    with pytest.raises(OSError, match="dst.bin: the copy read back differs"):  # (from memory: no kernel copy)
        storage.copy_stream_hashing(io.BytesIO(payload), fs, join(root, "dst.bin"), block=4096)
    assert list((tmp_path / "out").iterdir()) == []
