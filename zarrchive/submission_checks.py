"""Checks of ``submission.yaml``: the schema first, then what each field means.

Every problem becomes a ``Finding`` naming the field (and the file, for file
entries) with a message a depositor understands; all are reported at once.
Errors refuse the submission before any data moves; warnings travel with it.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from typing import Any, Iterator

from pydantic import BaseModel, ValidationError

from zarrchive.config import SubmissionSettings
from zarrchive.records import (
    LABEL_NAME_RE, RESERVED_LABEL_NAMES, Author, FileEntry, Finding, ImagingMethod, Organism, PixelSize,
    PlateDeclaration, PublicationRef, SubmissionDoc, WellPosition, default_label_name, parse_relative_path,
)

EMAIL_RE = re.compile(r"^[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}$")
ORCID_RE = re.compile(r"^\d{4}-\d{4}-\d{4}-\d{3}[\dX]$")
DOI_RE = re.compile(r"^10\.\d{4,9}/[-._;()/:<>\[\]A-Za-z0-9]+$")
DOI_PREFIX_RE = re.compile(r"^(doi:\s*|https?://(dx\.)?doi\.org/)", re.IGNORECASE)
DOI_PLACEHOLDERS = {"tbd", "tba", "n/a", "na", "none", "null", "pending", "unknown", "todo", "in press",
                    "in preparation", "submitted", "forthcoming", "-", "?"}
FBBI_RE = re.compile(r"^FBbi:\d{8}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")

# Which model describes the mapping found at a location (list indexes left out).
MODEL_AT: dict[tuple[str, ...], type[BaseModel]] = {
    (): SubmissionDoc, ("authors",): Author, ("files",): FileEntry, ("files", "pixel_size"): PixelSize,
    ("organism",): Organism, ("imaging_method",): ImagingMethod, ("publication",): PublicationRef,
    ("plates",): PlateDeclaration, ("files", "well"): WellPosition,
}
FRIENDLY = {
    ("organism", "ncbi_taxon"): "must be the numeric NCBI taxonomy id, e.g. 9606 for Homo sapiens",
    ("release_date",): "must be a date written YYYY-MM-DD",
}


def check_submission(data: Any, settings: SubmissionSettings,
                     today: dt.date | None = None) -> tuple[SubmissionDoc | None, list[Finding]]:
    """Validate the parsed YAML: the document (None when the schema fails) and every finding."""
    today = today or dt.date.today()
    if not isinstance(data, dict):
        return None, [Finding(severity="error", check="schema", field="submission.yaml",
                              message="the top level must be a mapping of fields")]
    findings: list[Finding] = []
    doc = None
    try:
        doc = SubmissionDoc.model_validate(data)
    except ValidationError as exc:
        findings += [_schema_finding(err, data) for err in exc.errors()]
    findings += _field_findings(data, settings, today)
    return doc, findings


# ---------------------------------------------------------------- schema


def label(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    """A field's name as a depositor reads it: ``authors[0].orcid``, ``files[2] (a.tif).sha256``."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            if loc[:i] == ("files",) and (path := _file_of(loc, data)):
                out += f" ({path})"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _file_of(loc: tuple[Any, ...], data: dict[str, Any]) -> str | None:
    if len(loc) >= 2 and loc[0] == "files" and isinstance(loc[1], int):
        files = data.get("files") or []
        entry = files[loc[1]] if loc[1] < len(files) else None
        if isinstance(entry, dict) and isinstance(entry.get("path"), str):
            return entry["path"]
    return None


def _schema_finding(err: dict[str, Any], data: dict[str, Any]) -> Finding:
    loc = tuple(err["loc"])
    names = tuple(p for p in loc if not isinstance(p, int))
    if err["type"] == "extra_forbidden":
        message = "unknown field" + _did_you_mean(names[-1], MODEL_AT.get(names[:-1]))
    elif err["type"] == "missing":
        message = "required field is missing"
    elif names in FRIENDLY:
        message = FRIENDLY[names]
    else:
        message = err["msg"].removeprefix("Value error, ")
    field = label(loc, data)
    if not loc and (plates := re.match(r"^(plates(?: \([^)]*\))?): (.*)$", message, re.DOTALL)):
        field, message = plates.groups()  # the plates' check of the whole document: name the plate
    return Finding(severity="error", check="schema", field=field, file=_file_of(loc, data), message=message)


