"""The error tree: structured fields survive pickling (errors cross Dask and Prefect boundaries)."""

from __future__ import annotations

import errno
import pickle

import pytest

from zarrchive.errors import (
    ChecksumMismatch, ConfigError, InputError, SubmissionError, TransientError, ZarrchiveError, is_transient,
)


def test_errors_keep_their_fields_through_pickle():
    for err in (SubmissionError("sub", ["title: too short", "files: x.tif: missing"]), ConfigError("c.yaml", ["a: b"])):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and back.problems == err.problems and str(back) == str(err)
    for err in (InputError("a.tif", "damaged"), ChecksumMismatch("b.tif", "sha256 differs")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and (back.file, back.reason) == (err.file, err.reason)
        assert isinstance(back, ZarrchiveError)


def test_only_transient_errors_are_worth_a_retry():
    assert is_transient(TransientError("s3 hiccup")) and is_transient(ConnectionError()) and is_transient(OSError(5, "EIO"))
    assert not is_transient(FileNotFoundError()) and not is_transient(PermissionError())
    assert not is_transient(InputError("a", "b")) and not is_transient(ValueError())


# ---------------------------------------------------------------- what a failure is, told by type

def test_a_file_that_ends_before_its_pixels_is_bad_input_never_retried(tmp_path):
    import numpy as np

    from zarrchive.errors import InputError, Truncated, is_transient
    from zarrchive.pixels.sources import read_contiguous

    path = tmp_path / "raw.bin"
    path.write_bytes(bytes(100))
    with pytest.raises(Truncated) as caught:  # 10 x 20 uint8 at offset 0: 200 bytes declared, 100 held
        read_contiguous(str(path), 0, (10, 20), np.dtype("uint8"), (slice(0, 10), slice(0, 20)))
    assert isinstance(caught.value, InputError) and not is_transient(caught.value)
    assert caught.value.file == str(path) and "ends at byte 100" in caught.value.reason


def test_the_cluster_failures_are_told_by_type():
    from distributed.client import FutureCancelledError
    from distributed.comm.core import CommClosedError
    from distributed.scheduler import KilledWorker

    from zarrchive.errors import InputError, is_cluster_failure, is_file_fault

    for exc in (KilledWorker("t", "w", 3), CommClosedError("closed"), FutureCancelledError("k", "cancelled")):
        assert is_cluster_failure(exc) and not is_file_fault(exc), exc
    for exc in (ValueError("x"), OSError("x"), InputError("a.tif", "b")):
        assert not is_cluster_failure(exc)


@pytest.mark.parametrize("exc, the_files", [
    (ValueError("bad tile"), True), (KeyError("StripOffsets"), True), (EOFError(), True),
    (OSError("unexpected end of data"), True),  # a reader's complaint: no errno
    (OSError(errno.EIO, "Input/output error"), False), (OSError(errno.ENOSPC, "No space left"), False),
    (MemoryError(), False), (ConnectionResetError(), False), (TimeoutError(), False)])
def test_a_read_failure_is_the_files_only_when_the_machine_did_not_fail(exc, the_files):
    from zarrchive.errors import InputError, is_file_fault
    from zarrchive.pixels.passes import _named

    assert is_file_fault(exc) is the_files
    named = _named(exc, "images/a.tif", "pixels")
    if the_files:
        assert isinstance(named, InputError) and named.file == "images/a.tif"
    else:
        assert named is exc  # the machine's failure stays what it is (and a transient one is retried)


def test_an_input_error_from_the_reader_is_named_by_the_image_keeping_its_kind():
    from zarrchive.errors import Truncated
    from zarrchive.pixels.passes import _named

    named = _named(Truncated("/staging/originals/a.tif", "ends at byte 10"), "a.tif [series 1]", "pixels")
    assert type(named) is Truncated and named.file == "a.tif [series 1]" and named.reason == "ends at byte 10"


def test_a_source_gone_from_under_a_worker_fails_as_itself_never_its_own_cause(tmp_path, settings):
    """A machine's failure while reading (the staged file removed: FileNotFoundError) is re-raised as it is; were it
    made its own cause, distributed would walk the causes forever and the worker would die of it."""
    import tifffile

    from builders import random_image, staged
    from zarrchive.pixels.passes import select_codec, stream_region
    from zarrchive.pixels.sources import forget_open_files
    from zarrchive.tasks.convert import convert_file

    path = tmp_path / "a.tif"
    tifffile.imwrite(path, random_image((8, 8), "uint8"), metadata=None)
    [image] = convert_file(staged(path, "a.tif"), None, str(tmp_path / "w"), settings.convert)
    path.unlink()
    forget_open_files()
    region = tuple(slice(0, n) for n in image.shape)
    for read in (lambda: select_codec(str(path), image, [region], [], {}),
                 lambda: stream_region(str(path), image, str(tmp_path / "out"), region, [])):
        with pytest.raises(FileNotFoundError) as caught:
            read()
        assert caught.value.__cause__ is not caught.value
