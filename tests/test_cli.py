"""The command line: exit codes, --json output, show, submission templates."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from builders import ome_tiff, random_image, submission
from zarrchive.cli import main
from zarrchive.config import load_settings
from zarrchive.tasks.intake import read_submission

CHECKS = load_settings().submission


def test_ingest_json_prints_one_object_and_exits_0(tmp_path, config_file, prefect_server, capsys):
    sub = submission(tmp_path / "sub", [{"path": "a.ome.tif"}])
    ome_tiff(sub / "a.ome.tif", random_image((1, 1, 24, 24)), "CZYX", {"x": 0.5, "y": 0.5})
    code = main(["ingest", str(sub), "--archive", str(tmp_path / "archive"), "--config", config_file(), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["status"] == "published" and out["accession"] == "ZA000001" and out["version"] == 1
    assert out["created_archive"] is True and (tmp_path / "archive" / "zarrchive-archive.json").exists()
    assert out["images"][0]["path"] == "images/a.ome.zarr" and out["images"][0]["status"] == "published"

    assert main(["show", "ZA000001", "--archive", str(tmp_path / "archive")]) == 0
    shown = capsys.readouterr().out
    assert "v1" in shown and "a " in shown and "published" in shown


def test_refused_submission_exits_1_with_one_line_per_problem(tmp_path, config_file, prefect_server, capsys):
    sub = submission(tmp_path / "sub", [{"path": "missing.tif"}, {"path": "../outside.tif"}], licence="CC0-1.0")
    code = main(["ingest", str(sub), "--archive", str(tmp_path / "archive"), "--config", config_file(), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["status"] == "refused"
    assert any(r.startswith("licence: unknown field") for r in out["reasons"])
    assert any("../outside.tif" in r and "escapes" in r for r in out["reasons"])
    assert not (tmp_path / "archive").exists() or not list((tmp_path / "archive").rglob("manifest.json"))


def test_blocked_ingest_exits_1_with_reasons(tmp_path, config_file, prefect_server, capsys):
    sub = tmp_path / "sub"
    (sub).mkdir()
    (sub / "x.tif").write_bytes(b"GIF89a not a tiff")
    submission(sub, [{"path": "x.tif"}])
    code = main(["ingest", str(sub), "--archive", str(tmp_path / "archive"), "--config", config_file()])
    out = capsys.readouterr().out
    assert code == 1
    assert "Nothing published" in out and "x.tif" in out and "not supported" in out


def test_configuration_errors_exit_2_before_anything_runs(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"compress": {"codec": "gzip"}, "archive": {"accession_digits": 0}}))
    code = main(["ingest", str(tmp_path), "--archive", str(tmp_path / "a"), "--config", str(bad)])
    err = capsys.readouterr().err
    assert code == 2
    assert "compress.codec" in err and "archive.accession_digits" in err


def test_usage_errors_exit_2(capsys):
    assert main(["ingest", "somewhere"]) == 2  # --archive is required
    assert "the following arguments are required: --archive" in capsys.readouterr().err
    done = subprocess.run([sys.executable, "-m", "zarrchive.cli", "frobnicate"], capture_output=True, text=True)
    assert done.returncode == 2 and "invalid choice" in done.stderr


def test_the_command_exits_with_its_code_after_the_exit_handlers_and_its_output(tmp_path):
    """The process ends without the interpreter's teardown (an object's finalizer that only teardown would call is
    not called), but as Python ends: a thread that is not a daemon is waited for, the hooks run before that
    (Prefect's last events), then every exit handler (logging's, temporary files'), and the output is flushed."""
    script = f"""
import atexit, logging, sys, tempfile, threading, time
from pathlib import Path
from zarrchive.cli import exit_now
kept = tempfile.TemporaryDirectory(dir={str(tmp_path)!r})
Path(kept.name, "x").write_text("x")
threading._register_atexit(lambda: print("threads' hook ran;", end=""))
atexit.register(lambda: print("handler ran", flush=False))
handler = logging.FileHandler({str(tmp_path / "log.txt")!r}, mode="w")
logging.getLogger("t").addHandler(handler)
handler.stream.write("buffered log line")  # written, not flushed: logging's handler flushes it at exit
class Torn:
    def __del__(self):
        Path({str(tmp_path / "torn")!r}).write_text("torn down")
torn = Torn()  # freed only by the interpreter's teardown
sys.stdout.write("unflushed output;")
if sys.argv[1] == "thread":
    threading.Thread(target=lambda: (time.sleep(0.5), Path({str(tmp_path / "done")!r}).write_text("done"))).start()
exit_now(3)
"""
    for mode in ("daemons only", "thread"):
        done = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, timeout=120)
        assert done.returncode == 3, done.stderr
        assert done.stdout == "unflushed output;threads' hook ran;handler ran\n"
        assert (tmp_path / "log.txt").read_text() == "buffered log line"
        assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # the temporary folder removed by its finalizer
        assert not (tmp_path / "torn").exists()
    assert (tmp_path / "done").read_text() == "done"


def test_show_unknown_accession_exits_1(tmp_path, capsys):
    assert main(["show", "ZA999999", "--archive", str(tmp_path)]) == 1
    assert "no published version" in capsys.readouterr().err


