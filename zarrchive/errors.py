"""The one error tree of zarrchive.

``TransientError`` marks what is worth retrying and is the only thing task
retries retry. ``InputError`` names the file (or field) and the reason.
"""

from __future__ import annotations

import errno
import sys


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


class NotFound(ZarrchiveError, LookupError):
    """What was asked for is not in the archive (an accession, a version, an image)."""


class ChecksumMismatch(InputError):
    """A file's bytes do not match the checksum given for it."""


class UnsupportedFormat(InputError):
    """No installed reader can open the file."""


class Truncated(InputError):
    """A file ends before the pixels it declares: bad input, never retried."""


class StageTimeout(InputError):
    """A stage took longer on one file or image than its configured time (``<stage>.timeout_seconds``): that image
    fails, the others go on. Never retried."""


class VerificationError(ZarrchiveError):
    """Written data does not decode to the source data (losslessness violated)."""


class FailedOutcome(ZarrchiveError):
    """A run that ended Failed with a report: its state's message, and what it found (``data``: an ingest's
    ``Publication``, a night's summary rows, an audit's problems) for the callers of the flow."""

    def __init__(self, message: str, data: object):
        self.data = data
        super().__init__(message)

    def __reduce__(self):
        return type(self), (str(self), self.data)


class StageFailed(ZarrchiveError):
    """A stage failed on one image for a reason that is neither the file's nor a check's (a fault of zarrchive or
    of a library it uses), named with the exception: that image fails, the others go on."""


class ClusterError(ZarrchiveError):
    """The Dask cluster could not finish a stage's work: workers kept dying while running the same task."""


class TransientError(ZarrchiveError):
    """A failure worth retrying: network or storage hiccups, not bad data."""


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth a retry: our TransientError or an OS-level I/O fault."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, ZarrchiveError) or _prefect_timeout(exc):
        return False  # our own errors are what they say; a stage that ran out of time would only do so again
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(exc, OSError) and exc.errno in PERMANENT_ERRNOS:
        return False  # a full disk or a read-only store does not heal in seconds: reported at once
    return isinstance(exc, (ConnectionError, TimeoutError)) or type(exc) is OSError


def is_cluster_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the Dask cluster's failure, not the data's: a worker that died, a connection to it that
    closed, work cancelled or a client closed under it. Told by type; ``distributed`` is not imported for it
    (where it is not loaded, no such exception exists)."""
    names = (("distributed.scheduler", "KilledWorker"), ("distributed.comm.core", "CommClosedError"),
             ("distributed.client", "FutureCancelledError"), ("distributed.client", "FuturesCancelledError"),
             ("distributed.client", "ClosedClientError"), ("distributed.core", "AsyncTaskGroupClosedError"))
    types = tuple(getattr(sys.modules[module], name) for module, name in names
                  if module in sys.modules and hasattr(sys.modules[module], name))
    return bool(types) and isinstance(exc, types)


def is_file_fault(exc: BaseException) -> bool:
    """Whether a failure to read a file is the file's (damaged, not what it declares): not one of the archive's own
    errors, nor the machine's (memory, an I/O error the system numbered, a connection, a time limit) nor the
    cluster's."""
    if isinstance(exc, (ZarrchiveError, MemoryError, ConnectionError, TimeoutError)) or is_cluster_failure(exc):
        return False
    return not (isinstance(exc, OSError) and exc.errno is not None)


PERMANENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}


def _prefect_timeout(exc: BaseException) -> bool:
    """Whether ``exc`` is Prefect's task or flow timeout (a TimeoutError, but not a transient one). Prefect is not
    imported for it: where it is not loaded, no such exception exists."""
    exceptions = sys.modules.get("prefect.exceptions")
    timeouts = tuple(getattr(exceptions, name) for name in ("TaskRunTimeoutError", "FlowRunTimeoutError")
                     if exceptions is not None and hasattr(exceptions, name))
    return bool(timeouts) and isinstance(exc, timeouts)
