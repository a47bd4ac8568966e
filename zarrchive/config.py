"""Configuration: YAML validated by pydantic models, loaded once at the flow boundary.

``configs/default.yaml`` holds the embedded defaults; a user's file is merged
over it key by key. Each stage receives only its own slice.
"""

from __future__ import annotations

import datetime as dt
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from zarrchive.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # options that bound or pace the work but never change its result: left out of identities and fingerprints
    operational: ClassVar[frozenset[str]] = frozenset()

    def identity(self) -> dict[str, Any]:
        """The section as the identity of what it produces (its operational options left out)."""
        return self.model_dump(mode="json", exclude=set(self.operational))


class ArchiveSettings(Section):
    accession_prefix: str = Field(pattern=r"^[A-Z][A-Z0-9-]{0,15}$")
    accession_digits: int = Field(ge=1, le=12)
    private: str | None = None  # where embargoed versions are kept (not served publicly); None: beside a folder
    #                             archive (<root>-private); an object-store archive must name one


class SubmissionLimits(Section):
    """Bounds on what a depositor's ``submission.yaml`` may hold (checked before and while it is parsed)."""

    document_bytes: int = Field(default=4 << 20, ge=1024)  # size of submission.yaml
    string_chars: int = Field(default=65536, ge=300)  # any one value (a description, a path…)
    files: int = Field(default=200_000, ge=1)  # entries under files


class SubmissionSettings(Section):
    licenses: list[str] = Field(min_length=1)
    earliest_release_date: dt.date
    max_embargo_years: int = Field(ge=0, le=50)
    limits: SubmissionLimits = SubmissionLimits()


class StagingSettings(Section):
    root: str | None = None
    keep: bool = False
    work: str | None = None


class FetchSettings(Section):
    block_size: int = Field(gt=0)
    retries: int = Field(ge=0)
    retry_delay_seconds: list[float]
    timeout_seconds: float = Field(default=86400, gt=0)  # copying and hashing one file (or Zarr store), retries included
    threads: int = Field(default=4, ge=1, le=64)  # large files (storage.SMALL_COPY) copied at once

    operational: ClassVar[frozenset[str]] = frozenset({"timeout_seconds", "threads"})


def _byte_count(value: int | str) -> int:
    from dask.utils import parse_bytes

    return parse_bytes(value) if isinstance(value, str) else value


ByteCount = Annotated[int | str, AfterValidator(_byte_count)]


class ImageBudget(Section):
    """What one image may declare, checked from its file's header before any pixel is read."""

    max_bytes: ByteCount = 4 << 40  # uncompressed bytes of one image (one series)
    max_plane_pixels: int = Field(default=1 << 36, ge=1)  # y × x of one plane (a TIFF page: all of it)
    max_planes: int = Field(default=10_000_000, ge=1)  # t × c × z planes of one image
    max_series: int = Field(default=10_000, ge=1)  # series (scenes) of one file
    max_ifds: int = Field(default=10_000_000, ge=1)  # pages (IFDs) of one TIFF file
    max_expansion: float = Field(default=10_000, gt=1)  # declared bytes / file bytes ...
    expansion_floor: ByteCount = 1 << 30  # ... checked for images declaring more than this


class ConvertSettings(Section):
    chunk_xy: Annotated[int, Field(ge=16, multiple_of=2)] | Literal["auto"]
    chunk_z: int = Field(ge=1)
    chunk_bytes: int = Field(default=1 << 20, ge=1 << 12)  # chunk_xy "auto": a chunk of at most this many bytes
    limits: ImageBudget = ImageBudget()
    timeout_seconds: float = Field(default=900, gt=0)  # reading one file's headers and metadata

    operational: ClassVar[frozenset[str]] = frozenset({"limits", "timeout_seconds"})


class PyramidSettings(Section):
    method: Literal["mean"]
    max_levels: int = Field(ge=1)


LEVEL_CODECS = ("blosc", "zstd")  # the codecs the levels below level 0 may take besides level 0's: every Zarr v3
#                                  reader has them, so a level never needs more installed than level 0 does


