"""The one error tree of zarrchive.

``TransientError`` marks what is worth retrying and is the only thing task
retries retry. ``InputError`` names the file (or field) and the reason.
"""

from __future__ import annotations


class ZarrchiveError(Exception):
    """Root of every error zarrchive raises on purpose."""


class ProblemsError(ZarrchiveError):
    """Something refused as a whole; ``problems`` holds one line per problem, all found at once."""

    header = "refused"

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{self.header} {source}:\n" + "\n".join(f"  {p}" for p in problems))

    def __reduce__(self):  # survive pickling (Dask, Prefect) with the structured fields
        return type(self), (self.source, self.problems)


class ConfigError(ProblemsError):
    """The configuration is invalid."""

    header = "invalid configuration"


class InputError(ZarrchiveError):
    """Bad input from a depositor: names the file (or field) and the reason."""

    def __init__(self, file: str, reason: str):
        self.file = file
        self.reason = reason
        super().__init__(f"{file}: {reason}")

    def __reduce__(self):
        return type(self), (self.file, self.reason)


class SubmissionError(ProblemsError):
    """The submission was refused before any data moved."""

    header = "refused submission"


class ArchiveNotFound(ProblemsError):
    """The archive location holds no archive, and the run did not ask to create one."""

    header = "no archive at"


class ChecksumMismatch(InputError):
    """A file's bytes do not match the checksum given for it."""


class UnsupportedFormat(InputError):
    """No installed reader can open the file."""


class VerificationError(ZarrchiveError):
    """Written data does not decode to the source data (losslessness violated)."""


class ClusterError(ZarrchiveError):
    """The Dask cluster could not finish a stage's work: workers kept dying while running the same task."""


class TransientError(ZarrchiveError):
    """A failure worth retrying: network or storage hiccups, not bad data."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth a retry: our TransientError or an OS-level I/O fault."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    return isinstance(exc, (ConnectionError, TimeoutError)) or type(exc) is OSError
