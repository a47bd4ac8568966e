"""The error tree: structured fields survive pickling (errors cross Dask and Prefect boundaries)."""

from __future__ import annotations

import pickle

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