class CodecSpec(Section):
    """One lossless codec with its settings: a candidate of a profile, or the fixed codec."""

    codec: Literal["blosc", "zstd", "jpegxl", "jpegls", "htj2k", "pcodec"]
    cname: Literal["zstd", "lz4", "lz4hc", "zlib", "blosclz"] = "zstd"  # blosc's inner compressor
    clevel: int = Field(default=3, ge=0, le=22)  # blosc / zstd level
    shuffle: Literal["shuffle", "bitshuffle", "noshuffle"] = "shuffle"  # blosc only
    level: int | None = Field(default=None, ge=0, le=12)  # jpegxl effort (1-9), pcodec level (0-12)
    # the profile's baseline (ome-zarr-py's default): eligible whatever its speed, and never beaten by a larger
    # candidate (a rule of the choice, recorded in its objective; not part of identities)
    baseline: bool = Field(default=False, exclude=True)
    # a slow setting of a codec family (a higher level): tried after the others, and only while its family leads;
    # eligible when it encodes the image's level 0 within the profile's slow_seconds (compress.slow_seconds). In
    # identities only where true (CompressSettings.identity): a profile without slow candidates keeps its own
    slow: bool = Field(default=False, exclude=True)
    # a candidate for the pyramid's levels below level 0 only (compress.levels_codec: fastest): blosc or zstd, never
    # tried for level 0. In identities only where true, as slow is
    levels: bool = Field(default=False, exclude=True)

    def label(self) -> str:
        """A short name of the codec and its settings ("blosc zstd 5 shuffle", "zstd 19", "jpegxl 9")."""
        if self.codec == "blosc":
            return f"blosc {self.cname} {self.clevel} {self.shuffle}"
        if self.codec == "zstd":
            return f"zstd {self.clevel}"
        return self.codec if self.level is None else f"{self.codec} {self.level}"


