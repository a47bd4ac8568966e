"""The records that cross stage boundaries, defined once.

Every record is a frozen pydantic model with ``extra="forbid"``. Records carry
references (URIs, paths, sizes, checksums) and metadata, never pixels.
The submission format (``submission.yaml``, version 1) is defined here too,
because it is the first record of every run.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# ---------------------------------------------------------------- lineage entities


class Entity(Record):
    """Something lineage talks about: a file or a Zarr store, with its checksum."""

    uri: str
    kind: Literal["file", "zarr"] = "file"
    role: Literal["source", "staged", "intermediate", "output"] | None = None
    size: int | None = None
    sha256: str | None = None


Severity = Literal["error", "warning"]


class Finding(Record):
    """One result of a check: what it concerns (image, file, field), how bad it is, and what to do."""

    severity: Severity
    check: str
    message: str
    image_id: str | None = None
    file: str | None = None
    field: str | None = None

    def line(self) -> str:
        """One line for people: where (field, file or image), then the message."""
        where = self.field or self.file or self.image_id
        return f"{where}: {self.message}" if where else self.message


# ---------------------------------------------------------------- submission format v1

# OME-NGFF length units and their size in micrometers (the one conversion table of the project).
MICROMETERS: dict[str, float] = {
    "angstrom": 1e-4, "attometer": 1e-12, "centimeter": 1e4, "decimeter": 1e5, "exameter": 1e24,
    "femtometer": 1e-9, "foot": 304800.0, "gigameter": 1e15, "hectometer": 1e8, "inch": 25400.0,
    "kilometer": 1e9, "megameter": 1e12, "meter": 1e6, "micrometer": 1.0, "mile": 1609344000.0,
    "millimeter": 1e3, "nanometer": 1e-3, "parsec": 3.0856775814913673e22, "petameter": 1e21,
    "picometer": 1e-6, "terameter": 1e18, "yard": 914400.0, "yoctometer": 1e-18, "yottameter": 1e30,
    "zeptometer": 1e-15, "zettameter": 1e27,
}
SPACE_UNITS = tuple(MICROMETERS)
SpaceUnit = Literal[SPACE_UNITS]  # type: ignore[valid-type]


class Author(Record):
    name: str = Field(min_length=1)
    email: str | None = None  # syntax: zarrchive.submission_checks
    orcid: str | None = None  # format and ISO 7064 check digit: zarrchive.submission_checks
    affiliation: str | None = None


class Organism(Record):
    scientific_name: str = Field(min_length=1)
    ncbi_taxon: int | None = Field(default=None, gt=0)


class ImagingMethod(Record):
    name: str = Field(min_length=1)
    fbbi_id: str | None = None  # format: zarrchive.submission_checks


class PublicationRef(Record):
    doi: str  # syntax, placeholders: zarrchive.submission_checks


class PixelSize(Record):
    """Physical size of one pixel along each spatial axis."""

    x: float | None = Field(default=None, gt=0)
    y: float | None = Field(default=None, gt=0)
    z: float | None = Field(default=None, gt=0)
    unit: SpaceUnit = "micrometer"


def row_name(value: str) -> str:
    """A plate row as plates label it: a letter (``b`` -> ``B``), or a number counted from 1 (``02`` -> ``B``)."""
    if not value.isdigit():
        return value.upper()
    number = int(value)
    if number < 1:
        raise ValueError(f"row {value!r}: rows are counted from 1")
    name = ""
    while number:
        number, rest = divmod(number - 1, 26)
        name = chr(ord("A") + rest) + name
    return name


PLATE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # a folder name on every store
WELL_NAME_RE = re.compile(r"^[A-Za-z0-9]{1,8}$")  # OME-NGFF: row and column names are alphanumeric


class WellPosition(Record):
    """Where an image lies in a high-content screening plate: plate, well (row and column names as the plate
    labels them, e.g. ``B`` and ``3``), and the field's index in its well (in the order the fields are
    numbered); ``acquisition`` when the plate was imaged more than once."""

    plate: str = Field(pattern=PLATE_NAME_RE.pattern)
    row: str = Field(pattern=WELL_NAME_RE.pattern)
    column: str = Field(pattern=WELL_NAME_RE.pattern)
    field: int = Field(default=0, ge=0)
    acquisition: int | None = Field(default=None, ge=0)

    @field_validator("row", mode="before")
    @classmethod
    def _row_letters(cls, row: Any) -> Any:
        return row_name(str(row)) if isinstance(row, (str, int)) and str(row).isalnum() else row

    @field_validator("column", mode="before")
    @classmethod
    def _column_number(cls, column: Any) -> Any:
        return str(int(column)) if isinstance(column, int) or (isinstance(column, str) and column.isdigit()) \
            else column

    @property
    def well(self) -> str:
        """The well's path in the plate: ``B/3``."""
        return f"{self.row}/{self.column}"

    @property
    def path(self) -> str:
        """The field's path in the plate: ``B/3/0``."""
        return f"{self.row}/{self.column}/{self.field}"


