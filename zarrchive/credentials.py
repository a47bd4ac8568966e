"""Storage credentials, by reference: resolved when a run starts, on the machine that runs it.

A configuration (a consortium's, typically) names where the secrets of a
storage location are (``storage.credentials``: a Prefect Secret block, or
environment variables of the worker) and never holds them. ``apply`` reads
them and hands them to fsspec for the locations they serve; they are not
logged, not recorded in lineage and not written anywhere.
"""

from __future__ import annotations

import json
import os
from typing import Any

from zarrchive.archive.storage import use_options
from zarrchive.config import CredentialRef, StorageSettings
from zarrchive.errors import ConfigError


def resolve_ref(ref: CredentialRef) -> dict[str, Any]:
    """The fsspec options of one reference, secrets included; ``ConfigError`` naming what is missing (never a
    value)."""
    options: dict[str, Any] = dict(ref.options)
    if ref.env:
        missing = [var for var in ref.env.values() if not os.environ.get(var)]
        if missing:
            raise ConfigError("storage.credentials", [f"{ref.prefix}: environment variable(s) {', '.join(missing)} "
                                                      "not set on this machine"])
        options.update({name: os.environ[var] for name, var in ref.env.items()})
    if ref.secret_block:
        options.update(_secret_block(ref))
    return options


def _secret_block(ref: CredentialRef) -> dict[str, Any]:
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(ref.secret_block).get()
    except Exception as exc:  # not found, server unreachable
        raise ConfigError("storage.credentials", [f"{ref.prefix}: the Secret block {ref.secret_block!r} cannot be "
                                                  f"read ({type(exc).__name__})"]) from None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError("storage.credentials", [f"{ref.prefix}: the Secret block {ref.secret_block!r} must "
                                                      "hold a JSON object such as {\"key\": …, \"secret\": …}"]) \
                from None
    if not isinstance(value, dict):
        raise ConfigError("storage.credentials", [f"{ref.prefix}: the Secret block {ref.secret_block!r} must hold an "
                                                  "object such as {\"key\": …, \"secret\": …}"])
    return value


def apply(settings: StorageSettings) -> list[str]:
    """Resolve every reference and use it for its locations; return the prefixes served."""
    for ref in settings.credentials:
        use_options(ref.prefix, resolve_ref(ref))
    return [ref.prefix for ref in settings.credentials]
