"""Intake: read and validate ``submission.yaml``, then allocate (or look up) the accession.

Everything is refused before any data moves, with one line per problem naming
the field or file. The accession is stable for the same submission location.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
from typing import Any, Callable

import fsspec
import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE

from zarrchive.config import ArchiveSettings, SubmissionSettings
from zarrchive.errors import SubmissionError
from zarrchive.lineage import Traced, traced
from zarrchive.records import Finding, Submission, SubmissionDoc, default_label_name, parse_relative_path
from zarrchive.runtime import retry_transient
from zarrchive.storage import dumps, is_zarr_store, join, read_json, resolve, to_url, write_bytes_atomic
from zarrchive.submission_checks import check_submission

SUBMISSION_FILE = "submission.yaml"


def check_folder(
    source: str, settings: SubmissionSettings
) -> tuple[SubmissionDoc | None, str | None, list[Finding]]:
    """Every finding about the submission at ``source``: its YAML, each field, the files it lists.

    Returns the document (None when it cannot be built), the sha256 of
    ``submission.yaml`` as submitted (None when missing) and the findings.
    Reads nothing but ``submission.yaml`` and the folder listing.
    """
    fs, root = resolve(source)

    def refuse(message: str) -> tuple[None, None, list[Finding]]:
        return None, None, [Finding(severity="error", check="schema", field=SUBMISSION_FILE, message=message)]

    try:
        raw = fs.cat_file(join(root, SUBMISSION_FILE))
    except FileNotFoundError:
        return refuse(f"missing (run 'zarrchive submission new {source}' to start one)")
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        return refuse(f"not valid YAML: {exc}")
    doc, findings = check_submission(data, settings)
    for i, path in _listed_paths(data):
        where = join(root, path)
        if fs.isfile(where) or is_zarr_store(fs, where):
            continue
        message = ("a folder: only a Zarr store (zarr.json, .zgroup or .zarray at its root) is listed as a folder; "
                   "list the files in it instead" if fs.isdir(where) else "listed but not found in the submission")
        findings.append(Finding(severity="error", check="file_present", field=f"files[{i}] ({path})", file=path,
                                message=message))
    return doc, hashlib.sha256(raw).hexdigest(), findings


def read_submission(source: str, settings: SubmissionSettings) -> tuple[SubmissionDoc, str, list[Finding]]:
    """The validated document, the sha256 of ``submission.yaml`` and the warnings.

    Raises ``SubmissionError`` listing every error when there is any.
    """
    doc, sha256, findings = check_folder(source, settings)
    errors = [f.line() for f in findings if f.severity == "error"]
    if errors or doc is None or sha256 is None:
        raise SubmissionError(source, errors)
    return doc, sha256, [f for f in findings if f.severity != "error"]


def _listed_paths(data: Any) -> list[tuple[int, str]]:
    """The well-formed paths listed under ``files`` (checked for presence even when other fields are wrong)."""
    paths = []
    entries = data.get("files") if isinstance(data, dict) else None
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        path = entry.get("path") if isinstance(entry, dict) else None
        if isinstance(path, str):
            try:
                paths.append((i, parse_relative_path(path)))
            except ValueError:
                continue  # reported by the schema
    return paths


def submission_key(source: str) -> str:
    """The identity of a submission for accession purposes: its normalised location."""
    fs, path = resolve(source)
    return to_url(fs, path)


def allocate_accession(source: str, archive: str, settings: ArchiveSettings) -> str:
    """The accession of the submission at ``source``: the one it already has, or the next free one.

    A registry entry per submission location makes reruns stable; a new number
    is claimed by creating ``<accession>/accession.json`` exclusively.
    """
    fs, root = resolve(archive)
    key = submission_key(source)
    key_hash = hashlib.sha256(key.encode()).hexdigest()[:32]
    registry = join(root, "_registry", f"{key_hash}.json")
    if fs.exists(registry):
        return read_json(fs, registry)["accession"]
    fs.makedirs(root, exist_ok=True)
    pattern = re.compile(rf"^{re.escape(settings.accession_prefix)}(\d{{{settings.accession_digits}}})$")
    taken = [int(m.group(1)) for name in _names(fs, root) if (m := pattern.match(name))]
    number = max(taken, default=0) + 1
    while True:
        accession = f"{settings.accession_prefix}{number:0{settings.accession_digits}d}"
        claim = {"accession": accession, "submission": key,
                 "created": dt.datetime.now(dt.timezone.utc).isoformat()}
        try:
            fs.makedirs(join(root, accession), exist_ok=True)
            with fs.open(join(root, accession, "accession.json"), "xb") as fh:
                fh.write(dumps(claim))
            break
        except FileExistsError:
            number += 1
    write_bytes_atomic(fs, registry, dumps(claim))
    return accession


def _names(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    try:
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    except FileNotFoundError:  # an object store has no empty folders: a new archive lists as missing
        return []


def intake_submission(source: str, archive: str, settings: ArchiveSettings,
                      checks: SubmissionSettings) -> Submission:
    """Validate the submission at ``source`` and give it its accession in ``archive``."""
    doc, doc_sha256, warnings = read_submission(source, checks)
    accession = allocate_accession(source, archive, settings)
    return Submission(source=submission_key(source), doc=doc, doc_sha256=doc_sha256, accession=accession,
                      findings=warnings)


def template_for(folder: str) -> str:
    """A ``submission.yaml`` template listing the files found in ``folder``, for a depositor to complete."""
    fs, root = resolve(folder)
    is_store = functools.cache(lambda prefix: is_zarr_store(fs, join(root, prefix)))
    entries = {_entry_of(p[len(root) + 1:], is_store) for p in fs.find(root)}
    paths = sorted(rel for rel in entries
                   if rel != SUBMISSION_FILE and not any(part.startswith(".") for part in rel.split("/")))
    files = [template_entry(p, paths) for p in paths]
    body = {
        "title": "TODO: a title of 10 to 300 characters",
        "description": "TODO: what was imaged, how, and why",
        "license": "CC-BY-4.0",
        "release_date": dt.date.today().isoformat(),
        "authors": [{"name": "TODO", "email": "todo@example.org", "orcid": None, "affiliation": None}],
        "organism": {"scientific_name": "TODO", "ncbi_taxon": None},
        "imaging_method": {"name": "TODO", "fbbi_id": None},
        "files": files,
    }
    header = (
        "# zarrchive submission, format version 1. Complete the TODO fields; remove optional ones you do not need.\n"
        "# files: kind is image (default), label or attachment; sha256 is optional but recommended;\n"
        "#   pixel_size {x, y, z, unit} and channel_names supply metadata a file lacks.\n"
        "#   A label (kind: label; integer label values, one channel, the image's shape without channels) names the\n"
        "#   image file it annotates with label_of; label_name (optional, default: the file name) names it among\n"
        "#   that image's labels. Files under a labels/ or masks/ folder are proposed as labels: check label_of.\n"
    )
    return header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def _entry_of(rel: str, is_store: Callable[[str], bool]) -> str:
    """The entry a file belongs to: the outermost Zarr store holding it (listed as one entry), or itself."""
    parts = rel.split("/")
    for i in range(1, len(parts)):
        if is_store("/".join(parts[:i])):
            return "/".join(parts[:i])
    return rel


LABEL_FOLDERS = {"labels", "label", "masks", "mask", "segmentations", "segmentation"}


def template_entry(path: str, paths: list[str]) -> dict[str, Any]:
    """The template's entry for ``path``: a label when it lies in a folder named like labels or masks, with a
    guess of the image it annotates (the other file whose name its own name starts with), else an image."""
    if not any(part.lower() in LABEL_FOLDERS for part in path.split("/")[:-1]):
        return {"path": path}
    stem = default_label_name(path)
    images = [p for p in paths if not any(part.lower() in LABEL_FOLDERS for part in p.split("/")[:-1])]
    guesses = sorted((p for p in images if stem.startswith(default_label_name(p))),
                     key=lambda p: -len(default_label_name(p)))
    return {"path": path, "kind": "label",
            "label_of": guesses[0] if guesses else "TODO: the listed image file this label annotates"}


@task(name="intake", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 5],
      retry_condition_fn=retry_transient)
def intake(source: str, archive: str, settings: ArchiveSettings, checks: SubmissionSettings) -> Traced[Submission]:
    return traced("intake", intake_submission, source, archive, settings, checks)
