"""A corpus of bad submissions: each gets exactly the finding it deserves, and nothing is fetched."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import pytest
import numpy as np
import tifffile
import yaml

from builders import AUTHOR
from zarrchive.config import load_settings
from zarrchive.submission_checks import check_doi, check_orcid, orcid_check_digit
from zarrchive.tasks.intake import check_folder

CHECKS = load_settings().submission
VALID = {
    "title": "Nuclear envelope dynamics in HeLa cells",
    "description": "Live imaging of lamin B1.",
    "license": "CC-BY-4.0",
    "release_date": "2026-01-01",
    "authors": [dict(AUTHOR)],
    "organism": {"scientific_name": "Homo sapiens", "ncbi_taxon": 9606},
    "imaging_method": {"name": "confocal microscopy", "fbbi_id": "FBbi:00000251"},
    "publication": {"doi": "10.1038/s41592-018-0195-8"},
    "files": [{"path": "a.tif"}, {"path": "b.tif"}],
}


def with_change(path: str, value) -> dict:
    doc = copy.deepcopy(VALID)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target = doc
    for part in parents:
        target = target[part]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return doc


DELETE = object()

# (what changes, new value, field named, check, severity, words the message must hold)
CORPUS = [
    ("licence", "CC-BY-4.0", "licence", "schema", "error", "unknown field (did you mean 'license'?)"),
    ("authors.0.mail", "x@y.org", "authors[0].mail", "schema", "error", "did you mean 'email'?"),
    ("title", "Short", "title", "schema", "error", "at least 10 characters"),
    ("description", DELETE, "description", "schema", "error", "required field is missing"),
    ("authors", [], "authors", "schema", "error", "at least 1 item"),
    ("authors.0.email", "jane(at)example.org", "authors[0].email", "email", "error", "is not an e-mail address"),
    ("authors.0.email", "mailto:jane@example.org", "authors[0].email", "email", "error", "without 'mailto:'"),
    ("authors.0.orcid", "0000-0002-1825-0098", "authors[0].orcid", "orcid", "error", "wrong check digit (expected 7)"),
    ("authors.0.orcid", "1234", "authors[0].orcid", "orcid", "error", "is not an ORCID iD"),
    ("authors.0.orcid", "https://orcid.org/0000-0002-1825-0097", "authors[0].orcid", "orcid", "error",
     "without the URL: 0000-0002-1825-0097"),
    ("publication.doi", "TBD", "publication.doi", "doi", "error", "placeholder, not a DOI"),
    ("publication.doi", "DOI: 10.1038/s41592-018-0195-8", "publication.doi", "doi", "error",
     "without the prefix: 10.1038/s41592-018-0195-8"),
    ("publication.doi", "https://doi.org/10.1038/x1", "publication.doi", "doi", "error", "without the prefix: 10.1038/x1"),
    ("publication.doi", "s41592-018-0195-8", "publication.doi", "doi", "error", "is not a DOI"),
    ("license", "CC BY 4.0", "license", "license", "error", "did you mean 'CC-BY-4.0'?"),
    ("license", "GPL-3.0-only", "license", "license", "error", "is not an accepted SPDX licence id"),
    ("release_date", "1899-01-01", "release_date", "release_date", "error", "probably a typing error"),
    ("release_date", "2040-01-01", "release_date", "release_date", "error", "more than 5 years ahead"),
    ("release_date", "2026-13-01", "release_date", "schema", "error", "YYYY-MM-DD"),
    ("organism.ncbi_taxon", "human", "organism.ncbi_taxon", "schema", "error", "numeric NCBI taxonomy id"),
    ("imaging_method.fbbi_id", "FBbi_00000251", "imaging_method.fbbi_id", "fbbi_id", "error", "FBbi: and 8 digits"),
    ("files.0.path", "../a.tif", "files[0] (../a.tif).path", "schema", "error", "escapes the submission folder"),
    ("files.1.path", "a.tif", "files", "schema", "error", "a.tif is listed twice"),
    ("files.1.path", "c.tif", "files[1] (c.tif)", "file_present", "error", "listed but not found"),
    ("files.0.sha256", "ABC", "files[0] (a.tif).sha256", "sha256", "error", "64 lower-case hexadecimal"),
    ("title", "TODO: a title of 10 to 300 characters", "title", "placeholder", "error", "TODO"),
]


def write(folder: Path, doc: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(folder / name, np.arange(16, dtype="uint8").reshape(4, 4))
    (folder / "submission.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return folder


def test_the_valid_document_has_no_findings(tmp_path):
    doc, sha, findings = check_folder(str(write(tmp_path, VALID)), CHECKS)
    assert findings == [] and doc is not None and len(sha) == 64


@pytest.mark.parametrize("path, value, field, check, severity, words", CORPUS, ids=[f"{c[0]}={c[1]!r}" for c in CORPUS])
def test_each_bad_field_gets_exactly_its_finding(tmp_path, path, value, field, check, severity, words):
    _doc, _sha, findings = check_folder(str(write(tmp_path, with_change(path, value))), CHECKS)
    if path == "licence":  # renaming the key also leaves 'license' missing
        findings = [f for f in findings if f.field != "license"]
    if path.startswith("files.") and path.endswith(".path"):  # the file the entry no longer names is unlisted
        findings = [f for f in findings if f.check != "unlisted"]
    assert len(findings) == 1, [f.line() for f in findings]
    [finding] = findings
    assert (finding.field, finding.check, finding.severity) == (field, check, severity)
    assert words in finding.message
    if field.startswith("files["):
        assert finding.file is not None and finding.file in field


def test_all_findings_are_reported_at_once(tmp_path):
    doc = with_change("publication.doi", "TBD")
    doc["authors"][0]["orcid"] = "0000-0002-1825-0098"
    doc["licence"] = doc.pop("license")
    doc["files"].append({"path": "missing.tif"})
    _doc, _sha, findings = check_folder(str(write(tmp_path, doc)), CHECKS)
    assert {f.check for f in findings} == {"doi", "orcid", "schema", "file_present"}
    assert len(findings) == 5  # licence unknown, license missing, doi, orcid, missing file


def test_orcid_check_digit_follows_iso_7064():
    assert orcid_check_digit("000000021825009") == "7"
    assert orcid_check_digit("000000021694233") == "X"  # ORCID's own example ending in X
    assert check_orcid("0000-0002-1694-233X") is None and check_orcid("0000-0002-1825-0097") is None


@pytest.mark.parametrize("doi", ["10.1038/s41592-018-0195-8", "10.1101/2020.01.01.123456", "10.5281/zenodo.1234"])
def test_real_dois_pass(doi):
    assert check_doi(doi) is None


def test_release_date_limits_follow_the_configuration(tmp_path):
    from zarrchive.submission_checks import check_submission

    far = dt.date.today().replace(year=dt.date.today().year + 3).isoformat()
    data = with_change("release_date", far)
    strict = CHECKS.model_copy(update={"max_embargo_years": 2})
    assert check_submission(data, CHECKS)[1] == []
    [finding] = check_submission(data, strict)[1]
    assert finding.check == "release_date" and "more than 2 years ahead" in finding.message


def test_a_refused_submission_moves_no_data(tmp_path, config_file, prefect_server):
    from zarrchive.flows.ingest import ingest

    sub = write(tmp_path / "sub", with_change("authors.0.orcid", "0000-0002-1825-0098"))
    staging = tmp_path / "staging"
    config = config_file(staging={"root": str(staging), "keep": True})
    pub = ingest(submission=str(sub), archive=str(tmp_path / "archive"), config=config)
    assert pub.status == "refused" and pub.accession is None
    assert pub.reasons == ["authors[0].orcid: 0000-0002-1825-0098 has a wrong check digit (expected 7): "
                           "probably a typing error"]
    assert not staging.exists() or not any(staging.iterdir())  # nothing was fetched
    assert not (tmp_path / "archive").exists()  # no accession was allocated


def test_validate_command_reports_and_exits_1_on_errors(tmp_path, capsys):
    import json

    from zarrchive.cli import main

    sub = write(tmp_path / "sub", with_change("publication.doi", "TBD"))
    assert main(["validate", str(sub), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert not out["valid"] and [f["check"] for f in out["findings"]] == ["doi"]
    write(tmp_path / "sub", VALID)
    assert main(["validate", str(sub)]) == 0