def test_submission_new_lists_the_files_and_completes_into_a_valid_submission(tmp_path, capsys):
    folder = tmp_path / "deposit"
    ome_tiff(folder / "images" / "a.ome.tif", random_image((1, 1, 8, 8)), "CZYX")
    (folder / "readme.txt").write_text("x")
    assert main(["submission", "new", str(folder)]) == 0
    doc = yaml.safe_load((folder / "submission.yaml").read_text())
    assert [f["path"] for f in doc["files"]] == ["images/a.ome.tif", "readme.txt"]
    assert doc["files"][1]["kind"] == "attachment"  # not named like an image file
    assert main(["submission", "new", str(folder)]) == 2  # never overwrites silently
    assert main(["validate", str(folder)]) == 1  # the TODOs are still there
    assert "still holds the template's TODO" in capsys.readouterr().out
    doc["title"] = "Completed by the depositor"
    doc["description"] = "Two test files."
    doc["authors"] = [{"name": "Jane Doe"}]
    doc["organism"] = {"scientific_name": "Homo sapiens", "ncbi_taxon": 9606}
    doc["imaging_method"] = {"name": "confocal microscopy"}
    (folder / "submission.yaml").write_text(yaml.safe_dump(doc))
    parsed, _, _ = read_submission(str(folder), CHECKS)
    assert len(parsed.files) == 2
    assert main(["validate", str(folder)]) == 0
    assert "0 error(s)" in capsys.readouterr().out


def test_demo_runs_on_the_embedded_defaults(tmp_path, prefect_server, capsys):
    """The README's first command: no configuration, a LocalCluster started for the run."""
    archive = tmp_path / "zarrchive-demo" / "archive"
    assert main(["demo", "--archive", str(archive), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "published" and out["version_uri"] == str(archive / "ZA000001" / "v1")
    assert (tmp_path / "zarrchive-demo" / "submission" / "submission.yaml").exists()
    assert main(["demo", "--archive", str(archive)]) == 0
    assert "Unchanged: ZA000001 v1" in capsys.readouterr().out
    from conftest import SESSION_DIR
    assert list((SESSION_DIR / "cache" / "zarrchive" / "compress").glob("*.ome.zarr"))  # not the user's cache


def test_worker_env_gives_a_facility_s_scheduler_and_workers_what_zarrchive_gives_its_own(tmp_path, capsys):
    import os
    import time
    from pathlib import Path

    from distributed import Client

    assert main(["worker-env", "--memory-limit", "2GiB", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)["environment"]
    assert env["MALLOC_TRIM_THRESHOLD_"] == str(256 << 20) and env["MALLOC_MMAP_THRESHOLD_"] == str(32 << 20)
    assert env["DASK_DISTRIBUTED__WORKER__MEMORY__TERMINATE"] == "0.95"
    assert main(["worker-env", "--memory-limit", "2GiB"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"export {k}={v}" for k, v in env.items()]
    for bad in ("lots", "0", "-1GiB"):
        assert main(["worker-env", f"--memory-limit={bad}"]) == 2
        assert "is not a size of memory" in capsys.readouterr().err
    # a scheduler and a worker started from a shell with those lines: the nanny's own default (glibc's trim at
    # 64 KiB) gives way to them, in the worker process itself
    bin_dir = Path(sys.executable).parent
    shell = dict(os.environ, **env)
    file = tmp_path / "scheduler.json"
    procs = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(file)], env=shell,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        procs.append(subprocess.Popen([str(bin_dir / "dask"), "worker", "--scheduler-file", str(file), "--nthreads",
                                       "1", "--memory-limit", "2GiB", "--no-dashboard"], env=shell,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with Client(scheduler_file=str(file), timeout=60, set_as_default=False) as client:
            client.wait_for_workers(1, timeout=60)
            seen = list(client.run(lambda: {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_",
                                                                            "MALLOC_MMAP_THRESHOLD_")}).values())
            failures = client.run_on_scheduler(
                lambda dask_scheduler: dask_scheduler.allowed_failures)
        assert seen == [{"MALLOC_TRIM_THRESHOLD_": str(256 << 20), "MALLOC_MMAP_THRESHOLD_": str(32 << 20)}]
        assert failures == int(env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"])
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=30)


@pytest.mark.parametrize("terminal, set_before, expected", [
    (False, None, "false"),  # a file, a pipe, a scheduler's capture: no colour, and no highlighter's cost
    (True, None, None),  # a terminal: Prefect's colours, as before
    (False, "true", "true"),  # the user's own choice wins either way
    (True, "false", "false"),
])
def test_log_lines_are_plain_where_standard_error_is_not_a_terminal(monkeypatch, terminal, set_before,
                                                                    expected):
    import io
    import os

    class Stream(io.StringIO):
        def isatty(self):
            return terminal

    monkeypatch.setattr(sys, "stderr", Stream())
    if set_before is None:  # (set first, so that what main sets is undone after the test)
        monkeypatch.setenv("PREFECT_LOGGING_COLORS", "unset")
        monkeypatch.delenv("PREFECT_LOGGING_COLORS")
    else:
        monkeypatch.setenv("PREFECT_LOGGING_COLORS", set_before)
    assert main(["worker-env", "--memory-limit", "2GiB"]) == 0
    assert os.environ.get("PREFECT_LOGGING_COLORS") == expected
