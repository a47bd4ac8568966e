"""The archive's own documents, typed and versioned: ``manifest.json``, ``versions.json``, ``qc/report.json``
and the changes feed's events.

Each is a pydantic record with a ``format_version``, defined here and written and read only through here:
``Manifest.write``/``Manifest.read`` and the like. A reader validates what it reads and refuses a document of
a newer format than it knows, naming the document and the zarrchive that would read it, instead of guessing
at fields it does not know. Documents written before ``format_version`` existed are format 1. Fields are
never removed or given a new meaning within a format; a new format adds what it needs and readers of the
newer format still read every older one (see each ``FORMAT`` history). The README's "Archive documents"
section describes each for people.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, ClassVar, Literal

import fsspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from zarrchive.archive.storage import dumps
from zarrchive.errors import ZarrchiveError
from zarrchive.records import ImageOutcome

SHA256 = r"^[0-9a-f]{64}$"


class DocumentError(ZarrchiveError):
    """An archive document that this zarrchive cannot read: of a newer format, or not what its format says."""

    def __init__(self, where: str, reason: str):
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")

    def __reduce__(self):
        return type(self), (self.where, self.reason)


class Document(BaseModel):
    """One of the archive's documents: validated on write and on read, refused when newer than this code."""

    model_config = ConfigDict(extra="forbid")
    NAME: ClassVar[str]
    FORMAT: ClassVar[int]

    format_version: int = Field(default=1, ge=1)

    @classmethod
    def parse(cls, data: bytes | str | dict[str, Any], where: str) -> "Document":
        """Read a document (its bytes or its parsed JSON) found at ``where``."""
        try:
            doc = json.loads(data) if isinstance(data, (bytes, str)) else data
        except ValueError as exc:
            raise DocumentError(where, f"not a {cls.NAME}: not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise DocumentError(where, f"not a {cls.NAME}: a JSON object was expected")
        found = doc.get("format_version", 1)
        if not isinstance(found, int) or isinstance(found, bool):
            raise DocumentError(where, f"not a {cls.NAME}: format_version is {found!r}, not a number")
        if found > cls.FORMAT:
            raise DocumentError(where, f"{cls.NAME} of format {found}; this zarrchive reads formats 1 to "
                                       f"{cls.FORMAT}: read it with a newer zarrchive (pip install -U zarrchive)")
        try:
            return cls.model_validate(doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise DocumentError(where, f"not a valid {cls.NAME} of format {found}: {field}: {first['msg']}") from None

    @classmethod
    def read(cls, fs: fsspec.AbstractFileSystem, path: str) -> "Document":
        with fs.open(path, "rb") as fh:
            return cls.parse(fh.read(), path)

    def to_bytes(self) -> bytes:
        """The document as stored: canonical JSON (sorted keys, indented), in the format this code writes."""
        return dumps(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=False)


def _iso_datetime(value: str) -> str:
    dt.datetime.fromisoformat(value)  # raises ValueError: not an ISO 8601 time
    return value


# ---------------------------------------------------------------- manifest.json


class FileEntry(BaseModel):
    """One object of a version: its path from the version folder (``../v<K>/…`` when shared with an earlier
    version), its size and sha256."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1)
    size: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256)


class Released(BaseModel):
    """How an embargoed version became public."""

    model_config = ConfigDict(extra="forbid")
    date: dt.date
    early: bool
    by: str | None = None
    reason: str = ""
    embargoed_until: dt.date


class Manifest(Document):
    """``<accession>/v<N>/manifest.json``: what a version is made of, written last (its commit point).

    Formats: 1, before ``format_version`` was written; 2, ``embargoed``, ``released``; 3, ``study`` and each
    image's ``codec`` and ``bytes``; 4, objects shared with an earlier version (paths ``../v<K>/…``); 5, plates
    (objects under ``plates/``, each field image's ``well``)."""

    NAME: ClassVar[str] = "manifest"
    FORMAT: ClassVar[int] = 5

    accession: str
    version: int = Field(ge=1)
    previous_version: int | None = None
    created: str
    fingerprint: str = Field(pattern=SHA256)
    title: str
    release_date: dt.date | None = None
    embargoed: bool = False
    submission: str | None = None
    study: dict[str, Any] | None = None
    images: list[ImageOutcome] = []
    files: list[FileEntry]
    released: Released | None = None

    _created = field_validator("created")(_iso_datetime)


# ---------------------------------------------------------------- versions.json


class Withdrawal(BaseModel):
    model_config = ConfigDict(extra="forbid")
    by: str
    reason: str
    at: str


class VersionSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1)
    created: str
    fingerprint: str
    release_date: dt.date | None = None
    files: int = Field(ge=0)
    bytes: int = Field(ge=0)  # every object the version lists
    stored_bytes: int | None = Field(default=None, ge=0)  # the objects it stored itself (not shared)
    withdrawn: Withdrawal | None = None  # (format 3)


class VersionIndex(Document):
    """``<accession>/versions.json``: the committed versions of one location, oldest first, rebuilt from their
    manifests after each publish and release.

    Formats: 1, a bare JSON list of versions; 2, an object with ``accession`` and ``versions`` (each with
    ``stored_bytes``); 3, each withdrawn version with its ``withdrawn`` record (by, reason, at)."""

    NAME: ClassVar[str] = "versions index"
    FORMAT: ClassVar[int] = 3

    accession: str
    versions: list[VersionSummary]

    @classmethod
    def parse(cls, data: bytes | str | dict[str, Any] | list[Any], where: str) -> "VersionIndex":
        try:
            doc = json.loads(data) if isinstance(data, (bytes, str)) else data
        except ValueError as exc:
            raise DocumentError(where, f"not a {cls.NAME}: not JSON ({exc})") from None
        if not isinstance(doc, list):
            return super().parse(doc, where)
        parts = where.rstrip("/").split("/")  # format 1: a bare list, in <accession>/versions.json
        try:
            return cls(format_version=1, accession=parts[-2] if len(parts) > 1 else "", versions=doc)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise DocumentError(where, f"not a valid {cls.NAME} of format 1: {field}: {first['msg']}") from None


# ---------------------------------------------------------------- qc/report.json


class QCDocument(Document):
    """``<accession>/v<N>/qc/report.json``: the QC facts of each image and channel, and every finding.

    Formats: 1 (``format_version`` written since zarrchive's manifest format 4)."""

    NAME: ClassVar[str] = "QC document"
    FORMAT: ClassVar[int] = 1

    suite: str
    modality: str | None = None
    images: list[dict[str, Any]]
    channels: list[dict[str, Any]] = []
    findings: list[dict[str, Any]]
    errors: int = Field(ge=0)
    warnings: int = Field(ge=0)


# ---------------------------------------------------------------- the changes feed


class ChangeEvent(Document):
    """One event of the changes feed (``_changes/<event>.json``; a line of ``changes.jsonl``).

    Formats: 1."""

    NAME: ClassVar[str] = "change event"
    FORMAT: ClassVar[int] = 1

    time: str
    event: Literal["published", "released", "withdrawn"]
    accession: str
    version: int = Field(ge=1)
    manifest_sha256: str = Field(pattern=SHA256)
    url: str

    _time = field_validator("time")(_iso_datetime)