class PlateDeclaration(Record):
    """A plate a submission declares: its name, and the pattern its image files are named by, e.g.
    ``plate1/{row}{column}_f{field}.tif`` (``zarrchive.plates``)."""

    name: str = Field(pattern=PLATE_NAME_RE.pattern)
    pattern: str | None = Field(default=None, min_length=1)  # None: its files give their wells themselves
    description: str | None = None


class FileEntry(Record):
    """One file listed in ``submission.yaml``."""

    path: str = Field(min_length=1)
    sha256: str | None = None  # well formed: zarrchive.submission_checks
    kind: Literal["image", "label", "attachment"] = "image"
    pixel_size: PixelSize | None = None
    channel_names: list[str] | None = None
    label_of: str | None = None  # a label: the listed image file it annotates (checks: zarrchive.submission_checks)
    label_name: str | None = None  # a label: its name under the image's labels/ (default: from the file name)
    well: WellPosition | None = None  # a field of a plate: given, or found by a plate's pattern (SubmissionDoc)

    @field_validator("path", "label_of")
    @classmethod
    def _relative_inside(cls, path: str | None) -> str | None:
        return parse_relative_path(path) if path is not None else None

    @property
    def label(self) -> str:
        """The label's name: ``label_name``, or the file's name without its extension, made path-safe."""
        return self.label_name or default_label_name(self.path)


class SubmissionDoc(Record):
    """``submission.yaml``, version 1 of the format."""

    title: str = Field(min_length=10, max_length=300)
    description: str = Field(min_length=1)
    license: str = Field(min_length=1)  # from the allowed SPDX list: zarrchive.submission_checks
    release_date: dt.date
    authors: list[Author] = Field(min_length=1)
    organism: Organism | None = None
    imaging_method: ImagingMethod | None = None
    publication: PublicationRef | None = None
    files: list[FileEntry] = Field(min_length=1)
    plates: list[PlateDeclaration] = []  # high-content screening plates, each image file a field of a well

    @field_validator("files")
    @classmethod
    def _unique_paths(cls, files: list[FileEntry]) -> list[FileEntry]:
        seen: set[str] = set()
        for entry in files:
            if entry.path in seen:
                raise ValueError(f"{entry.path} is listed twice")
            seen.add(entry.path)
        return files

    @model_validator(mode="after")
    def _place_fields(self) -> "SubmissionDoc":
        """Each file a plate's pattern names gets its well position (``zarrchive.plates``)."""
        from zarrchive.plates import place_fields

        placed = place_fields(self.plates, self.files)  # ValueError naming the plate and the files
        if placed != self.files:
            object.__setattr__(self, "files", placed)
        return self


def parse_relative_path(path: str) -> str:
    """Normalise a submitted path; refuse one that is absolute or escapes the folder."""
    if "\\" in path:
        raise ValueError(f"path {path!r} must use '/' separators")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise ValueError(f"path {path!r} holds a control character: rename the file")
    if path.startswith("/") or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", path):
        raise ValueError(f"path {path!r} must be relative to the submission folder")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts):
        raise ValueError(f"path {path!r} escapes the submission folder")
    return "/".join(parts)


LABEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a folder name on every store
RESERVED_LABEL_NAMES = {"zarr.json"}  # the labels group's own metadata


def _stem(path: str) -> str:
    """A submitted path without its file extension (``.ome.tif`` counts as one)."""
    return re.sub(r"(\.ome)?\.[A-Za-z0-9]+$", "", path)


def slug(path: str) -> str:
    """A readable, path-safe image id from a submitted path: images/cell01.ome.tif -> images_cell01."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", _stem(path)).strip("_") or "image"


def default_label_name(path: str) -> str:
    """The name a label gets from its file: labels/cell01_nuclei.tif -> cell01_nuclei (path-safe; by the same
    rule as ``slug``, from the file name alone, dots kept)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", _stem(path.rsplit("/", 1)[-1])).strip("._-")[:128] or "label"


