"""A consortium's deployments, described in one YAML file a facility manager writes (``configs/consortia/``).

The file names the consortium, its landing zone and archive, when its nightly
import and fixity audit run (cron, in its time zone), the work pool whose
workers run them, and the configuration its runs use (any section of
``configs/default.yaml``: the Dask cluster, codec profile, QC modality and
severities, publish policy, storage credentials *by reference*). ``check``
validates all of it at once and names every problem with its field; nothing is
registered while any is wrong (``zarrchive deploy register``).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from zarrchive import yamldoc
from zarrchive.config import Settings, format_validation_error, load_settings
from zarrchive.errors import ConfigError

NAME = r"^[a-z0-9][a-z0-9-]{0,62}$"


class Schedules(BaseModel):
    """Cron schedules (minute hour day month weekday), in the consortium's time zone; null: not scheduled."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nightly_import: str | None = "0 2 * * *"
    fixity_audit: str | None = "0 4 * * 0"
    release_embargoed: str | None = "0 1 * * *"

    @field_validator("nightly_import", "fixity_audit", "release_embargoed")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(cron=value)
        except ValidationError as exc:
            reason = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise ValueError(f"{value!r} is not a cron schedule (minute hour day month weekday): {reason}") from None
        return value


class Consortium(BaseModel):
    """One consortium: where its submissions arrive, where they are archived, how and when they are processed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME)  # lower-case letters, digits and '-': names its deployments and tag
    description: str = ""
    landing_zone: str = Field(min_length=1)  # folder or fsspec URL of submission folders
    archive: str = Field(min_length=1)  # the archive root
    timezone: str = "UTC"
    schedules: Schedules = Schedules()
    work_pool: str = Field(min_length=1)
    concurrency_limit: int = Field(default=2, ge=1, le=64)  # submissions ingested at once
    approval: bool = False  # a curator approves each version before it is published
    create_archive: bool = False  # the nightly import may start the archive if it does not exist
    fixity_sample: float = Field(default=1.0, gt=0, le=1)  # share of objects each audit re-hashes
    landing_depth: int = Field(default=3, ge=1, le=10)
    config: dict[str, Any] = {}  # configuration sections merged over configs/default.yaml

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone (IANA names such as Europe/Berlin or UTC)") from None
        return value

    @property
    def tag(self) -> str:
        return f"consortium:{self.name}"

    def settings(self) -> Settings:
        return load_settings(overrides=self.config)


def read(path: str | Path) -> Consortium:
    """The consortium described in ``path``; ``ConfigError`` naming every problem with its field."""
    source = str(path)
    try:
        data = yamldoc.load(Path(path).read_bytes())
    except (OSError, yamldoc.YAMLRefused) as exc:
        raise ConfigError(source, [str(exc)]) from None
    if not isinstance(data, dict):
        raise ConfigError(source, ["the top level must be a mapping of fields"])
    problems: list[str] = []
    consortium = None
    try:
        consortium = Consortium.model_validate(data)
    except ValidationError as exc:
        problems += format_validation_error(exc)
    try:
        load_settings(overrides=data.get("config") if isinstance(data.get("config"), dict) else {})
    except ConfigError as exc:
        problems += [f"config.{line}" for line in exc.problems]
    if problems or consortium is None:
        raise ConfigError(source, problems)
    return consortium


def next_runs(cron: str, timezone: str, count: int = 1, after: dt.datetime | None = None) -> list[dt.datetime]:
    """When a schedule fires next (for ``zarrchive deploy list`` when the server has not scheduled runs yet)."""
    from cronsim import CronSim

    start = (after or dt.datetime.now(dt.timezone.utc)).astimezone(ZoneInfo(timezone))
    it = CronSim(cron, start)
    return [next(it) for _ in range(count)]
