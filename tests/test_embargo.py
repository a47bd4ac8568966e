"""Embargo kept: a version released in the future is nowhere public until its date, then released verified.

On a folder archive (its private location beside it) and on S3 (a private bucket), listing every object of
the public location before the release, and auditing it after.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from builders import ome_tiff, random_image, submission
from zarrchive.flows.ingest import ingest
from zarrchive.tasks.release import due, release_version

from zarrchive.archive import fixity
from zarrchive.archive.storage import resolve
from zarrchive.archive.versions import manifests
from zarrchive.cli import main

LATER = dt.date.today() + dt.timedelta(days=400)

pytestmark = pytest.mark.usefixtures("prefect_server")


def embargoed_submission(folder: Path, release: dt.date = LATER) -> Path:
    sub = submission(folder, [{"path": "a.ome.tif"}, {"path": "notes.txt", "kind": "attachment"}],
                     release_date=release.isoformat())
    ome_tiff(sub / "a.ome.tif", random_image((1, 2, 40, 40)), "CZYX", {"x": 0.5, "y": 0.5})
    (sub / "notes.txt").write_text("to be published with the paper\n")
    return sub


def listing(location: str) -> list[str]:
    fs, root = resolve(location)
    fs.invalidate_cache()
    return sorted(p[len(root) + 1:] for p in fs.find(root)) if fs.exists(root) else []


@pytest.fixture(params=["folder", "s3"])
def locations(request, tmp_path, config_file):
    """(public archive, private location, config file) on a folder or on S3 (a bucket each)."""
    if request.param == "folder":
        archive = str(tmp_path / "archive")
        return archive, f"{archive}-private", config_file()
    new_bucket = request.getfixturevalue("s3_endpoint")
    archive, private = f"s3://{new_bucket()}/archive", f"s3://{new_bucket()}/embargoed"
    return archive, private, config_file(archive={"accession_prefix": "ZA", "accession_digits": 6,
                                                  "private": private})


def test_an_embargoed_version_is_nowhere_public_until_it_is_released_verified(tmp_path, locations):
    archive, private, config = locations
    pub = ingest(str(embargoed_submission(tmp_path / "sub")), archive, config)
    assert pub.status == "published" and pub.embargoed_until == LATER
    assert pub.version_uri.startswith(private.rstrip("/")) and pub.url.startswith(private.rstrip("/"))
    public = listing(archive)
    assert not [p for p in public if p.startswith("ZA000001/v1") or p.endswith(("versions.json", "changes.jsonl"))
                or "_changes" in p], public
    [manifest] = manifests(private, "ZA000001")
    assert manifest["embargoed"] is True and manifest["release_date"] == LATER.isoformat()
    fs, root = resolve(private)
    crate = json.loads(fs.cat(f"{root}/ZA000001/v1/ro-crate-metadata.json"))
    assert next(n for n in crate["@graph"] if n["@id"] == "./")["datePublished"] == LATER.isoformat()

    assert due(archive, private, LATER - dt.timedelta(days=1)) == []
    assert due(archive, private, LATER) == [("ZA000001", 1, LATER)]
    released = release_version(archive, private, "ZA000001", 1, today=LATER)
    assert released["embargoed"] is False and released["released"]["date"] == LATER.isoformat()
    assert fixity.audit(archive, "ZA000001").ok  # every object public, each what the manifest says
    assert not [p for p in listing(private) if "/v1/" in p]  # the private copy is gone
    afs, aroot = resolve(archive)
    index = json.loads(afs.cat(f"{aroot}/ZA000001/versions.json"))["versions"]
    assert [v["version"] for v in index] == [1]
    crate = json.loads(afs.cat(f"{aroot}/ZA000001/v1/ro-crate-metadata.json"))
    assert next(n for n in crate["@graph"] if n["@id"] == "./")["datePublished"] == LATER.isoformat()
    assert any(n.get("zarrchive:stage") == "release" for n in crate["@graph"])
    [event] = [json.loads(line) for line in afs.cat(f"{aroot}/changes.jsonl").decode().splitlines()]
    manifest_sha = __import__("hashlib").sha256(afs.cat(f"{aroot}/ZA000001/v1/manifest.json")).hexdigest()
    assert event["event"] == "released" and event["manifest_sha256"] == manifest_sha


def test_a_damaged_private_copy_is_not_released_and_is_kept(tmp_path, config_file):
    archive = str(tmp_path / "archive")
    pub = ingest(str(embargoed_submission(tmp_path / "sub")), archive, config_file())
    original = Path(pub.version_uri) / "originals" / "notes.txt"
    original.write_bytes(b"X" + original.read_bytes()[1:])
    from zarrchive.errors import VerificationError

    with pytest.raises(VerificationError, match="notes.txt: the private copy is not what its manifest says"):
        release_version(archive, f"{archive}-private", "ZA000001", 1, today=LATER)
    assert not (Path(archive) / "ZA000001" / "v1").exists() and Path(pub.version_uri, "manifest.json").exists()


def test_a_public_copy_damaged_on_its_way_is_found_by_reading_it_back_and_nothing_is_released(
        tmp_path, config_file, monkeypatch):
    """The storage corrupts an object as it is written (the bytes sent were right): the release reads each public
    object back before it commits, so the version is not released, nothing of it stays public, the private copy
    is kept."""
    from zarrchive.errors import VerificationError
    from zarrchive.tasks import release as release_module

    archive = str(tmp_path / "archive")
    pub = ingest(str(embargoed_submission(tmp_path / "sub")), archive, config_file())
    copy = release_module._copy_verified

    def corrupting(src_fs, src, dst_fs, dst, entry):
        copy(src_fs, src, dst_fs, dst, entry)
        if entry["path"] == "originals/notes.txt":
            Path(dst).write_bytes(b"Z" + Path(dst).read_bytes()[1:])

    monkeypatch.setattr(release_module, "_copy_verified", corrupting)
    with pytest.raises(VerificationError, match="the public copy is not what the manifest says.*notes.txt"):
        release_version(archive, f"{archive}-private", "ZA000001", 1, today=LATER)
    assert not (Path(archive) / "ZA000001" / "v1").exists()
    assert fixity.quick_problems(*resolve(pub.version_uri), json.loads(
        Path(pub.version_uri, "manifest.json").read_text())) == []  # the private copy is whole


def test_a_curator_releases_early_or_extends_the_embargo_and_both_are_recorded(tmp_path, config_file, capsys):
    archive = str(tmp_path / "archive")
    ingest(str(embargoed_submission(tmp_path / "a")), archive, config_file())
    ingest(str(embargoed_submission(tmp_path / "b")), archive, config_file())
    later = LATER + dt.timedelta(days=90)
    assert main(["embargo", "ZA000002", "--archive", archive, "--until", later.isoformat(), "--curator", "Grace",
                 "--reason", "the paper is delayed", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["history"][0]["action"] == "extended"
    assert due(archive, f"{archive}-private", LATER) == [("ZA000001", 1, LATER)]  # ZA000002's date no longer counts
    assert due(archive, f"{archive}-private", later) == [("ZA000001", 1, LATER), ("ZA000002", 1, later)]

    assert main(["search", "--archive", archive, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["studies"] == []  # nothing public yet
    assert main(["release", "ZA000001", "--archive", archive, "--curator", "Ada", "--reason", "the paper is out",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"status": "released", "accession": "ZA000001", "versions": [1]}
    assert main(["search", "--archive", archive, "--json"]) == 0  # the catalog and front page follow the release
    assert [s["accession"] for s in json.loads(capsys.readouterr().out)["studies"]] == ["ZA000001"]
    front = (Path(archive) / "index.html").read_text()
    assert "ZA000001/v1/index.html" in front and "ZA000002" not in front
    crate = json.loads((Path(archive) / "ZA000001" / "v1" / "ro-crate-metadata.json").read_text())
    action = next(n for n in crate["@graph"] if n.get("zarrchive:stage") == "release")
    assert action["agent"] == {"@id": "#curator/Ada"} and "the paper is out" in action["description"]
    assert next(n for n in crate["@graph"] if n["@id"] == "./")["datePublished"] == dt.date.today().isoformat()
    released = json.loads((Path(archive) / "ZA000001" / "v1" / "manifest.json").read_text())["released"]
    assert released["early"] and released["embargoed_until"] == LATER.isoformat()  # the date it had, not today
    assert main(["changes", "--archive", archive, "--json"]) == 0
    assert [(e["event"], e["accession"]) for e in json.loads(capsys.readouterr().out)] == [("released", "ZA000001")]

    # a curator's date holds for the versions it was given: a version published after an early release keeps its own
    (tmp_path / "a" / "notes.txt").write_text("corrected after the paper\n")
    assert ingest(str(tmp_path / "a"), archive, config_file()).version == 2
    assert due(archive, f"{archive}-private", dt.date.today()) == []
    assert due(archive, f"{archive}-private", LATER) == [("ZA000001", 2, LATER)]
    # the extension is in the lineage of the version it delayed, once released
    release_version(archive, f"{archive}-private", "ZA000002", 1, today=later)
    crate = json.loads((Path(archive) / "ZA000002" / "v1" / "ro-crate-metadata.json").read_text())
    change = next(n for n in crate["@graph"] if n.get("zarrchive:stage") == "embargo")
    assert change["agent"] == {"@id": "#curator/Grace"} and "the paper is delayed" in change["description"]
    assert {"@id": "#curator/Grace", "@type": "Person", "name": "Grace"} in crate["@graph"]


def test_the_release_flow_releases_what_is_due(tmp_path, config_file):
    from zarrchive.flows.release import release_embargoed

    archive = str(tmp_path / "archive")
    ingest(str(embargoed_submission(tmp_path / "sub")), archive, config_file())
    assert main(["embargo", "ZA000001", "--archive", archive, "--until", dt.date.today().isoformat(),
                 "--curator", "Ada", "--reason", "published today"]) == 0
    from zarrchive.catalog import Catalog

    with Catalog(archive) as catalog:
        assert catalog.search() == []
    state = release_embargoed(archive=archive, config=config_file(publish={"public_base_url": "https://ex.org/a"}),
                              return_state=True)
    assert state.is_completed() and state.message == "1 version(s) released"
    assert (Path(archive) / "ZA000001" / "v1" / "manifest.json").exists()
    [event] = [json.loads(line) for line in (Path(archive) / "changes.jsonl").read_text().splitlines()]
    assert event["url"] == "https://ex.org/a/ZA000001/v1/index.html"  # its public address, as at publish
    with Catalog(archive) as catalog:
        assert [s["accession"] for s in catalog.search()] == ["ZA000001"]
    assert release_embargoed(archive=archive, return_state=True).message == "no embargoed version is due"


def test_an_unchanged_embargoed_submission_is_unchanged_and_an_object_store_without_a_private_place_refuses_it(
        tmp_path, config_file, s3_endpoint):
    sub = embargoed_submission(tmp_path / "sub")
    archive = str(tmp_path / "archive")
    assert ingest(str(sub), archive, config_file()).status == "published"
    again = ingest(str(sub), archive, config_file())
    assert again.status == "unchanged" and again.version == 1
    bucket = s3_endpoint()
    refused = ingest(str(sub), f"s3://{bucket}/archive", config_file())
    assert refused.status == "blocked" and "archive.private" in refused.reasons[0]
    assert not [p for p in listing(f"s3://{bucket}/archive") if "/v1/" in p]


def test_a_public_version_enters_the_changes_feed_at_once(tmp_path, config_file, capsys):
    sub = embargoed_submission(tmp_path / "sub", release=dt.date(2026, 1, 1))
    archive = str(tmp_path / "archive")
    pub = ingest(str(sub), archive, config_file())
    assert pub.embargoed_until is None
    before = dt.datetime.now(dt.timezone.utc)
    assert main(["changes", "--archive", archive, "--json"]) == 0
    [event] = json.loads(capsys.readouterr().out)
    assert event["event"] == "published" and event["url"].endswith("ZA000001/v1/index.html")
    assert main(["changes", "--archive", archive, "--since", before.isoformat(), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_the_fixity_audit_fails_naming_damage_in_public_and_embargoed_versions_and_keeps_its_log(
        tmp_path, config_file):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from zarrchive.flows.fixity import fixity_audit

    archive = str(tmp_path / "archive")
    public = ingest(str(embargoed_submission(tmp_path / "open", release=dt.date(2026, 1, 1))), archive, config_file())
    hidden = ingest(str(embargoed_submission(tmp_path / "closed")), archive, config_file())
    clean = fixity_audit(archive=archive, return_state=True)
    assert clean.is_completed() and "of 2 version(s) match their manifests" in clean.message

    chunk = next(p for p in sorted(Path(public.version_uri, "images").rglob("*"))
                 if p.is_file() and "/c/" in p.as_posix())
    chunk.write_bytes(bytes([chunk.read_bytes()[0] ^ 1]) + chunk.read_bytes()[1:])  # one flipped bit
    original = Path(hidden.version_uri) / "originals" / "notes.txt"
    original.write_bytes(original.read_bytes()[:-3])  # truncated, in the private location
    state = fixity_audit(archive=archive, return_state=True)
    assert state.is_failed() and state.name == "Damaged"
    assert "ZA000001/v1/images/" in state.message and "embargoed ZA000002/v1/originals/notes.txt" in state.message
    with get_client(sync_client=True) as client:
        [report] = [a for a in client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[state.state_details.flow_run_id]))) if (a.key or "").endswith("-fixity-audit")]
    assert "originals/notes.txt" in report.data
    assert chunk.relative_to(public.version_uri).as_posix() in report.data
    logs = [json.loads(p.read_text()) for root in (archive, f"{archive}-private")
            for p in sorted(Path(root, "_audit", "fixity").glob("*.json"))]
    assert len(logs) == 4 and sum(bool(log["problems"]) for log in logs) == 2  # every audit kept, nothing repaired
    assert original.read_bytes() == b"to be published with the paper"[:-2]


def test_the_changes_feed_keeps_every_event_of_writers_racing_and_only_grows(tmp_path):
    """Eighteen events written by six threads at once: the feed lists each exactly once, oldest first, and every
    line a reader saw in an earlier feed is still in the final one."""
    import threading

    from zarrchive.archive.changes import FEED, changes, record_change

    archive = tmp_path / "archive"
    archive.mkdir()
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    fs, _ = resolve(str(archive))
    seen, start = [], threading.Barrier(6)

    def writer(number: int) -> None:
        start.wait()
        for version in (1, 2, 3):
            record_change(str(archive), "published", f"ZA{number:06d}", version, fs, str(manifest),
                          f"https://example.org/ZA{number:06d}/v{version}/index.html")
            seen.append((archive / FEED).read_text())

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(1, 7)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    final = (archive / FEED).read_text()
    lines = [json.loads(line) for line in final.splitlines()]
    assert sorted((e["accession"], e["version"]) for e in lines) == [(f"ZA{n:06d}", v) for n in range(1, 7)
                                                                     for v in (1, 2, 3)]
    assert lines == changes(str(archive)) and [e["time"] for e in lines] == sorted(e["time"] for e in lines)
    # what a mirror read earlier is still there: every line of every feed seen is in the final one
    assert all(line in final.splitlines() for earlier in seen for line in earlier.splitlines())


def test_a_withdrawn_version_is_recorded_once_leaves_the_catalog_and_enters_the_feed_and_keeps_its_objects(
        tmp_path, config_file, capsys):
    sub = embargoed_submission(tmp_path / "sub", release=dt.date(2026, 1, 1))
    archive = str(tmp_path / "archive")
    first = ingest(str(sub), archive, config_file())
    (sub / "notes.txt").write_text("a second version\n")
    second = ingest(str(sub), archive, config_file())
    assert (first.version, second.version) == (1, 2)
    capsys.readouterr()

    assert main(["withdraw", "ZA000001", "--version", "2", "--archive", archive, "--curator", "Ada",
                 "--reason", "wrong images", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "withdrawn"
    index = json.loads((Path(archive) / "ZA000001" / "versions.json").read_text())
    assert index["format_version"] == 3 and index["versions"][0]["withdrawn"] is None
    assert index["versions"][1]["withdrawn"]["by"] == "Ada" and index["versions"][1]["withdrawn"]["reason"] == \
        "wrong images"
    assert main(["search", "--archive", archive, "--json"]) == 0
    [study] = json.loads(capsys.readouterr().out)["studies"]
    assert study["accession"] == "ZA000001" and study["versions"] == 1  # the withdrawn one is not listed
    assert "ZA000001/v1/index.html" in (Path(archive) / "index.html").read_text()
    assert "ZA000001/v2/" not in (Path(archive) / "index.html").read_text()
    assert main(["changes", "--archive", archive, "--json"]) == 0
    assert [(e["event"], e["version"]) for e in json.loads(capsys.readouterr().out)] == [
        ("published", 1), ("published", 2), ("withdrawn", 2)]
    from zarrchive.catalog import Catalog

    with Catalog(archive) as catalog:  # the store is the source of truth: a rebuild agrees
        live = catalog.search()
        catalog.rebuild()
        assert catalog.search() == live

    assert main(["withdraw", "ZA000001", "--version", "2", "--archive", archive, "--curator", "Bob",
                 "--reason", "again", "--json"]) == 1  # recorded once, never rewritten
    assert "withdrawn already (wrong images)" in json.loads(capsys.readouterr().out)["error"]
    assert main(["withdraw", "ZA000001", "--version", "7", "--archive", archive, "--curator", "Bob",
                 "--reason", "no such", "--json"]) == 1
    capsys.readouterr()
    assert main(["verify", "ZA000001", "--archive", archive]) == 0  # its objects stay, whole
    assert ingest(str(sub), archive, config_file()).version == 3  # a rerun does not call a withdrawn one unchanged

    def shares_from(version: int) -> set[str]:
        manifest = json.loads((Path(archive) / "ZA000001" / f"v{version}" / "manifest.json").read_text())
        return {f["path"].split("/")[1] for f in manifest["files"] if f["path"].startswith("../")}

    assert shares_from(3) == {"v1"}  # what did not change, from v1: never from the withdrawn v2
    assert main(["withdraw", "ZA000001", "--version", "1", "--archive", archive, "--curator", "Ada",
                 "--reason", "all of it", "--json"]) == 0
    (sub / "notes.txt").write_text("a fourth version\n")
    assert ingest(str(sub), archive, config_file()).version == 4
    assert shares_from(4) == set()  # v3 shares its image from the withdrawn v1: v4 stores it again
    capsys.readouterr()
    for version in (3, 4):
        assert main(["withdraw", "ZA000001", "--version", str(version), "--archive", archive, "--curator", "Ada",
                     "--reason", "all of it", "--json"]) == 0
    capsys.readouterr()
    assert main(["search", "--archive", archive, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["studies"] == []  # nothing of it is found any more


def test_an_embargo_record_of_format_1_holds_for_the_versions_private_when_it_was_set(tmp_path, monkeypatch):
    """A record written before dates were kept per version (one date for the accession) reaches only the versions
    that were private when it was last changed; a version published after it keeps its own date."""
    from zarrchive.archive import versions

    private = tmp_path / "archive-private"
    (private / "ZA000001").mkdir(parents=True)
    found = [{"version": 1, "created": "2026-01-01T00:00:00+00:00", "release_date": "2030-01-01"},
             {"version": 2, "created": "2026-06-01T00:00:00+00:00", "release_date": "2030-01-01"}]
    monkeypatch.setattr(versions, "manifests", lambda location, accession: found)  # (their other fields unused)
    (private / "ZA000001" / "embargo.json").write_text(json.dumps({
        "format_version": 1, "release_date": "2026-03-01",
        "history": [{"action": "brought forward", "release_date": "2026-03-01", "by": "Ada", "reason": "out",
                     "at": "2026-02-01T00:00:00+00:00"}]}))
    record = versions.embargo(str(private), "ZA000001")
    assert record.dates == {1: dt.date(2026, 3, 1)}
    assert [record.release_date(m) for m in found] == [dt.date(2026, 3, 1), dt.date(2030, 1, 1)]