class CompressSettings(Section):
    profile: Literal["compat", "max", "fixed"] = "compat"
    profiles: dict[Literal["compat", "max"], list[CodecSpec]] = {}
    # the throughput floor (MB/s, one thread): one for every profile, or one for each ({compat: 40, max: 20})
    min_encode_mbps: float | dict[Literal["compat", "max"], float] = 40.0
    size_tolerance: float = Field(default=0.01, ge=0, le=1)
    # the time a slow candidate may take to encode an image's level 0 (seconds, one thread): one for every
    # profile, or one for each ({compat: 2, max: 20}); 0: slow candidates are not tried (unless min_encode_mbps is 0:
    # then every candidate is eligible whatever its speed, slow ones too)
    slow_seconds: float | dict[Literal["compat", "max"], float] = 0.0
    # a family leads, and its slow levels are tried, while its last level tried stores within this fraction of the
    # smallest candidate so far (a slower level gains 5-60 % on some images): one for every profile, or one for each
    slow_within: float | dict[Literal["compat", "max"], float] = 0.05
    sample_chunks: int = Field(default=8, ge=1, le=256)
    codec: Literal["blosc", "zstd"] = "blosc"  # the fixed codec (profile: fixed)
    cname: Literal["zstd", "lz4", "lz4hc", "zlib", "blosclz"] = "zstd"
    clevel: int = Field(default=3, ge=0, le=22)
    shuffle: Literal["shuffle", "bitshuffle", "noshuffle"] = "bitshuffle"
    shard_xy: int = Field(default=2048, ge=0)
    shard_z: int = Field(default=8, ge=1)
    ngff: Literal["0.5", "0.4"] = "0.5"
    # the codec of the levels below level 0: "fastest", the fastest to encode a sample of level 1 among level 0's
    # codec and the profile's blosc and zstd candidates that store it in no more bytes than level 0's codec does
    # (codecs.choose_levels_codec); "same": level 0's codec (the fixed profile always)
    levels_codec: Literal["fastest", "same"] = "fastest"
    timeout_seconds: float = Field(default=86400, gt=0)  # the whole pass over one image

    operational: ClassVar[frozenset[str]] = frozenset({"timeout_seconds"})

    @model_validator(mode="after")
    def _profile_is_usable(self) -> "CompressSettings":
        if self.profile != "fixed" and not self.profiles.get(self.profile):
            raise ValueError(f"profile {self.profile!r} has no candidates under compress.profiles")
        for name, specs in self.profiles.items():
            if sum(c.baseline for c in specs) > 1:
                raise ValueError(f"compress.profiles.{name} marks more than one candidate as its baseline")
            if any(c.baseline and c.slow for c in specs):
                raise ValueError(f"compress.profiles.{name}: its baseline cannot be slow (it is always tried)")
            for c in specs:
                if c.levels and (c.codec not in LEVEL_CODECS or c.baseline or c.slow):
                    raise ValueError(f"compress.profiles.{name}: {c.label()} is for the levels below level 0 only: "
                                     "it must be blosc or zstd, and neither the baseline nor slow")
            if specs and all(c.levels for c in specs):
                raise ValueError(f"compress.profiles.{name} has no candidate for level 0 (all are levels: true)")
        for name, what in (("min_encode_mbps", "a number of MB/s"), ("slow_seconds", "a number of seconds"),
                           ("slow_within", "a fraction")):
            value = getattr(self, name)
            if not all(v >= 0 for v in (value.values() if isinstance(value, dict) else [value])):  # (NaN is not)
                raise ValueError(f"compress.{name} must be {what}, 0 or more")
        floors = self.min_encode_mbps
        if isinstance(floors, dict) and self.profile != "fixed" and self.profile not in floors:
            raise ValueError(f"compress.min_encode_mbps gives no floor for the profile {self.profile!r}")
        if self.ngff == "0.4" and any(c.codec not in ("blosc", "zstd") for c in self.candidates()):
            raise ValueError("OME-NGFF 0.4 (Zarr v2) output takes blosc or zstd only: use profile compat or fixed")
        return self

    def identity(self) -> dict[str, Any]:
        """What changes the stores this section produces: the profile in use with its own candidates and floor
        (another profile's candidates or floor change nothing it writes), or the fixed codec."""
        data = super().identity()
        data["profiles"] = {} if self.profile == "fixed" else {self.profile: data["profiles"][self.profile]}
        data["min_encode_mbps"] = self.floor()
        del data["slow_seconds"], data["slow_within"]
        if self.profile != "fixed" and any(c.slow for c in self.candidates()):  # (else they change nothing)
            data["slow_seconds"], data["slow_within"] = self.slow_budget(), self.slow_reach()
        if self.profile != "fixed":
            specs = self.profiles[self.profile]
            for spec, dumped in zip(specs, data["profiles"][self.profile]):
                dumped.update({flag: True for flag in ("slow", "levels") if getattr(spec, flag)})
            if not self.levels_candidates():  # the levels take level 0's codec: levels-only candidates change nothing
                data["profiles"][self.profile] = [d for spec, d in zip(specs, data["profiles"][self.profile])
                                                  if not spec.levels]
        if self.profile == "fixed" or not self.levels_candidates():
            del data["levels_codec"]
        return data

    def _of_profile(self, value: float | dict[str, float], missing: float) -> float:
        """A setting given once for every profile, or for each: the profile's (``missing`` when it has none)."""
        return value.get(self.profile, missing) if isinstance(value, dict) else value

    def floor(self) -> float:
        """The profile's throughput floor: candidates slower than this (MB/s, one thread) are not chosen."""
        return self._of_profile(self.min_encode_mbps, 0.0)  # (fixed: one candidate, no choice)

    def slow_budget(self) -> float:
        """The profile's time for a slow candidate: the seconds of one thread it may take to encode an image's
        level 0 (0: none is tried, unless there is no floor)."""
        return self._of_profile(self.slow_seconds, 0.0)

    def slow_reach(self) -> float:
        """How near the smallest candidate so far a family's last level must store for its slow levels to be tried."""
        return self._of_profile(self.slow_within, 0.05)  # (the default)

    def slow_floor(self, level0_bytes: int) -> float:
        """The throughput (MB/s, one thread) at which a slow candidate encodes an image of ``level0_bytes`` within
        the profile's slow_seconds (infinite when it has none: then the floor holds for slow candidates too)."""
        budget = self.slow_budget()
        return level0_bytes / 1e6 / budget if budget > 0 else float("inf")

    def choice(self, level0_bytes: int) -> dict[str, float]:
        """The rule of the codec choice for an image of ``level0_bytes`` (``codecs.choose_codec``'s arguments)."""
        return {"min_encode_mbps": self.floor(), "size_tolerance": self.size_tolerance,
                "slow_mbps": self.slow_floor(level0_bytes), "slow_within": self.slow_reach()}

    def candidates(self) -> list[CodecSpec]:
        """The codecs level 0's is chosen from: the profile's candidates (not those for the levels only), or the
        one fixed codec."""
        if self.profile == "fixed":
            return [CodecSpec(codec=self.codec, cname=self.cname, clevel=self.clevel, shuffle=self.shuffle)]
        return [spec for spec in self.profiles[self.profile] if not spec.levels]

    def levels_candidates(self) -> list[CodecSpec]:
        """The codecs the levels below level 0 may take besides level 0's (``levels_codec: fastest``): the
        profile's blosc and zstd candidates that are not slow, those for the levels only included; none for the
        fixed profile, with ``levels_codec: same``, or where level 0's codec is not chosen (a profile of one
        candidate for level 0: its levels keep it, as the fixed profile's do)."""
        if self.profile == "fixed" or self.levels_codec == "same" or len(self.candidates()) < 2:
            return []
        return [spec for spec in self.profiles[self.profile] if spec.codec in LEVEL_CODECS and not spec.slow]


