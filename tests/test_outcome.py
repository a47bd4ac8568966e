"""How an outcome is told: the state message, tags, the artifact key and report, links."""

from __future__ import annotations

import pytest

from zarrchive import outcome
from zarrchive.config import PublishSettings
from zarrchive.records import ImageOutcome, Publication
from zarrchive.tasks.publish import version_url


def pub(status: str, images=(), reasons=(), **fields) -> Publication:
    base = {"accession": "ZA000042", "archive": "/archive", "submission": "/landing/lab42", "version": 3,
            "version_uri": "/archive/ZA000042/v3", "url": "https://archive.example.org/ZA000042/v3/index.html"}
    return Publication(status=status, images=list(images), reasons=list(reasons), **{**base, **fields})


def image(status: str, error: str | None = None, name: str = "a") -> ImageOutcome:
    return ImageOutcome(image_id=name, source_path=f"{name}.tif", status=status, error=error)


@pytest.mark.parametrize("publication, kind, ok, starts", [
    (pub("published", [image("published")]), "published", True, "Published ZA000042 v3 at https://"),
    (pub("published", [image("published"), image("failed", "convert: damaged", "b")]), "partial", False,
     "Partially published ZA000042 v3"),
    (pub("unchanged"), "unchanged", True, "Unchanged: ZA000042 v3 already holds this submission"),
    (pub("refused", accession=None, version=None, reasons=["license: not accepted"]), "refused", False,
     "Refused /landing/lab42"),
    (pub("blocked", [image("blocked")], ["a.tif: qc: all zero"], version=None), "not-published", False,
     "Not published: ZA000042"),
    (pub("busy", reasons=["another run is publishing ZA000042"], version=None), "busy", False,
     "Not published: another"),
    (pub("damaged", reasons=["v3 no longer matches its manifest: x: missing"]), "damaged", False,
     "Not published: ZA000042 v3 is damaged"),
    (pub("rejected", reasons=["rejected by Grace: no ORCID"], version=None), "rejected", False, "Not published"),
])
def test_every_outcome_has_its_kind_message_and_tags(publication, kind, ok, starts):
    assert outcome.kind(publication) == kind and outcome.succeeded(publication) is ok
    message = outcome.message(publication)
    assert message.startswith(starts)
    assert f"outcome:{kind}" in outcome.tags(publication)
    assert outcome.state_name(publication) == {"not-published": "Not published", "partial": "Partially published"}.get(
        kind, kind.capitalize())
    for reason in publication.reasons if not ok else []:
        assert reason in message
    if kind == "partial":
        assert "b.tif [b]: failed (convert: damaged)" in message
    report = outcome.report(publication)
    assert message in report


def test_artifact_keys_are_per_accession_and_valid():
    assert outcome.artifact_key(pub("published")) == "za000042-publication"
    refused = pub("refused", accession=None, submission="/landing/Lab 42 (Smith)/")
    assert outcome.artifact_key(refused) == "submission-lab-42-smith-publication"


def test_links_use_the_public_base_url_when_one_is_set():
    settings = PublishSettings(on_image_error="block_submission", public_base_url="https://archive.example.org/pub")
    location, url = version_url("/data/archive", "ZA000042", 3, settings)
    assert location == "/data/archive/ZA000042/v3"
    assert url == "https://archive.example.org/pub/ZA000042/v3/index.html"
    assert version_url("/data/archive", "ZA000042", 3, None)[1] == "/data/archive/ZA000042/v3/index.html"
    assert outcome.link(pub("published"), "qc/index.html") == "https://archive.example.org/ZA000042/v3/qc/index.html"


def test_many_reasons_are_cut_in_the_message_and_all_kept_in_the_report():
    many = pub("blocked", reasons=[f"f{i}.tif: failed" for i in range(30)], version=None)
    assert "and 10 more" in outcome.message(many)
    assert all(f"f{i}.tif: failed" in outcome.report(many) for i in range(30))