class Submission(Record):
    """A validated submission with its accession: the output of intake."""

    source: str  # URL of the submission folder
    doc: SubmissionDoc
    doc_sha256: str  # of submission.yaml as submitted
    accession: str
    findings: list[Finding] = []  # warnings from the submission checks (errors refuse the submission)
    created_archive: bool = False  # intake started a new archive for it

    @property
    def embargoed(self) -> bool:
        return self.doc.release_date > dt.date.today()

    def entities(self) -> list[Entity]:
        return [Entity(uri=f"{self.source.rstrip('/')}/submission.yaml", role="source", sha256=self.doc_sha256)]


# ---------------------------------------------------------------- stage records


class FileRecord(Record):
    """A submitted file, staged and hashed by fetch."""

    path: str  # as submitted, relative to the submission folder
    source_uri: str
    staged_path: str
    size: int
    sha256: str
    kind: Literal["image", "label", "attachment"]

    def entities(self) -> list[Entity]:
        return [Entity(uri=self.staged_path, role="staged", size=self.size, sha256=self.sha256)]


class Failure(Record):
    """A file or image a stage could not process, and why (the others go on)."""

    stage: str
    source_path: str
    error: str
    image_id: str | None = None
    series: int | None = None
    label_of: str | None = None  # a label: the id of the image it annotates


class FetchResult(Record):
    files: list[FileRecord]
    failures: list[Failure]

    def entities(self) -> list[Entity]:
        return [e for f in self.files for e in f.entities()]

    def sources(self) -> list[Entity]:
        """The submitted files that were read (inputs of fetch, with the checksums measured while copying)."""
        return [Entity(uri=f.source_uri, role="source", size=f.size, sha256=f.sha256) for f in self.files]


class Axis(Record):
    name: Literal["t", "c", "z", "y", "x"]
    type: Literal["time", "channel", "space"]
    unit: str | None = None


class Level(Record):
    """One resolution level of a multiscale image."""

    path: str  # array name inside the image group: "0", "1", ...
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...]
    downsampling: Literal["mean", "mode"] = "mean"  # how it is made from the level above (pyramid.downsample)


def factors(above: Level, level: Level) -> tuple[int, ...]:
    """The downsampling factor (1 or 2) of ``level`` along each axis, relative to the level above."""
    return tuple(int(round(b / a)) for a, b in zip(above.scale, level.scale))


class SourceLayout(Record):
    """How to read one series of a file in the image's axes."""

    reader: str  # bioio reader module, e.g. bioio_ome_tiff
    series: int
    axes: tuple[str, ...]  # the image's axes, e.g. ("c", "z", "y", "x")
    samples_as_channels: bool = False  # RGB(A) samples of the file are the image's channels
    tiff_axes: str | None = None  # the file's axes (bioio letters, in tifffile's order) when tifffile reads it
    tiff_series: int | None = None  # tifffile's index of the series, when it is not ``series`` (an OME-TIFF holding
    #                                 only some of the images its OME-XML describes)
    zarr_array: str | None = None  # an OME-Zarr input: its level-0 array (path in the store), read with zarr
    zarr_axes: str | None = None  # ... and that array's axes (NGFF names, in its order)
    stored_axes: str | None = None  # a format's own array (``formats.by_name(reader).array``): its axis order
    dtype: str | None = None  # the stored type when it differs from the file's (a bool mask stored as uint8 labels)


def series_label(path: str, series: int, series_count: int) -> str:
    """A series of a file as messages name it: the file alone when it holds one series."""
    return path if series_count == 1 else f"{path} [series {series}]"