def _byte_size(value: str) -> str:
    from dask.utils import parse_bytes

    parse_bytes(value)  # ValueError: "Could not interpret 'x' as a byte unit"
    return value


def _memory_limit(value: str) -> str:
    return value if value == "auto" else _byte_size(value)


Fraction = Annotated[float, Field(gt=0, le=1)] | Literal[False]


class WorkerMemory(Section):
    """Dask's memory thresholds of a worker, as fractions of its memory limit (``false`` turns one off)."""

    target: Fraction = 0.6
    spill: Fraction = 0.7
    pause: Fraction = 0.8
    terminate: Fraction = 0.95

    @model_validator(mode="after")
    def _in_order(self) -> "WorkerMemory":
        steps = [(name, value) for name in ("target", "spill", "pause", "terminate")
                 if (value := getattr(self, name)) is not False]
        for (low, a), (high, b) in zip(steps, steps[1:]):
            if a > b:
                raise ValueError(f"{low} ({a}) must not be above {high} ({b})")
        return self


class JobRange(Section):
    """Adaptive scaling: between ``minimum`` and ``maximum`` Slurm jobs, following the load."""

    minimum: int = Field(ge=0)
    maximum: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "JobRange":
        if self.minimum > self.maximum:
            raise ValueError(f"minimum ({self.minimum}) is above maximum ({self.maximum})")
        return self


class SlurmSettings(Section):
    """Dask workers as Slurm batch jobs (dask-jobqueue's ``SLURMCluster``); the scheduler runs in the flow."""

    partition: str | None = None
    account: str | None = None
    cores: int = Field(ge=1)
    memory: Annotated[str, AfterValidator(_byte_size)]
    processes: int = Field(default=1, ge=1)
    walltime: str = Field(default="01:00:00", pattern=r"^(\d+-)?\d+(:\d{2}){0,2}$")
    jobs: Annotated[int, Field(ge=1)] | JobRange = 1
    job_name: str = "zarrchive-worker"
    job_extra_directives: list[str] = []
    job_script_prologue: list[str] = []
    python: str | None = None
    local_directory: str | None = None
    log_directory: str | None = None
    interface: str | None = None
    scheduler_interface: str | None = None
    dashboard_address: str = ":0"

    @model_validator(mode="after")
    def _whole_threads(self) -> "SlurmSettings":
        if self.cores % self.processes:
            raise ValueError(f"cores ({self.cores}) must be a multiple of processes ({self.processes})")
        return self