def _did_you_mean(key: str, model: type[BaseModel] | None) -> str:
    if model is None:
        return ""
    close = difflib.get_close_matches(str(key), list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# ---------------------------------------------------------------- what the fields mean


def orcid_check_digit(base: str) -> str:
    """ISO 7064 MOD 11-2 check character of the first 15 digits of an ORCID iD."""
    total = 0
    for digit in base:
        total = (total + int(digit)) * 2
    result = (12 - total % 11) % 11
    return "X" if result == 10 else str(result)


def check_orcid(value: str) -> str | None:
    """Why ``value`` is not a valid ORCID iD, or None when it is."""
    bare = re.sub(r"^https?://orcid\.org/", "", value.strip())
    if bare != value.strip():
        return f"write the ORCID iD alone, without the URL: {bare}"
    if not ORCID_RE.match(bare):
        return f"{value!r} is not an ORCID iD (16 digits in four groups, e.g. 0000-0002-1825-0097)"
    digits = bare.replace("-", "")
    expected = orcid_check_digit(digits[:15])
    if digits[15] != expected:
        return f"{value} has a wrong check digit (expected {expected}): probably a typing error"
    return None


def check_doi(value: str) -> str | None:
    """Why ``value`` is not a DOI, or None when it is."""
    text = value.strip()
    if text.lower() in DOI_PLACEHOLDERS or not text:
        return f"{value!r} is a placeholder, not a DOI: leave 'publication' out until the DOI exists"
    if DOI_PREFIX_RE.match(text):
        return f"write the DOI alone, without the prefix: {DOI_PREFIX_RE.sub('', text)}"
    if not DOI_RE.match(text):
        return f"{value!r} is not a DOI (it starts with 10. and a registrant code, e.g. 10.1038/s41592-018-0195-8)"
    return None


def check_email(value: str) -> str | None:
    text = value.strip()
    if text.lower().startswith("mailto:"):
        return f"write the address alone, without 'mailto:': {text[7:]}"
    if not EMAIL_RE.match(text):
        return f"{value!r} is not an e-mail address"
    return None


def strings_in(value: Any, loc: tuple[Any, ...] = ()):
    if isinstance(value, str):
        yield loc, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings_in(item, (*loc, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from strings_in(item, (*loc, i))


def _normal(path: Any) -> str | None:
    try:
        return parse_relative_path(path) if isinstance(path, str) else None
    except ValueError:
        return None  # reported by the schema


def label_problems(files: Any) -> list[tuple[str, tuple[Any, ...], str]]:
    """What is wrong with the label entries of ``files``: (check, location, message) each.

    A label (``kind: label``) names the listed image file it annotates (``label_of``); ``label_of`` and
    ``label_name`` belong to labels only; the names of an image's labels are path-safe and distinct.
    """
    entries = [(i, e) for i, e in enumerate(files if isinstance(files, list) else []) if isinstance(e, dict)]
    kinds = {_normal(e.get("path")): e.get("kind", "image") for _i, e in entries}
    problems = []
    names: dict[tuple[str, str], str] = {}  # (image path, name folded to lower case) -> label path
    for i, entry in entries:
        kind = entry.get("kind", "image")
        if kind != "label":
            for key in ("label_of", "label_name"):
                if entry.get(key) is not None:
                    problems.append((key, ("files", i, key), f"only a label file (kind: label) has {key}; this file "
                                                             f"is kind: {kind}"))
            continue
        target = entry.get("label_of")
        if target is None:
            problems.append(("label_of", ("files", i, "label_of"), "required for a label: the path of the listed "
                                                                   "image file it annotates"))
        elif isinstance(target, str) and "TODO" not in target and (path := _normal(target)) is not None:
            if path not in kinds:
                problems.append(("label_of", ("files", i, "label_of"), f"{target} is not listed under files: a "
                                                                       "label annotates a listed image file"))
            elif kinds[path] != "image":
                problems.append(("label_of", ("files", i, "label_of"), f"{target} is listed as kind: {kinds[path]}; "
                                                                       "a label annotates an image file"))
        name = entry.get("label_name")
        if isinstance(name, str):
            if not LABEL_NAME_RE.match(name) or name.lower() in RESERVED_LABEL_NAMES:
                problems.append(("label_name", ("files", i, "label_name"),
                                 f"{name!r} is not a usable label name: letters, digits, '.', '_' and '-', starting "
                                 "with a letter or digit, at most 128 characters (and not zarr.json)"))
                continue
        elif isinstance(entry.get("path"), str):
            name = default_label_name(entry["path"])
        if isinstance(name, str) and isinstance(target, str) and (path := _normal(target)) is not None:
            other = names.setdefault((path, name.lower()), entry.get("path"))
            if other != entry.get("path"):
                problems.append(("label_name", ("files", i, "label_name"),
                                 f"the label name {name!r} is taken by {other}, another label of {path}: give each "
                                 "label of an image its own label_name"))
    return problems


def _field_findings(data: dict[str, Any], settings: SubmissionSettings, today: dt.date) -> list[Finding]:
    """What each field means, checked: every check's findings, in the order of the document."""
    found = [*_placeholders(data), *_licence(data, settings), *_release_date(data, settings, today),
             *_identifiers(data), *((check, loc, message, "error") for check, loc, message in
                                    label_problems(data.get("files"))), *_recommended(data)]
    return [Finding(severity=severity, check=check, field=label(loc, data), file=_file_of(loc, data),
                    message=message) for check, loc, message, severity in found]


Checked = Iterator[tuple[str, tuple[Any, ...], str, str]]  # (check, where, message, severity)


def _placeholders(data: dict[str, Any]) -> Checked:
    for loc, text in strings_in(data):
        if "TODO" in text:
            yield "placeholder", loc, "still holds the template's TODO: complete it", "error"


def _licence(data: dict[str, Any], settings: SubmissionSettings) -> Checked:
    licence = data.get("license")
    if isinstance(licence, str) and "TODO" not in licence and licence not in settings.licenses:
        near = difflib.get_close_matches(licence.replace(" ", "-"), settings.licenses, n=1, cutoff=0.6)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        yield ("license", ("license",), f"{licence!r} is not an accepted SPDX licence id{hint}; accepted: "
               + ", ".join(settings.licenses), "error")


def _release_date(data: dict[str, Any], settings: SubmissionSettings, today: dt.date) -> Checked:
    release = data.get("release_date")
    if isinstance(release, str):
        try:
            release = dt.date.fromisoformat(release)
        except ValueError:
            return  # reported by the schema
    if not isinstance(release, dt.date):
        return
    if release < settings.earliest_release_date:
        yield ("release_date", ("release_date",), f"{release} is before {settings.earliest_release_date}: "
                                                  "probably a typing error", "error")
    latest = today.replace(year=today.year + settings.max_embargo_years)
    if release > latest:
        yield ("release_date", ("release_date",), f"{release} is more than {settings.max_embargo_years} "
                                                  f"years ahead (latest accepted {latest})", "error")


def _identifiers(data: dict[str, Any]) -> Checked:
    """E-mail addresses, ORCID iDs, the DOI, the FBbi id and given sha256 sums are what they claim to be."""
    for i, author in enumerate(data.get("authors") or []):
        if not isinstance(author, dict):
            continue
        for key, check in (("email", check_email), ("orcid", check_orcid)):
            if isinstance(author.get(key), str) and "TODO" not in author[key] and (problem := check(author[key])):
                yield key, ("authors", i, key), problem, "error"
    publication = data.get("publication")
    if isinstance(publication, dict) and isinstance(publication.get("doi"), str):
        if problem := check_doi(publication["doi"]):
            yield "doi", ("publication", "doi"), problem, "error"
    method = data.get("imaging_method")
    if isinstance(method, dict) and isinstance(method.get("fbbi_id"), str) and not FBBI_RE.match(method["fbbi_id"]):
        yield ("fbbi_id", ("imaging_method", "fbbi_id"), f"{method['fbbi_id']!r} is not a Biological Imaging "
               "Methods Ontology id (FBbi: and 8 digits, e.g. FBbi:00000251)", "error")
    for i, entry in enumerate(data.get("files") or []):
        if isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and not SHA256_RE.match(entry["sha256"]):
            yield "sha256", ("files", i, "sha256"), "is not a sha256 (64 lower-case hexadecimal characters)", "error"


def _recommended(data: dict[str, Any]) -> Checked:
    """Recommended, not required: reported as warnings, published alongside."""
    for key, why in (("organism", "findable by species"), ("imaging_method", "checked against its modality")):
        if data.get(key) is None:
            yield "recommended", (key,), f"not given: give it so the study is {why}", "warning"
    authors = [a for a in data.get("authors") or [] if isinstance(a, dict)]
    if authors and not any(a.get("orcid") for a in authors):
        yield ("recommended", ("authors",), "no author has an ORCID iD: give at least one so the data is credited",
               "warning")
