"""Intake: read and validate ``submission.yaml``, then allocate (or look up) the accession.

Everything is refused before any data moves, with one line per problem naming
the field or file. The accession is stable for the same submission location.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re

import fsspec
import yaml
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import ValidationError

from zarrchive.config import ArchiveSettings, format_validation_error
from zarrchive.errors import SubmissionError
from zarrchive.lineage import Traced, traced
from zarrchive.records import Submission, SubmissionDoc, parse_relative_path
from zarrchive.runtime import retry_transient
from zarrchive.storage import dumps, join, read_json, resolve, to_url, write_bytes_atomic

SUBMISSION_FILE = "submission.yaml"


def read_submission(source: str) -> tuple[SubmissionDoc, str]:
    """Parse and validate ``<source>/submission.yaml``; check every listed file is present.

    Returns the document and the sha256 of the file as submitted.
    Raises ``SubmissionError`` listing every problem found.
    """
    fs, root = resolve(source)
    doc_path = join(root, SUBMISSION_FILE)
    try:
        raw = fs.cat_file(doc_path)
    except FileNotFoundError:
        raise SubmissionError(source, [f"{SUBMISSION_FILE}: missing (run 'zarrchive submission new {source}')"])
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise SubmissionError(source, [f"{SUBMISSION_FILE}: not valid YAML: {exc}"])
    if not isinstance(data, dict):
        raise SubmissionError(source, [f"{SUBMISSION_FILE}: the top level must be a mapping of fields"])
    problems: list[str] = []
    doc = None
    try:
        doc = SubmissionDoc.model_validate(data)
    except ValidationError as exc:
        problems = [_describe(err, data) for err in exc.errors()]
    problems += [f"files: {path}: listed but not found in the submission"
                 for path in _listed_paths(data) if not fs.isfile(join(root, path))]
    if problems or doc is None:
        raise SubmissionError(source, problems)
    return doc, hashlib.sha256(raw).hexdigest()


def _listed_paths(data: dict) -> list[str]:
    """The well-formed paths listed under ``files`` (checked for presence even when other fields are wrong)."""
    paths = []
    for entry in data.get("files") or []:
        path = entry.get("path") if isinstance(entry, dict) else None
        if isinstance(path, str):
            try:
                paths.append(parse_relative_path(path))
            except ValueError:
                continue  # reported by validation
    return list(dict.fromkeys(paths))


def _describe(err: dict, data: dict) -> str:
    """One readable line for a pydantic error, naming the field (and file, for file entries)."""
    loc = list(err["loc"])
    if len(loc) >= 2 and loc[0] == "files" and isinstance(loc[1], int):
        entries = data.get("files") or []
        entry = entries[loc[1]] if loc[1] < len(entries) else None
        label = entry.get("path") if isinstance(entry, dict) else None
        loc[1] = f"[{loc[1]}]" + (f" ({label})" if label else "")
    where = ".".join(str(p) for p in loc).replace(".[", "[") or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown field"
    if err["type"] == "missing":
        return f"{where}: required field is missing"
    return f"{where}: {err['msg']}"


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


def intake_submission(source: str, archive: str, settings: ArchiveSettings) -> Submission:
    """Validate the submission at ``source`` and give it its accession in ``archive``."""
    doc, doc_sha256 = read_submission(source)
    accession = allocate_accession(source, archive, settings)
    return Submission(source=submission_key(source), doc=doc, doc_sha256=doc_sha256, accession=accession)


def template_for(folder: str) -> str:
    """A ``submission.yaml`` template listing the files found in ``folder``, for a depositor to complete."""
    fs, root = resolve(folder)
    paths = sorted(
        rel for rel in (p[len(root) + 1:] for p in fs.find(root))
        if rel != SUBMISSION_FILE and not any(part.startswith(".") for part in rel.split("/"))
    )
    files = [{"path": p} for p in paths]
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
    )
    return header + yaml.safe_dump(json.loads(json.dumps(body)), sort_keys=False, allow_unicode=True)


@task(name="intake", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[1, 5],
      retry_condition_fn=retry_transient)
def intake(source: str, archive: str, settings: ArchiveSettings) -> Traced[Submission]:
    return traced("intake", intake_submission, source, archive, settings)
