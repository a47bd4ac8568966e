"""Intake: read and validate ``submission.yaml``, then allocate (or look up) the accession.

Everything is refused before any data moves, with one line per problem naming
the field or file. The accession is stable for the same submission location.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import functools
import hashlib
import os
import re
import time
import uuid
from typing import Any, Callable

import fsspec
import yaml
from fsspec.implementations.local import LocalFileSystem

from zarrchive import yamldoc
from zarrchive.archive.lineage import Traced, stage_task, traced
from zarrchive.archive.storage import dumps, join, read_json, resolve, to_url, write_bytes_exclusive
from zarrchive.archive.versions import ARCHIVE_MARKER
from zarrchive.config import ArchiveSettings, SubmissionLimits, SubmissionSettings
from zarrchive.errors import ArchiveNotFound, SubmissionError, TransientError
from zarrchive.landingzone import Entry, SubmissionFiles, UnsafeEntry, fold
from zarrchive.plates import detect as detect_plates
from zarrchive.records import Finding, Submission, SubmissionDoc, default_label_name, parse_relative_path
from zarrchive.runtime import retry_transient
from zarrchive.submission_checks import check_submission, label, strings_in

SUBMISSION_FILE = "submission.yaml"


MARKERS = {SUBMISSION_FILE, "READY"}  # what a submission folder holds besides the files it lists
UNLISTED_SHOWN = 20  # unlisted entries named one by one; the rest are counted


def check_folder(
    source: str, settings: SubmissionSettings
) -> tuple[SubmissionDoc | None, str | None, list[Finding]]:
    """Every finding about the submission at ``source``: its YAML, each field, the files it lists.

    Returns the document (None when it cannot be built), the sha256 of
    ``submission.yaml`` as submitted (None when missing) and the findings.
    Reads nothing but ``submission.yaml`` and the folder listing; never
    follows a link (``landingzone``).
    """
    files = SubmissionFiles(source)
    limits = settings.limits

    def refuse(message: str, sha256: str | None = None) -> tuple[None, str | None, list[Finding]]:
        return None, sha256, [Finding(severity="error", check="schema", field=SUBMISSION_FILE, message=message)]

    try:
        raw = files.read(SUBMISSION_FILE, limits.document_bytes)
    except FileNotFoundError:
        return refuse(f"missing (run 'zarrchive submission new {source}' to start one)")
    except UnsafeEntry as exc:
        return refuse(exc.reason)
    except OSError as exc:
        return refuse(f"cannot be read: {exc.strerror or exc}")
    if len(raw) > limits.document_bytes:
        return refuse(f"larger than {limits.document_bytes:,} bytes (submission.limits.document_bytes): a "
                      "submission.yaml describes the files, it does not hold data")
    sha256 = hashlib.sha256(raw).hexdigest()
    try:
        data = yamldoc.load(raw)
    except yamldoc.YAMLRefused as exc:
        return refuse(str(exc), sha256)
    if bounds := _bounds_findings(data, limits):
        return None, sha256, bounds
    doc, findings = check_submission(data, settings)
    findings += _file_findings(files, _listed_paths(data))
    return doc, sha256, findings


def _bounds_findings(data: Any, limits: SubmissionLimits) -> list[Finding]:
    """Values longer than ``limits.string_chars`` and more files than ``limits.files``, each named."""
    findings = []
    for loc, text in strings_in(data):
        if len(text) > limits.string_chars:
            findings.append(Finding(severity="error", check="schema", field=label(loc, data),
                                    message=f"{len(text):,} characters long, more than submission.limits."
                                            f"string_chars ({limits.string_chars:,})"))
    files = data.get("files") if isinstance(data, dict) else None
    if isinstance(files, list) and len(files) > limits.files:
        findings.append(Finding(severity="error", check="schema", field="files",
                                message=f"lists {len(files):,} files, more than submission.limits.files "
                                        f"({limits.files:,}): split the submission or ask the archive to raise it"))
    return findings


def _file_findings(files: SubmissionFiles, listed: list[tuple[int, str]]) -> list[Finding]:
    """Each listed path is a regular file or a Zarr store of the submission (no link, device, pipe or socket, at
    it or inside it), no two collide where case or Unicode normalisation is ignored; unlisted entries are named."""
    findings: list[Finding] = []
    on_disk: list[Entry] | None = None

    def error(i: int, path: str, check: str, message: str) -> None:
        findings.append(Finding(severity="error", check=check, field=f"files[{i}] ({path})", file=path,
                                message=message))

    def disk() -> list[Entry]:
        nonlocal on_disk
        if on_disk is None:
            try:
                on_disk = list(files.walk())
            except (OSError, UnsafeEntry):
                on_disk = []
        return on_disk

    folded: dict[str, str] = {}
    for i, path in listed:
        if (other := folded.setdefault(fold(path), path)) != path:
            error(i, path, "file_present", f"differs from {other} only in letter case or Unicode normalisation: "
                                           "the two would collide on many stores; rename one")
        try:
            kind = files.kind(path)
            if kind == "store":
                files.store_objects(path)
        except FileNotFoundError:
            near = [e.path for e in disk() if fold(e.path) == fold(path) and e.path != path]
            hint = (f" (the folder has {near[0]!r}, which differs only in letter case or Unicode normalisation: "
                    "list it exactly as it is named)") if near else ""
            error(i, path, "file_present", f"listed but not found in the submission{hint}")
            continue
        except UnsafeEntry as exc:
            where = f"{exc.file}: " if exc.file != path else ""
            error(i, path, "file_type", where + exc.reason)
            continue
        except OSError as exc:
            error(i, path, "file_present", f"cannot be read: {exc.strerror or exc}")
            continue
        if kind == "folder":
            error(i, path, "file_present", "a folder: only a Zarr store (zarr.json, .zgroup or .zarray at its root) "
                                           "is listed as a folder; list the files in it instead")
    findings += _unlisted_findings(disk(), {path for _i, path in listed})
    return findings


def _unlisted_findings(entries: list[Entry], listed: set[str]) -> list[Finding]:
    """A warning for what the folder holds but does not list (it is not archived), named up to a point."""
    stores = tuple(f"{p}/" for p in listed)
    unlisted = [e for e in entries if e.kind != "folder" and e.path not in listed and e.path not in MARKERS
                and not e.path.startswith(stores) and not any(part.startswith(".") for part in e.path.split("/"))]
    out = []
    for e in unlisted[:UNLISTED_SHOWN]:
        why = f" ({e.problem})" if e.problem else ""
        shown = e.path.encode("utf-8", "backslashreplace").decode()
        out.append(Finding(severity="warning", check="unlisted", file=shown,
                           message=f"in the folder but not listed in submission.yaml: it will not be archived{why}"))
    if len(unlisted) > UNLISTED_SHOWN:
        out.append(Finding(severity="warning", check="unlisted",
                           message=f"{len(unlisted) - UNLISTED_SHOWN} more unlisted entries are not archived"))
    return out


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

    A number is claimed by creating ``<accession>/accession.json`` exclusively, then given to the submission by
    creating its registry entry exclusively (an entry per submission location makes reruns stable). Of runs of
    one submission racing for its first accession, one entry is created: the others read it and let their own
    claim go, so one submission never gets two accessions.
    """
    fs, root = resolve(archive)
    key = submission_key(source)
    key_hash = hashlib.sha256(key.encode()).hexdigest()[:32]
    registry = join(root, "_registry", f"{key_hash}.json")
    if fs.exists(registry):
        return read_json(fs, registry)["accession"]
    fs.makedirs(root, exist_ok=True)
    claim = _claim_number(fs, root, key, settings)
    try:
        write_bytes_exclusive(fs, registry, dumps(claim))
    except FileExistsError:  # another run of this submission registered it first: its accession holds
        with contextlib.suppress(OSError):  # (a claim not let go is a gap in the numbers, nothing more)
            fs.rm(join(root, claim["accession"], "accession.json"))
            _remove_empty_folder(fs, join(root, claim["accession"]))
        return read_json(fs, registry)["accession"]
    return claim["accession"]