class ClusterSettings(Section):
    """Which Dask cluster does a run's pixel work: ``kind`` follows from the keys that are set."""

    address: str | None = None
    n_workers: int | None = Field(default=None, ge=1)
    threads_per_worker: int = Field(ge=1)
    processes: bool | None = None  # LocalCluster workers as processes, or threads of this process (None: the caller's)
    memory_limit: Annotated[str, AfterValidator(_memory_limit)]
    worker_memory: WorkerMemory = WorkerMemory()
    allowed_failures: int = Field(default=3, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "warning"
    slurm: SlurmSettings | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> "ClusterSettings":
        if self.address and self.slurm:
            raise ValueError("give either address (an existing scheduler) or slurm (workers as Slurm jobs), not both")
        return self

    @property
    def kind(self) -> Literal["address", "slurm", "local"]:
        """``address``: an existing scheduler; ``slurm``: a SLURMCluster for the run; ``local``: a LocalCluster."""
        return "address" if self.address else "slurm" if self.slurm else "local"


class QCSettings(Section):
    suite: str
    modality: str = "auto"
    severity: dict[str, Literal["error", "warning"]] = {}


class PublishSettings(Section):
    on_image_error: Literal["block_submission", "skip_image"]
    lease_seconds: float = Field(default=600, ge=5)  # the publishing lease of an accession: renewed while it works
    lease_wait_seconds: float = Field(default=300, ge=0)  # how long a run waits for another to finish publishing
    public_base_url: str | None = Field(default=None, pattern=r"^https?://")  # where the archive root is served
    approval_timeout_seconds: float = Field(default=7 * 86400, gt=0)  # a curator's decision, when asked for
    viewer_url: str | None = Field(default=None, pattern=r"^https?://[^ ]*\{url\}")  # a web viewer, {url} the image's
    #                                                    public address (with public_base_url), e.g. vizarr's
    threads: int = Field(default=4, ge=1, le=64)  # large objects (any, onto an object store) copied at once

    operational: ClassVar[frozenset[str]] = frozenset({"lease_seconds", "lease_wait_seconds", "public_base_url",
                                                        "approval_timeout_seconds", "viewer_url", "threads"})


class CredentialRef(Section):
    """Where the credentials of one storage location come from: a Prefect Secret block or environment variables,
    by name, never the secrets themselves (they are read when a run starts, on the machine that runs it)."""

    prefix: str = Field(pattern=r"^[a-z][a-z0-9+.-]*://")  # the locations they serve, e.g. s3://bucket/ or s3://
    secret_block: str | None = Field(default=None, pattern=r"^[a-z0-9-]+$")  # a Secret block: JSON {key, secret[,
    #                                                                          token]}
    env: dict[Literal["key", "secret", "token"], str] | None = None  # fsspec option -> environment variable name
    options: dict[str, str | int | float | bool] = {}  # options that are not secret: endpoint_url, region_name…

    @model_validator(mode="after")
    def _one_source(self) -> "CredentialRef":
        if self.secret_block and self.env:
            raise ValueError("give either secret_block or env, not both")
        for name in ("key", "secret", "token", "password"):
            if name in self.options:
                raise ValueError(f"options.{name} would put a secret in the configuration: reference it through "
                                 "secret_block or env instead")
        return self


class StorageSettings(Section):
    credentials: list[CredentialRef] = []

    operational: ClassVar[frozenset[str]] = frozenset({"credentials"})


class CatalogSettings(Section):
    """The catalog database of the archive's public studies (``zarrchive.catalog``)."""

    url: str | None = Field(default=None, pattern=r"^(sqlite|postgresql)(\+\w+)?://")  # none: SQLite, default place
    password_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")  # PostgreSQL's password

    operational: ClassVar[frozenset[str]] = frozenset({"url", "password_env"})


class BatchSettings(Section):
    """Small files and images of a stage run in batches, one task run each (``zarrchive.batch``)."""

    images: int = Field(default=64, ge=1)  # at most this many items a batch
    bytes: int = Field(default=256 << 20, ge=1)  # at most this many bytes a batch (files as staged, images' level 0)
    small_bytes: int = Field(default=64 << 20, ge=0)  # an item above this runs alone (0: every item alone)
    parallel: int = Field(default=2, ge=1)  # at least this many batches when there are items enough (they run at
    #                                         once; a batch's items one after another, compress's a few ahead)
    describe_on_cluster: int = Field(default=200, ge=0)  # a run with at least this many small files has their
    #                                         headers read on the cluster's workers, a batch a Dask task (0: always)

    operational: ClassVar[frozenset[str]] = frozenset({"images", "bytes", "small_bytes", "parallel",
                                                       "describe_on_cluster"})


class Settings(Section):
    storage: StorageSettings = StorageSettings()
    batch: BatchSettings = BatchSettings()
    catalog: CatalogSettings = CatalogSettings()
    archive: ArchiveSettings
    submission: SubmissionSettings
    staging: StagingSettings
    fetch: FetchSettings
    convert: ConvertSettings
    pyramid: PyramidSettings
    compress: CompressSettings
    cluster: ClusterSettings
    qc: QCSettings
    publish: PublishSettings


def config_dir() -> Path:
    """Where the shipped configuration files live (``configs/`` in the repository)."""
    return Path(str(resources.files("zarrchive.configs")))


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    from zarrchive import yamldoc

    try:
        data = yamldoc.load(path.read_bytes()) or {}
    except (OSError, yamldoc.YAMLRefused) as exc:
        raise ConfigError(str(path), [str(exc)]) from exc
    if not isinstance(data, dict):
        raise ConfigError(str(path), ["the top level must be a mapping"])
    return data


def load_settings(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Load the defaults, merge ``path`` and then ``overrides`` over them, and validate."""
    data = _read_yaml(config_dir() / "default.yaml")
    source = "configs/default.yaml"
    if path is not None:
        data = _merge(data, _read_yaml(Path(path)))
        source = str(path)
    if overrides:
        data = _merge(data, overrides)
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        problems = format_validation_error(exc)
        try:  # the names the qc section refers to are checked too, so every problem is told at once
            problems += reference_problems(QCSettings.model_validate(data.get("qc")))
        except ValidationError:
            pass
        raise ConfigError(source, problems) from exc
    if problems := reference_problems(settings.qc):
        raise ConfigError(source, problems)
    return settings


FINDING_CHECKS = ("metadata_conflict", "lossy_source")  # checks QC adds beside the suite's expectations


def suite_path(suite: str) -> Path:
    """A QC suite file: an absolute path, or one relative to ``configs/``."""
    p = Path(suite)
    return p if p.is_absolute() else config_dir() / p


def suite_checks(suite: str) -> set[str]:
    """The check names of a Great Expectations suite file (``meta.check`` of its expectations)."""
    import json

    document = json.loads(suite_path(suite).read_text())
    return {e["meta"]["check"] for table in ("images", "channels") for e in document.get(table, [])}


def modalities() -> list[str]:
    return sorted(p.stem for p in (config_dir() / "qc" / "modalities").glob("*.json"))


def reference_problems(qc: QCSettings) -> list[str]:
    """Values that must name something that exists: the QC suite, the checks ``qc.severity`` re-grades, the
    modality (a typing error there would otherwise be published as a parameter and silently do nothing)."""
    import difflib

    problems = []
    try:
        checks = suite_checks(qc.suite) | set(FINDING_CHECKS)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"qc.suite: {qc.suite} cannot be read as a QC suite ({type(exc).__name__}: {exc})"]
    for name in qc.severity:
        if name not in checks:
            near = difflib.get_close_matches(name, sorted(checks), n=1)
            problems.append(f"qc.severity.{name}: no such check" + (f" (did you mean '{near[0]}'?)" if near else "")
                            + f"; checks: {', '.join(sorted(checks))}")
    known = ["auto", "none", *modalities()]
    if qc.modality not in known:
        problems.append(f"qc.modality: {qc.modality!r} is not a modality; choose one of {', '.join(known)}")
    return problems


def format_validation_error(exc: ValidationError) -> list[str]:
    """One line per problem, naming the field by its dotted path."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{where}: {err['msg']}")
    return lines