class ImageRecord(Record):
    """One image (one series of one file): its metadata and level 0 after convert, all levels after pyramid.

    The pixels stay in the source file until the compress pass reads them through ``layout``.
    A label image (``kind="label"``) has no channel axis; its levels follow those of the image it
    annotates (``label_of``, an image id) and are downsampled by mode; it is published under that
    image's ``labels/<label_name>/``.
    """

    image_id: str
    conversion_id: str
    source_path: str  # submitted path
    source_sha256: str
    series: int
    series_name: str
    series_count: int = Field(default=1, ge=1)  # how many series its file holds
    reader: str
    layout: SourceLayout  # how the compress pass reads the pixels from the source file
    metadata_xml: str  # work-area path of the OME-XML kept beside the image (the file's own, or generated)
    metadata_sha256: str
    documents: tuple[tuple[str, str], ...] = ()  # other original metadata kept beside the image: (its name in the
    #                                             store, e.g. MRC/header.json; its work-area path)
    axes: tuple[Axis, ...]
    dtype: str
    channel_names: tuple[str, ...]  # one per channel
    channel_names_given: int | None = None  # how many names submission.yaml gave (None: it gave none)
    channel_colours: tuple[str, ...] | None = None  # hex RRGGBB per channel, as the file gives them (None: defaults)
    channel_windows: tuple[tuple[float, float], ...] | None = None  # display windows the file gives (None: from data)
    calibrated: bool  # whether any physical pixel size is known
    levels: tuple[Level, ...]
    notes: tuple[str, ...] = ()  # metadata conflicts and defaults applied
    lossy_source: str | None = None  # the lossy compression the source's pixels went through (e.g. JPEG)
    source_set: tuple[str, ...] = ()  # a multi-file OME-TIFF: every file of the set (submitted paths), in order
    kind: Literal["image", "label"] = "image"
    label_of: str | None = None  # a label: the id of the image it annotates
    label_name: str | None = None  # a label: its name under that image's labels/
    well: WellPosition | None = None  # a field of a plate: published under the plate's store at its well

    @property
    def shape(self) -> tuple[int, ...]:
        return self.levels[0].shape

    @property
    def axis_names(self) -> list[str]:
        """Its axes' names in order, e.g. ["c", "z", "y", "x"]."""
        return [a.name for a in self.axes]

    @property
    def shown_as(self) -> str:
        """How messages name it: its file, and its series when the file holds several (one rule for every
        stage)."""
        return series_label(self.source_path, self.series, self.series_count)

    @property
    def downsampling(self) -> Literal["mean", "mode"]:
        """How the levels below level 0 are made: ``mean`` for intensities, ``mode`` for labels."""
        return self.levels[-1].downsampling

    def entities(self) -> list[Entity]:
        return [Entity(uri=self.metadata_xml, role="intermediate", sha256=self.metadata_sha256)]


class CodecChoice(Record):
    """A codec as written into Zarr metadata (name + configuration), and who can read it."""

    name: str
    configuration: dict[str, Any]
    readable_by: str = "any Zarr v3 reader"


class CodecTrial(Record):
    """One candidate codec measured on an image's sample chunks (or skipped, and why)."""

    codec: CodecChoice
    ratio: float | None = None
    stored_bytes: int | None = None
    encode_mbps: float | None = None  # one thread
    decode_mbps: float | None = None
    skipped: str | None = None


class CodecSelection(Record):
    """How an image's codec was chosen: the objective, the sample, every candidate's figures."""

    objective: str
    min_encode_mbps: float
    size_tolerance: float = 0.0
    slow_mbps: float | None = None  # the floor of the profile's slow candidates for this image (None: no slow ones)
    slow_within: float | None = None  # how near the smallest a family leads (its slow levels tried)
    sample_chunks: int
    sample_bytes: int
    candidates: list[CodecTrial]
    chosen: int  # index into candidates


class CompressionReport(Record):
    """The compressed image store and the proof that it is lossless."""

    image_id: str
    store: str  # staging path of the compressed OME-Zarr
    codec: CodecChoice
    bytes_in: int  # uncompressed bytes over all levels
    bytes_out: int  # stored bytes over all levels (chunks + metadata)
    ratio: float
    seconds: float
    chunks_verified: int
    level0_sha256: str | None  # digest over level 0's chunks, in chunk order (what QC re-checks; None: not taken,
    #                              by ``zarrchive convert``, which runs no QC)
    store_sha256: str  # digest over every object of the store (path + sha256)
    selection: CodecSelection | None = None  # how the codec was chosen (None: a fixed codec)
    levels_codec: CodecChoice | None = None  # the codec of the levels below level 0 (None: level 0's, ``codec``)
    levels_selection: CodecSelection | None = None  # how it was chosen (None: not chosen, level 0's)
    thumbnail: str | None = None  # staging path of the picture the pass made for the landing page (None: publish
    #                               makes it from the store)

    def entities(self) -> list[Entity]:
        return [Entity(uri=self.store, kind="zarr", role="output", size=self.bytes_out, sha256=self.store_sha256)]

    def facts(self) -> dict[str, Any]:
        """What lineage keeps of the stage's outcome: the codec, who can read it, how it was chosen."""
        return {"codec": self.codec.model_dump(mode="json"), "ratio": self.ratio, "bytes_out": self.bytes_out,
                "chunks_verified": self.chunks_verified,
                "codec_selection": self.selection.model_dump(mode="json") if self.selection else None,
                **({"levels_codec": self.levels_codec.model_dump(mode="json")} if self.levels_codec else {}),
                **({"levels_codec_selection": self.levels_selection.model_dump(mode="json")}
                   if self.levels_selection else {})}