def _claim_number(fs: fsspec.AbstractFileSystem, root: str, key: str, settings: ArchiveSettings) -> dict[str, str]:
    """Claim the next free accession number for the submission ``key`` (an exclusive create); the claim."""
    pattern = re.compile(rf"^{re.escape(settings.accession_prefix)}(\d{{{settings.accession_digits}}})$")
    taken = [int(m.group(1)) for name in _names(fs, root) if (m := pattern.match(name))]
    number = max(taken, default=0) + 1
    busy = 0
    while True:
        accession = f"{settings.accession_prefix}{number:0{settings.accession_digits}d}"
        claim = {"accession": accession, "submission": key, "created": dt.datetime.now(dt.timezone.utc).isoformat()}
        try:
            write_bytes_exclusive(fs, join(root, accession, "accession.json"), dumps(claim))
            return claim
        except FileExistsError:
            number += 1
        except OSError as exc:  # an object store busy with a claim let go at that name (409): try it again
            if exc.errno != errno.EBUSY:
                raise
            busy += 1
            if busy > 10:  # (s3fs reports throttling as busy too: the task's retries take it from here)
                raise TransientError(f"claiming {accession}: the store stayed busy ({exc})") from exc
            time.sleep(0.2 * busy)


def _remove_empty_folder(fs: fsspec.AbstractFileSystem, path: str) -> None:
    if isinstance(fs, LocalFileSystem):
        with contextlib.suppress(OSError):
            os.rmdir(path)


