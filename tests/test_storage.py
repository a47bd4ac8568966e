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