class QCReport(Record):
    suite: str
    modality: str | None = None
    rows: list[dict[str, Any]]  # one per image
    channels: list[dict[str, Any]] = []  # one per channel of each image
    findings: list[Finding]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def image_status(self, image_id: str) -> Literal["ok", "warning", "error"]:
        return status_of([f for f in self.findings if f.image_id == image_id])

    def by_image(self) -> dict[str | None, list[Finding]]:
        """Each image's findings (the submission's own under None), in one pass over them: a run of 10,000 images
        asks for every image's."""
        found: dict[str | None, list[Finding]] = {}
        for finding in self.findings:
            found.setdefault(finding.image_id, []).append(finding)
        return found


def status_of(findings: list[Finding]) -> Literal["ok", "warning", "error"]:
    """An image's QC status from its findings: its worst severity."""
    severities = {f.severity for f in findings}
    return "error" if "error" in severities else "warning" if "warning" in severities else "ok"


ImageStatus = Literal["published", "failed", "blocked", "unchanged"]


class ImageOutcome(Record):
    """What became of one image of a submission."""

    image_id: str
    source_path: str
    series: int | None = None
    status: ImageStatus
    qc: Literal["ok", "warning", "error", "not run"] = "not run"
    path: str | None = None  # relative to the version folder
    error: str | None = None
    label_of: str | None = None  # a label: the id of the image it annotates
    label_name: str | None = None  # a label: its name under that image's labels/
    labels: list[str] = []  # an image: the names of its labels published with it
    codec: str | None = None  # a published image: the codec its chunks are stored with
    bytes: int | None = Field(default=None, ge=0)  # a published image: the bytes its store occupies
    well: WellPosition | None = None  # a field of a plate


PublicationStatus = Literal["published", "unchanged", "blocked", "failed", "refused", "busy", "damaged", "rejected"]


class Publication(Record):
    """The result of one ingestion: what was (or was not) published, and why.

    ``published`` and ``unchanged`` are successes; ``refused`` (the submission or archive was refused before any
    data moved), ``blocked`` and ``failed`` (images failed or QC errors under the publish policy), ``busy``
    (another run is publishing the accession), ``damaged`` (the version it would be is damaged) and ``rejected``
    (a curator did not approve it) published nothing. A ``published`` version with images that were not published
    (``skip_image``) is partial (``partial``).
    """

    accession: str | None
    status: PublicationStatus
    version: int | None = None
    archive: str
    submission: str | None = None
    version_uri: str | None = None
    url: str | None = None  # the landing page: under publish.public_base_url when set, else the version's location
    fingerprint: str | None = None
    images: list[ImageOutcome] = []
    reasons: list[str] = []
    created_archive: bool = False  # this run started a new archive at ``archive``
    embargoed_until: dt.date | None = None  # published to the private location, released on this date

    @property
    def partial(self) -> bool:
        """A version was published without some of the submission's images."""
        return self.status == "published" and any(o.status not in ("published", "unchanged") for o in self.images)

    @property
    def ok(self) -> bool:
        return self.status in ("published", "unchanged")


class Decision(Record):
    """A curator's decision on a version before it is published (recorded in its lineage)."""

    approved: bool
    curator: str | None = None
    reason: str = ""
    decided: dt.datetime
    timed_out: bool = False

    def describe(self) -> str:
        if self.timed_out:
            return f"no curator decided within the approval time ({self.reason}): not approved"
        verdict = "approved" if self.approved else "rejected"
        return f"{verdict} by {self.curator}" + (f": {self.reason}" if self.reason else "")

    def facts(self) -> dict[str, Any]:
        return {"decision": "approved" if self.approved else "rejected", "curator": self.curator,
                "reason": self.reason, "decided": self.decided.isoformat(), "timed_out": self.timed_out}


class ManifestEntry(Record):
    path: str
    size: int
    sha256: str


class LineageRecord(Record):
    """What one stage did: inputs, outputs, parameters, software, time, run ids, outcome."""

    stage: str
    image_id: str | None = None
    inputs: list[Entity]
    outputs: list[Entity]
    parameters: dict[str, Any]
    software: dict[str, str]
    started: dt.datetime
    ended: dt.datetime
    host: str
    flow_run_id: str | None = None
    task_run_id: str | None = None
    run_url: str | None = None  # the flow run in the Prefect UI, when a server is used
    facts: dict[str, Any] = {}  # what the stage measured or decided (e.g. the codec chosen and why)
    outcome: Literal["success", "failed"] = "success"
    error: str | None = None