def _names(fs: fsspec.AbstractFileSystem, root: str) -> list[str]:
    try:
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    except FileNotFoundError:  # an object store has no empty folders: a new archive lists as missing
        return []




def open_archive(archive: str, create: bool) -> bool:
    """Make sure ``archive`` is a zarrchive archive; return whether this call created it.

    An archive is marked by ``zarrchive-archive.json`` at its root (an archive made before the mark, with its
    ``_registry``, is marked on first use). A location without one is refused unless ``create``: a typing error in
    the archive root must not silently start a new archive."""
    fs, root = resolve(archive)
    marker = join(root, ARCHIVE_MARKER)
    if fs.exists(marker):
        return False
    legacy = "_registry" in _names(fs, root)
    if not (create or legacy):
        raise ArchiveNotFound(archive, [f"{to_url(fs, root)} holds no zarrchive archive ({ARCHIVE_MARKER} is missing): "
                                        "check the location, or ask for a new archive to be created there "
                                        "(create_archive)"])
    try:
        write_bytes_exclusive(fs, marker, dumps({"format_version": 1, "software": "zarrchive", "id": str(uuid.uuid4()),
                                                 "created": dt.datetime.now(dt.timezone.utc).isoformat()}))
    except FileExistsError:  # another run marked it first
        return False
    return not legacy


def intake_submission(source: str, archive: str, settings: ArchiveSettings,
                      checks: SubmissionSettings, create_archive: bool = False) -> Submission:
    """Validate the submission at ``source`` and give it its accession in ``archive`` (refused when ``archive`` is
    not an archive, unless ``create_archive``)."""
    doc, doc_sha256, warnings = read_submission(source, checks)
    created = open_archive(archive, create_archive)
    accession = allocate_accession(source, archive, settings)
    return Submission(source=submission_key(source), doc=doc, doc_sha256=doc_sha256, accession=accession,
                      findings=warnings, created_archive=created)


