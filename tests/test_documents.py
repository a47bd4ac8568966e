"""The archive's documents are typed and versioned: written and read through zarrchive.archive.documents, a newer format
refused by every reader with the document named, older formats still read."""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest
from test_publish import ACCESSION, Inputs

from zarrchive.archive.changes import changes
from zarrchive.archive.documents import ChangeEvent, DocumentError, Manifest, QCDocument, VersionIndex
from zarrchive.archive.versions import published_versions
from zarrchive.cli import main

LOCAL = fsspec.filesystem("file")


@pytest.fixture()
def published(tmp_path):
    inp = Inputs(tmp_path)
    pub = inp.publish("a" * 64)
    assert pub.status == "published"
    return inp, Path(pub.version_uri)


def test_every_document_written_is_its_current_format_and_reads_back(published):
    inp, vdir = published
    manifest = Manifest.read(LOCAL, str(vdir / "manifest.json"))
    assert manifest.format_version == Manifest.FORMAT and manifest.accession == ACCESSION and manifest.version == 1
    assert {f.path for f in manifest.files} >= {"index.html", "qc/report.json", "ro-crate-metadata.json"}
    assert (vdir / "manifest.json").read_bytes() == manifest.to_bytes()  # nothing lost or added by the model
    qc = QCDocument.read(LOCAL, str(vdir / "qc/report.json"))
    assert qc.format_version == QCDocument.FORMAT and qc.warnings == 1 and qc.images
    assert (vdir / "qc/report.json").read_bytes() == qc.to_bytes()
    index = VersionIndex.read(LOCAL, str(vdir.parent / "versions.json"))
    assert (index.format_version, index.accession, [v.version for v in index.versions]) == (3, ACCESSION, [1])
    event, = changes(inp.archive)
    assert ChangeEvent.parse(event, "feed").event == "published"
    for line in (Path(inp.archive) / "changes.jsonl").read_text().splitlines():
        ChangeEvent.parse(line, "changes.jsonl")


def newer(path: Path, version: int = 99) -> None:
    doc = json.loads(path.read_text())
    doc["format_version"] = version
    path.write_text(json.dumps(doc))


def test_a_manifest_of_a_newer_format_is_refused_by_every_reader_naming_it(published, capsys):
    inp, vdir = published
    newer(vdir / "manifest.json")
    with pytest.raises(DocumentError, match=r"manifest\.json: manifest of format 99; this zarrchive reads formats "
                                            r"1 to 5: read it with a newer zarrchive"):
        published_versions(inp.archive, ACCESSION)
    for command in (["show", ACCESSION], ["verify", f"{ACCESSION}/v1"], ["lineage", ACCESSION],
                    ["catalog", "rebuild"]):
        assert main([*command, "--archive", inp.archive, "--json"]) != 0, command
        out = capsys.readouterr().out
        assert "format 99" in out and "manifest.json" in out, (command, out)
    with pytest.raises(DocumentError, match="format 99"):  # nor is a version added beside what it cannot read
        inp.publish("b" * 64)
    assert not (vdir.parent / "v2").exists()


def test_a_newer_change_event_or_qc_document_is_refused(published):
    inp, vdir = published
    event = next((Path(inp.archive) / "_changes").iterdir())
    newer(event, 2)
    with pytest.raises(DocumentError, match="change event of format 2"):
        changes(inp.archive)
    newer(vdir / "qc/report.json", 5)
    with pytest.raises(DocumentError, match=r"qc/report\.json: QC document of format 5"):
        QCDocument.read(LOCAL, str(vdir / "qc/report.json"))


@pytest.mark.parametrize("change, words", [
    (lambda d: d.pop("files"), "files: Field required"),
    (lambda d: d.update(version=0), "version: Input should be greater than or equal to 1"),
    (lambda d: d["files"][0].update(sha256="x"), "files.0.sha256: String should match pattern"),
    (lambda d: d.update(created="yesterday"), "created: Value error"),
    (lambda d: d.update(format_version="4"), "format_version is '4', not a number"),
    (lambda d: d.update(surprise=1), "surprise: Extra inputs are not permitted"),
])
def test_a_damaged_manifest_is_refused_with_the_field_named(published, change, words):
    _inp, vdir = published
    doc = json.loads((vdir / "manifest.json").read_text())
    change(doc)
    with pytest.raises(DocumentError) as caught:
        Manifest.parse(json.dumps(doc), str(vdir / "manifest.json"))
    assert words in str(caught.value) and "manifest.json" in str(caught.value)


def test_documents_of_earlier_formats_are_still_read(published):
    _inp, vdir = published
    doc = json.loads((vdir / "manifest.json").read_text())
    for key in ("format_version", "embargoed", "study", "released"):  # a manifest of format 1
        doc.pop(key, None)
    for image in doc["images"]:
        image.pop("codec", None), image.pop("bytes", None)
    old = Manifest.parse(json.dumps(doc), "v1/manifest.json")
    assert old.format_version == 1 and not old.embargoed and old.study is None
    listed = [{"version": 1, "created": doc["created"], "fingerprint": "a" * 64, "files": 3, "bytes": 10}]
    index = VersionIndex.parse(json.dumps(listed), "archive/ZA000001/versions.json")  # format 1: a bare list
    assert (index.format_version, index.accession, index.versions[0].stored_bytes) == (1, "ZA000001", None)
    qc = json.loads((vdir / "qc/report.json").read_text())
    qc.pop("format_version")
    assert QCDocument.parse(qc, "qc/report.json").format_version == 1


def test_readers_of_the_feed_and_the_audit_go_on_past_what_they_cannot_read(published):
    from zarrchive.archive.fixity import audit

    inp, vdir = published
    (Path(inp.archive) / "_changes" / "20991231T000000.000000Z-ZA-v9-published-0000.json.part-1a2b3c4d").write_text("{")
    assert len(changes(inp.archive)) == 1  # another writer's unfinished object is not an event
    newer(vdir / "manifest.json")
    result = audit(inp.archive)  # one version it cannot read is reported; it does not stop the audit
    assert [(p["path"], p["kind"]) for p in result.problems] == [("manifest.json", "unreadable")]
    assert "format 99" in result.problems[0]["detail"]


@pytest.mark.parametrize("text, words", [("[{]", "not JSON"), ('[{"version": 0}]', "versions.0.version"),
                                         ('{"format_version": 4, "accession": "ZA", "versions": []}', "format 4")])
def test_a_damaged_versions_index_is_refused_with_the_reason(text, words):
    with pytest.raises(DocumentError, match=words):
        VersionIndex.parse(text, "archive/ZA000001/versions.json")