def template_for(folder: str) -> str:
    """A ``submission.yaml`` template listing the files found in ``folder``, for a depositor to complete.

    Links, devices, pipes and names that are not UTF-8 are left out and named in the header: they cannot be
    submitted."""
    files_of = SubmissionFiles(folder)
    walked = list(files_of.walk())
    is_store = functools.cache(lambda prefix: files_of.kind(prefix) == "store")
    refused = [e for e in walked if e.kind is None or not _utf8(e.path)]
    usable = {e.path for e in walked if e.kind == "file" and _utf8(e.path)}
    entries = {_entry_of(p, is_store) for p in usable}
    paths = sorted(rel for rel in entries
                   if rel not in MARKERS and not any(part.startswith(".") for part in rel.split("/")))
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
    images = [e["path"] for e in files if e.get("kind", "image") == "image"]
    if plates := [p for p in detect_plates(images) if not _ome_xml_places(files_of, p["pattern"], images)]:
        body["plates"] = plates
    header = (
        "# zarrchive submission, format version 1. Complete the TODO fields; remove optional ones you do not need.\n"
        "# files: kind is image (default), label or attachment; sha256 is optional but recommended;\n"
        "#   pixel_size {x, y, z, unit} and channel_names supply metadata a file lacks.\n"
        "#   A label (kind: label; integer label values, one channel, the image's shape without channels) names the\n"
        "#   image file it annotates with label_of; label_name (optional, default: the file name) names it among\n"
        "#   that image's labels. Files under a labels/ or masks/ folder are proposed as labels: check label_of.\n"
        "# plates (optional): a high-content screening plate, published as one OME-NGFF plate: its name and the\n"
        "#   pattern its image files are named by ({row} a letter or a number from 1, {column}, {field} and\n"
        "#   {acquisition} numbers, * any characters but /), e.g. plate1/{row}{column}_f{field}.tif; one file per\n"
        "#   field. A folder named the way screening software names fields is proposed as a plate: check it.\n"
    )
    for entry in refused:
        why = entry.problem or "its name is not valid UTF-8: rename it"
        header += f"# left out: {entry.path.encode('utf-8', 'backslashreplace').decode()!r}: {why}\n"
    return header + yaml.safe_dump(body, sort_keys=False, allow_unicode=True)


def _ome_xml_places(files_of: SubmissionFiles, pattern: str, images: list[str]) -> bool:
    """Whether the first file ``pattern`` names is an OME-TIFF whose OME-XML places its images on a plate (they
    need no declaration: the ingest reads the plate from there)."""
    from zarrchive.plates import compile_pattern

    regex = compile_pattern(pattern)
    first = next((p for p in images if regex.fullmatch(p)), None)
    if not first or not first.lower().endswith((".ome.tif", ".ome.tiff")):
        return False
    try:
        head = files_of.read(first, 1 << 20)
    except Exception:
        return False
    return b"<Plate" in head and b"<WellSample" in head


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # a name os.listdir decoded with surrogate escapes
        return False
    return not any(ord(c) < 32 or ord(c) == 127 for c in name)


def _entry_of(rel: str, is_store: Callable[[str], bool]) -> str:
    """The entry a file belongs to: the outermost Zarr store holding it (listed as one entry), or itself."""
    parts = rel.split("/")
    for i in range(1, len(parts)):
        if is_store("/".join(parts[:i])):
            return "/".join(parts[:i])
    return rel


LABEL_FOLDERS = {"labels", "label", "masks", "mask", "segmentations", "segmentation"}


IMAGE_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".png", ".jpg", ".jpeg", ".czi", ".nd2", ".lif", ".zarr", ".ims",
                  ".mrc", ".mrcs", ".map", ".vsi", ".svs", ".ndpi", ".scn", ".bif")


def template_entry(path: str, paths: list[str]) -> dict[str, Any]:
    """The template's entry for ``path``: an attachment unless its name ends like an image file's; a label when it
    lies in a folder named like labels or masks, with a guess of the image it annotates (the other file whose name
    its own name starts with); else an image."""
    if not path.lower().endswith(IMAGE_SUFFIXES):
        return {"path": path, "kind": "attachment"}
    if not any(part.lower() in LABEL_FOLDERS for part in path.split("/")[:-1]):
        return {"path": path}
    stem = default_label_name(path)
    images = [p for p in paths if p.lower().endswith(IMAGE_SUFFIXES)
              and not any(part.lower() in LABEL_FOLDERS for part in p.split("/")[:-1])]
    guesses = sorted((p for p in images if stem.startswith(default_label_name(p))),
                     key=lambda p: -len(default_label_name(p)))
    return {"path": path, "kind": "label",
            "label_of": guesses[0] if guesses else "TODO: the listed image file this label annotates"}


@stage_task(name="intake", cache_policy="none", retries=2, retry_delay_seconds=[1, 5],
            retry_condition_fn=retry_transient)
def intake(source: str, archive: str, settings: ArchiveSettings, checks: SubmissionSettings,
           create_archive: bool = False) -> Traced[Submission]:
    return traced("intake", intake_submission, source, archive, settings, checks, create_archive)
