"""Faults and hostile inputs, as a crash, an operator and the storage would bring them.

Each case ends with: nothing lost at the source, no partially visible
version, the next run completes without redoing verified work, nothing left
running. ``CASES`` at the end is the README's Reliability table: a test checks
that the README shows exactly it, and that every test it names exists;
``python tests/test_reliability.py`` writes it into the README.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from builders import ome_tiff, plain_tiff, random_image, staged, submission
from hypothesis import HealthCheck, given, seed
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from zarrchive.cli import main

ROOT = Path(__file__).resolve().parent.parent
ZARRCHIVE = str(Path(sys.executable).parent / "zarrchive")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256(p) for p in folder.rglob("*") if p.is_file()}


def marked(marker: str) -> set[int]:
    """Every process whose environment holds ``ZARRCHIVE_TEST_RUN=marker``: a run's process and all it started
    (they inherit its environment), found even after the run's process died and its children were re-parented."""
    needle = f"ZARRCHIVE_TEST_RUN={marker}".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    if needle in fh.read().split(b"\0"):
                        found.add(int(entry))
    return found


def left_running(marker: str, seconds: float = 20) -> set[int]:
    """The run's processes still there after ``seconds`` (looked for again each time: one started late counts)."""
    deadline = time.monotonic() + seconds
    while (left := marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def wait_mark(mark: Path, what: str, process: subprocess.Popen, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if mark.exists() and what in mark.read_text():
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended ({process.returncode}) before {what}: {process.communicate()}")
        time.sleep(0.2)
    raise AssertionError(f"the run did not reach {what} in {seconds} s")


@pytest.fixture()
def run_case(tmp_path):
    """A submission, an archive, a staging root and a work area of this test, and a way to run ``zarrchive ingest``
    on them in a process of its own (with its own Prefect API unless ``api`` is given)."""
    sub = submission(tmp_path / "sub", [{"path": "a.ome.tif"}, {"path": "notes.txt", "kind": "attachment"}])
    ome_tiff(sub / "a.ome.tif", random_image((2, 3, 96, 80)), "CZYX", {"x": 0.5, "y": 0.5, "z": 1.0})
    (sub / "notes.txt").write_text("acquisition notes\n")
    config = tmp_path / "config.yaml"

    class Case:
        folder, archive, staging, work, mark = sub, tmp_path / "archive", tmp_path / "staging", tmp_path / "work", \
            tmp_path / "mark"
        before = snapshot(sub)

        def config(self, cluster: str | None, **sections) -> str:
            data = {"staging": {"root": str(self.staging), "work": str(self.work)}, **sections}
            if cluster:
                data["cluster"] = {"address": cluster}
            config.write_text(yaml.safe_dump(data))
            return str(config)

        def start(self, cfg: str, faults: str | None = None, api: str | None = None) -> subprocess.Popen:
            self.marker = uuid.uuid4().hex  # what the run's processes carry (``marked``)
            env = {**os.environ, "ZARRCHIVE_FAULTS_MARK": str(self.mark), "ZARRCHIVE_TEST_RUN": self.marker}
            env.pop("PREFECT_API_URL", None)
            if api:
                env["PREFECT_API_URL"] = api
            if faults:
                env["ZARRCHIVE_FAULTS"] = faults
            return subprocess.Popen([ZARRCHIVE, "ingest", str(self.folder), "--archive", str(self.archive), "--config",
                                     cfg, "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)

        def staging_left(self) -> list[str]:
            return sorted(p.name for p in self.staging.glob("zarrchive-*")) if self.staging.exists() else []

        def stores(self) -> set[str]:
            return {p.name for p in (self.work / "compress").glob("*.ome.zarr")} if self.work.exists() else set()

    return Case()


def harness_api() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


# ---------------------------------------------------------------- stop signals and kills


@pytest.mark.parametrize("stop, where", [(signal.SIGTERM, "compress.start"), (signal.SIGINT, "fetch.copy")])
def test_sigterm_or_sigint_stops_a_run_within_seconds_and_leaves_nothing_behind(run_case, prefect_server, stop,
                                                                                where):
    cfg = run_case.config(None)  # a LocalCluster of its own: its workers must end with the run
    run = run_case.start(cfg, f"{where}=stall")  # its own Prefect API server: it must end too
    wait_mark(run_case.mark, where, run)
    below = marked(run_case.marker) - {run.pid}
    assert below, "the run started no API server or cluster"
    started = time.monotonic()
    run.send_signal(stop)
    try:
        out, _err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:  # never leave a stalled run behind, even when this test fails
            run.kill()
    stopped_in = time.monotonic() - started
    assert stopped_in < 30, f"{stop.name} took {stopped_in:.1f} s"
    assert run.returncode == 128 + stop
    assert json.loads(out.strip().splitlines()[-1]) == {"status": "stopped", "error": f"stopped by {stop.name}"}
    assert not left_running(run_case.marker), "processes of the run outlived it"
    assert run_case.staging_left() == [] and not list(run_case.archive.rglob("manifest.json"))
    assert snapshot(run_case.folder) == run_case.before


KILL_POINTS = ["fetch.copy", "convert.start", "compress.start", "qc.start", "publish.start", "publish.originals",
               "publish.images", "publish.commit", "publish.committed"]


@pytest.mark.parametrize("where", KILL_POINTS)
def test_kill_9_at_each_step_then_the_next_run_completes_without_redoing_verified_work(run_case, scheduler,
                                                                                     prefect_server, where):
    own_cluster = where == "compress.start"  # once with the run's own LocalCluster, whose workers must end too
    cfg = run_case.config(None if own_cluster else scheduler)
    killed = run_case.start(cfg, f"{where}=kill")
    killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL and where in run_case.mark.read_text()
    # the API server and the cluster's workers died with it (parent-death signal), though re-parented
    assert left_running(run_case.marker) == set()
    manifests = list(run_case.archive.rglob("manifest.json"))
    assert len(manifests) == (1 if where == "publish.committed" else 0)  # committed whole, or not visible at all
    stores = run_case.stores()
    if where != "publish.committed":
        assert run_case.staging_left(), "the killed run should have left its staging folder"

    again = run_case.start(cfg, api=harness_api())
    out, err = again.communicate(timeout=300)
    result = json.loads(out.strip().splitlines()[-1])
    assert again.returncode == 0, out + err
    assert result["status"] == ("unchanged" if where == "publish.committed" else "published")
    assert run_case.staging_left() == []  # the killed run's staging was removed by this one
    if where.startswith("publish."):
        assert run_case.stores() == stores  # converted and compressed before the kill: reused, not redone
    assert main(["verify", "ZA000001/v1", "--archive", str(run_case.archive)]) == 0
    assert snapshot(run_case.folder) == run_case.before


def test_clean_removes_what_a_killed_run_left_and_nothing_of_a_running_one(run_case, scheduler, prefect_server,
                                                                          capsys):
    cfg = run_case.config(scheduler)
    killed = run_case.start(cfg, "compress.start=kill")
    killed.communicate(timeout=300)
    [left] = run_case.staging_left()
    assert main(["clean", "--config", cfg, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == [str(run_case.staging / left)]
    assert run_case.staging_left() == []
    running = run_case.start(cfg, "fetch.copy=stall", api=harness_api())
    try:
        wait_mark(run_case.mark, f"fetch.copy {running.pid}", running)
        assert running.pid in marked(run_case.marker)  # what the kill test looks for is seen in a live run
        [mine] = run_case.staging_left()
        assert main(["clean", "--config", cfg, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["removed"] == []
        assert run_case.staging_left() == [mine]  # the running one's is untouched
    finally:
        running.kill()
        running.communicate()


def test_clean_removes_the_unfinished_stores_and_pictures_of_dead_processes_and_nothing_of_a_live_one(tmp_path):
    """What a pass writes under a temporary name (a store, and a small image's thumbnail beside it, a file) is
    removed once the process it belongs to has ended (killed mid-batch: its passes ran on), never while it runs."""
    from zarrchive.archive.staging import PARTIAL, clean_stale
    from zarrchive.config import StagingSettings
    from zarrchive.host import this_process

    compress = tmp_path / "work" / "compress"
    compress.mkdir(parents=True)
    dead = "999999999-0"  # no such process
    for owner in (dead, this_process()):
        (compress / f"a.ome.zarr{PARTIAL}{owner}" / "0").mkdir(parents=True)
        (compress / f"a.ome.zarr{PARTIAL}{owner}" / "0" / "zarr.json").write_text("{}")
        (compress / f"a.ome.zarr.png{PARTIAL}{owner}").write_bytes(b"\x89PNG")
    removed = clean_stale(StagingSettings(root=str(tmp_path / "staging"), work=str(tmp_path / "work")))
    assert sorted(Path(p).name for p in removed) == sorted([f"a.ome.zarr.png{PARTIAL}{dead}",
                                                            f"a.ome.zarr{PARTIAL}{dead}"])
    assert sorted(p.name for p in compress.iterdir()) == sorted([f"a.ome.zarr.png{PARTIAL}{this_process()}",
                                                                f"a.ome.zarr{PARTIAL}{this_process()}"])


def test_the_owner_mark_is_each_process_s_own_in_a_forked_child_too():
    """A process's owner mark is read once and kept; a child forked after that marks what it writes with its own
    pid and start, never its parent's (whose end would make a live child's work look abandoned)."""
    import multiprocessing

    from zarrchive.host import owner_alive, process_start, this_process

    mine = this_process()
    assert mine == f"{os.getpid()}-{process_start(os.getpid())}" and this_process() == mine
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        child, child_pid = pool.apply(_mark_and_pid)
        assert child != mine and child == f"{child_pid}-{process_start(child_pid)}" and owner_alive(child)


def test_the_owner_mark_is_read_once_and_a_failed_read_is_not_kept(monkeypatch):
    """Read from /proc once, then kept; but a read that failed (under load: too many open files) is not kept, or
    every later name would carry ``<pid>-0``, which ``clean_stale`` takes for a dead process's."""
    from zarrchive import host

    real, calls = host.process_start, []
    monkeypatch.setattr(host, "_THIS", (0, ""))
    monkeypatch.setattr(host, "process_start", lambda pid: calls.append(pid) or None)
    assert host.this_process() == f"{os.getpid()}-0" and host._THIS == (0, "")
    monkeypatch.setattr(host, "process_start", lambda pid: calls.append(pid) or real(pid))
    marks = {host.this_process() for _ in range(5)}
    assert marks == {f"{os.getpid()}-{real(os.getpid())}"} and len(calls) == 2


def _mark_and_pid():
    from zarrchive.host import this_process

    return this_process(), os.getpid()


# ---------------------------------------------------------------- every exit reported


def test_json_reports_every_outcome_errors_included(tmp_path, config_file, prefect_server, capsys):
    from zarrchive.archive import lease

    sub = submission(tmp_path / "sub", [{"path": "a.ome.tif"}])
    ome_tiff(sub / "a.ome.tif", random_image((1, 1, 24, 24)), "CZYX", {"x": 0.5, "y": 0.5})
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    code = main(["ingest", str(sub), "--archive", str(blocker / "archive"), "--config", config_file(), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["status"] == "error" and "not-a-folder" in out["error"]

    archive = tmp_path / "archive"
    assert main(["ingest", str(sub), "--archive", str(archive), "--config", config_file(), "--json"]) == 0
    capsys.readouterr()
    (sub / "a.ome.tif").write_bytes((sub / "a.ome.tif").read_bytes() + b"\0")  # a changed file: a v2 is due
    held = lease.acquire(str(archive), "ZA000001", seconds=120)
    try:
        code = main(["ingest", str(sub), "--archive", str(archive), "--json", "--config",
                     config_file(publish={"on_image_error": "block_submission", "lease_wait_seconds": 0})])
    finally:
        held.release()
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["status"] == "busy" and "another run is publishing ZA000001" in out["reasons"][0]

    assert main(["show", "ZA999999", "--archive", str(archive), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["status"] == "error"
    assert main(["verify", "--archive", str(archive), "--json"]) == 2  # neither an accession nor --all
    assert json.loads(capsys.readouterr().out)["status"] == "invalid configuration"
    for usage in (["ingest", "--json"], ["ingest", str(sub), "--archive", str(archive), "--json", "--codec-profile",
                                         "smallest"], ["nosuch", "--json"]):  # argparse's refusals too
        assert main(usage) == 2
        out = json.loads(capsys.readouterr().out)
        assert out["status"] == "usage error" and out["error"] and out["usage"].startswith("usage: zarrchive"), usage


@pytest.fixture()
def small_disk(tmp_path):
    """An 8 MB filesystem (tmpfs), full before a submission of a few MB fits: a real ENOSPC."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.parametrize("full", ["staging", "archive"])
def test_a_full_disk_is_reported_at_once_leaves_no_debris_and_the_next_run_completes(
        tmp_path, small_disk, config_file, prefect_server, capsys, full):
    sub = submission(tmp_path / "sub", [{"path": "big.ome.tif"}])
    ome_tiff(sub / "big.ome.tif", random_image((1, 4, 512, 512)), "CZYX", {"x": 0.5, "y": 0.5})  # 2 MiB, noise
    (small_disk / "ballast").write_bytes(b"\0" * (7 << 20))
    before = snapshot(sub)
    staging_root = small_disk if full == "staging" else tmp_path / "staging"
    archive = small_disk / "archive" if full == "archive" else tmp_path / "archive"
    cfg = config_file(staging={"root": str(staging_root)})
    started = time.monotonic()
    code = main(["ingest", str(sub), "--archive", str(archive), "--config", cfg, "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and time.monotonic() - started < 60  # not retried as if it were transient
    if full == "staging":  # the file fails, named, and the version with it
        assert out["status"] in ("blocked", "failed")
        assert any("big.ome.tif" in r and "No space left on device" in r for r in out["reasons"]), out
    else:  # publishing fails: reported as an error, its upload removed
        assert out["status"] == "error" and "No space left on device" in out["error"]
        assert not [p for p in Path(archive).rglob("*") if p.is_file() and "/v1/" in str(p)]
    assert not list(Path(archive).rglob("manifest.json"))
    assert not list(staging_root.glob("zarrchive-*"))
    assert snapshot(sub) == before
    (small_disk / "ballast").unlink()
    assert main(["ingest", str(sub), "--archive", str(archive), "--config", cfg, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "published"


# ---------------------------------------------------------------- the storage misbehaving (S3 behind a faulty proxy)


class FaultyProxy(http.server.ThreadingHTTPServer):
    """A loopback HTTP proxy in front of the S3 endpoint: every ``every``-th request fails the first time it is seen,
    in turn with a 503 SlowDown (throttling), a 500 InternalError and a connection dropped without an answer;
    requests matching ``deny`` get 403 AccessDenied every time (a permanent error)."""

    daemon_threads = True

    def __init__(self, upstream: str, every: int = 4, deny: str | None = None):
        self.upstream, self.every, self.deny = upstream.rstrip("/"), every, deny
        self.count, self.injected, self.seen = 0, 0, set()
        self.kinds: dict[object, int] = {}
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), ProxyHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _fault(self) -> int | str | None:
        server: FaultyProxy = self.server  # type: ignore[assignment]
        if server.deny and self.command == "PUT" and server.deny in self.path:
            return 403
        with server.lock:
            server.count += 1
            key = (self.command, self.path)
            if server.count % server.every == 0 and key not in server.seen:
                server.seen.add(key)
                kind = (503, 500, "drop")[server.injected % 3]
                server.injected += 1
                server.kinds[kind] = server.kinds.get(kind, 0) + 1
                return kind
        return None

    def _body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # streamed uploads: de-chunked here
            parts = []
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else None

    def _relay(self) -> None:
        body = self._body()
        if (status := self._fault()) == "drop":  # the connection goes, with no answer at all
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if status is not None:
            code = {503: "SlowDown", 500: "InternalError"}.get(status, "AccessDenied")
            payload = f"<Error><Code>{code}</Code><Message>injected</Message></Error>".encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Content-Type", "application/xml")
            self.end_headers()
            self.wfile.write(payload)
            return
        server: FaultyProxy = self.server  # type: ignore[assignment]
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "transfer-encoding",
                                                                              "content-length", "expect")}
        if body is not None:
            headers["Content-Length"] = str(len(body))
        host = server.upstream.split("://", 1)[1]
        connection = http.client.HTTPConnection(host, timeout=60)  # no headers of its own (urllib adds a form type)
        connection.request(self.command, self.path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        connection.close()
        self.send_response(response.status)
        for key, value in response.headers.items():
            if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(key, value)
        # a HEAD response has no body but tells the object's size
        self.send_header("Content-Length", response.headers.get("Content-Length", "0") if self.command == "HEAD"
                         else str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay


def s3_through(proxy: FaultyProxy):
    import fsspec

    saved = dict(fsspec.config.conf["s3"])
    fsspec.config.conf["s3"] = {**saved, "endpoint_url": proxy.url}
    fsspec.AbstractFileSystem.clear_instance_cache() if hasattr(fsspec.AbstractFileSystem,
                                                                "clear_instance_cache") else None
    return saved


def test_throttling_and_5xx_from_s3_are_retried_and_the_version_verifies(s3_endpoint, config_file,
                                                                         prefect_server, tmp_path):
    import fsspec
    from zarrchive.flows.ingest import ingest

    bucket = s3_endpoint()
    upstream = fsspec.config.conf["s3"]["endpoint_url"]
    sub = submission(tmp_path / "sub", [{"path": "a.ome.tif"}])
    ome_tiff(sub / "a.ome.tif", random_image((1, 2, 64, 64)), "CZYX", {"x": 0.5, "y": 0.5})
    fs = fsspec.filesystem("s3", endpoint_url=upstream, key="testing", secret="testing", skip_instance_cache=True)
    fs.put(str(sub), f"{bucket}/landing/sub", recursive=True)
    proxy = FaultyProxy(upstream, every=3)
    saved = s3_through(proxy)
    try:
        pub = ingest(f"s3://{bucket}/landing/sub", f"s3://{bucket}/archive", config_file())
    finally:
        fsspec.config.conf["s3"] = saved
        proxy.shutdown()
    assert pub.status == "published", pub.reasons
    assert proxy.injected >= 6 and set(proxy.kinds) == {503, 500, "drop"}, proxy.kinds  # each kind, retried
    assert main(["verify", "ZA000001/v1", "--archive", f"s3://{bucket}/archive"]) == 0


def test_a_permanent_storage_error_is_reported_and_nothing_is_visible(s3_endpoint, config_file, prefect_server,
                                                                      tmp_path):
    import fsspec
    from zarrchive.flows.ingest import ingest

    bucket = s3_endpoint()
    upstream = fsspec.config.conf["s3"]["endpoint_url"]
    sub = submission(tmp_path / "sub", [{"path": "a.ome.tif"}])
    ome_tiff(sub / "a.ome.tif", random_image((1, 1, 32, 32)), "CZYX", {"x": 0.5, "y": 0.5})
    proxy = FaultyProxy(upstream, every=10**9, deny="/ZA000001/v1/")
    saved = s3_through(proxy)
    try:
        with pytest.raises(Exception) as raised:
            ingest(str(sub), f"s3://{bucket}/archive", config_file())
    finally:
        fsspec.config.conf["s3"] = saved
        proxy.shutdown()
    assert isinstance(raised.value, PermissionError)  # s3fs's AccessDenied: not retried as if it were transient
    fs = fsspec.filesystem("s3", endpoint_url=upstream, key="testing", secret="testing", skip_instance_cache=True)
    assert not fs.exists(f"{bucket}/archive/ZA000001/v1/manifest.json")


# ---------------------------------------------------------------- fixity: verify and the rerun


def published(tmp_path: Path):
    from test_publish import Inputs

    inp = Inputs(tmp_path)
    pub = inp.publish()
    assert pub.status == "published"
    return inp, Path(pub.version_uri)


def object_of(vdir: Path, kind: str) -> Path:
    manifest = json.loads((vdir / "manifest.json").read_text())
    paths = [e["path"] for e in manifest["files"]]
    pick = {"chunk": lambda p: "/c/" in p or p.split("/")[-1].isdigit(), "original": lambda p: p.startswith(
        "originals/"), "metadata": lambda p: p.endswith("ro-crate-metadata.json")}[kind]
    return vdir / next(p for p in paths if pick(p))


DAMAGE = {
    "a flipped byte": lambda path: path.write_bytes(bytes([path.read_bytes()[0] ^ 0x01]) + path.read_bytes()[1:]),
    "a truncated object": lambda path: path.write_bytes(path.read_bytes()[:-1]),
    "a missing object": lambda path: path.unlink(),
}


@pytest.mark.parametrize("what", ["chunk", "original", "metadata"])
@pytest.mark.parametrize("damage", DAMAGE)
def test_verify_finds_every_kind_of_damage_in_every_kind_of_object(tmp_path, capsys, what, damage):
    _inp, vdir = published(tmp_path)
    archive = str(vdir.parent.parent)
    assert main(["verify", "ZA000007/v1", "--archive", archive, "--json"]) == 0
    capsys.readouterr()
    target = object_of(vdir, what)
    DAMAGE[damage](target)
    assert main(["verify", "ZA000007/v1", "--archive", archive, "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert [p["path"] for p in result["problems"]] == [str(target.relative_to(vdir))]
    kind = {"a flipped byte": "sha256", "a truncated object": "size", "a missing object": "missing"}[damage]
    assert result["problems"][0]["kind"] == kind and result["status"] == "damaged"
    logs = list((Path(archive) / "_audit" / "fixity").glob("*.json"))
    assert len(logs) == 2 and any(json.loads(p.read_text())["problems"] for p in logs)  # each audit is kept


def test_verify_finds_an_unexpected_object(tmp_path, capsys):
    _inp, vdir = published(tmp_path)
    (vdir / "images" / "planted.bin").write_bytes(b"not published")
    assert main(["verify", "--all", "--archive", str(vdir.parent.parent), "--json"]) == 1
    [problem] = json.loads(capsys.readouterr().out)["problems"]
    assert problem == {"version": "ZA000007/v1", "path": "images/planted.bin", "kind": "unexpected",
                       "detail": "not listed in the manifest"}


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@seed(20261125)
@given(data=st.data())
def test_verify_finds_any_single_flipped_bit(tmp_path_factory, data):
    vdir = published(tmp_path_factory.mktemp("flip"))[1]
    manifest = json.loads((vdir / "manifest.json").read_text())
    entry = data.draw(st.sampled_from([e for e in manifest["files"] if e["size"]]))
    offset = data.draw(st.integers(0, entry["size"] - 1))
    bit = data.draw(st.integers(0, 7))
    path = vdir / entry["path"]
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1 << bit
    path.write_bytes(bytes(raw))
    from zarrchive.archive import fixity

    result = fixity.audit(str(vdir.parent.parent), "ZA000007/v1")
    assert [(p["path"], p["kind"]) for p in result.problems] == [(entry["path"], "sha256")]


def test_a_rotating_sample_hashes_every_object_once_per_cycle(tmp_path):
    from zarrchive.archive import fixity

    _inp, vdir = published(tmp_path)
    archive = str(vdir.parent.parent)
    paths = [e["path"] for e in json.loads((vdir / "manifest.json").read_text())["files"]]
    covered = []
    for round_ in range(4):
        result = fixity.audit(archive, None, sample=0.25)
        fixity.record_audit(archive, result)
        assert result.round == round_ and result.buckets == 4 and result.objects == len(paths)
        covered += [p for p in paths if fixity.in_round(f"ZA000007/v1/{p}", round_, 4)]
    assert sorted(covered) == sorted(paths)  # four audits of a quarter: every object once


def test_a_rerun_reports_a_damaged_version_instead_of_unchanged(tmp_path):
    from zarrchive.tasks.publish import check_unchanged

    inp, vdir = published(tmp_path)
    assert check_unchanged(inp.submission, inp.archive, "f" * 64).status == "unchanged"
    victim = object_of(vdir, "chunk")
    victim.write_bytes(victim.read_bytes()[:-3])
    (vdir / "originals" / "notes" / "readme.txt").unlink()
    pub = check_unchanged(inp.submission, inp.archive, "f" * 64)
    assert pub.status == "damaged" and pub.version == 1
    text = " ".join(pub.reasons)
    assert str(victim.relative_to(vdir)) in text and "truncated" in text
    assert "originals/notes/readme.txt: missing" in text and "zarrchive verify ZA000007/v1" in text


# ---------------------------------------------------------------- configuration, start-up, fuzzed files


@pytest.mark.parametrize("section, words", [
    ({"qc": {"severity": {"NO_SUCH_CHECK": "error"}}}, "qc.severity.NO_SUCH_CHECK: no such check"),
    ({"qc": {"severity": {"saturaton": "error"}}}, "did you mean 'saturation'"),
    ({"qc": {"modality": "electrons"}}, "qc.modality: 'electrons' is not a modality"),
    ({"qc": {"suite": "qc/missing.json"}}, "qc.suite: qc/missing.json cannot be read"),
    ({"compress": {"profiles": {"max": [{"codec": "jpeg2000"}]}}}, "compress.profiles.max.0.codec"),
])
def test_configuration_values_are_checked_against_what_exists(tmp_path, capsys, section, words):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(section))
    assert main(["ingest", str(tmp_path), "--archive", str(tmp_path / "a"), "--config", str(path), "--json"]) == 2
    assert words in json.loads(capsys.readouterr().out)["error"]


def test_the_local_prefect_api_starts_on_a_loaded_machine_and_dies_with_its_parent(tmp_path):
    from zarrchive import session

    assert session.STARTUP_SECONDS >= 60  # Prefect's own default (20 s) failed on loaded machines
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4)]
    code = ("import os, sys; from zarrchive.session import prefect_api\n"
            "with prefect_api() as url:\n"
            "    print(url, flush=True)\n"
            "    os.kill(os.getpid(), 9)\n")
    try:
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
        url = parent.stdout.readline().strip()
        parent.wait(120)
    finally:
        for hog in hogs:
            hog.kill()
    assert url.startswith("http://127.0.0.1:") and parent.returncode == -9
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
        except OSError:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the API server outlived its killed parent")


def test_a_command_imports_what_its_stages_need_while_the_local_api_starts():
    """``zarrchive ingest`` imports Great Expectations and the readers while its local API server starts (it would
    only wait for it); a module that fails to import is left for its stage to report."""
    code = ("import json, sys\n"
            "from zarrchive import session\n"
            "seen = []\n"
            "def meanwhile():\n"
            "    seen.append('great_expectations' in sys.modules)\n"
            "    session.preload(('no_such_module_of_zarrchive', *session.PRELOADED))\n"
            "    seen.append(all(name in sys.modules for name in session.PRELOADED))\n"
            "with session.prefect_api(meanwhile=meanwhile) as url:\n"
            "    print(json.dumps([url, seen]), flush=True)\n")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    url, seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert url.startswith("http://127.0.0.1:") and seen == [False, True]
    from zarrchive import cli, session

    import inspect

    assert "great_expectations" in session.PRELOADED
    assert "prefect_api(meanwhile=preload)" in inspect.getsource(cli._ingest)  # what the command passes


def _valid_tiffs(folder: Path) -> list[Path]:
    return [ome_tiff(folder / "a.ome.tif", random_image((2, 2, 16, 16), seed=1), "CZYX", {"x": 0.5, "y": 0.5}),
            plain_tiff(folder / "b.tif", random_image((3, 16, 16), "uint8", seed=2), photometric="minisblack",
                       tile=(16, 16), compression="zlib")]


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@seed(12)
@given(data=st.data())
def test_single_byte_mutations_of_valid_tiffs_fail_cleanly_or_convert(tmp_path_factory, data):
    """A damaged file is an InputError naming it (or converts): never another exception, a hang or a bare
    MemoryError. Mutations land in the header and IFDs, the OME-XML, and the pixels."""
    from zarrchive.tasks.convert import convert_file, probe_file

    from zarrchive.config import load_settings
    from zarrchive.errors import InputError

    folder = tmp_path_factory.mktemp("fuzz")
    path = data.draw(st.sampled_from(_valid_tiffs(folder)))
    raw = bytearray(path.read_bytes())
    where = data.draw(st.one_of(st.integers(0, 511), st.integers(0, len(raw) - 1)))
    raw[where % len(raw)] = data.draw(st.integers(0, 255))
    path.write_bytes(bytes(raw))
    settings = load_settings().convert
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(convert_file(staged(path), None, str(folder / "work"), settings))
            outcome.append(probe_file(str(path), path.name, _entry(path.name), settings))
        except InputError as exc:
            outcome.append(exc)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome.append(("unexpected", exc))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    assert outcome, f"converting a mutated {path.name} (byte {where}) hung"
    assert not any(isinstance(o, tuple) for o in outcome), outcome
    for o in outcome:
        if isinstance(o, InputError):
            assert path.name in str(o)


def _entry(name: str):
    from zarrchive.records import FileEntry

    return FileEntry(path=name)


# ---------------------------------------------------------------- the README's Reliability table, from these tests

CASES = [
    # (fault or hostile input, what happens, the test that shows it: module::function)
    ("A link to a host file, a linked folder, a linked image, a link inside an OME-Zarr input, a linked "
     "submission.yaml or submission folder; dangling, looping and relative links",
     "refused by `validate` and by the ingest, naming the entry; nothing is read through it",
     "test_landingzone::test_a_symbolic_link_listed_as_a_file_is_refused_by_validate"),
    ("A hard link with a name outside the submission; a device, a named pipe, a socket",
     "refused, named; a pipe never blocks the reader", "test_landingzone::test_devices_pipes_and_sockets_are_refused_"
                                                       "without_hanging"),
    ("A folder swapped for a link between the check and the copy", "refused at the copy (paths are opened one "
     "component at a time with O_NOFOLLOW)", "test_landingzone::test_fetch_refuses_a_folder_swapped_for_a_link_"
                                             "after_the_check"),
    ("A source file written to while it is fetched", "copied again (transient), never a torn copy",
     "test_landingzone::test_a_file_written_to_while_it_is_fetched_is_copied_again"),
    ("Names differing only by case or Unicode normalisation; control characters; names that are not UTF-8; "
     "unlisted files", "collisions and control characters refused; unlisted entries warned about and not archived",
     "test_landingzone::test_unlisted_entries_are_warned_about_and_a_non_utf8_name_is_left_out_of_the_template"),
    ("YAML alias bomb, anchors, merge keys, tags, duplicate keys (a licence given twice), second documents, "
     "deep nesting", "refused at once with the line", "test_yamldoc::test_hostile_yaml_is_refused_quickly_with_its_"
                                                      "reason"),
    ("An oversized submission.yaml, an overlong value, too many files", "refused before or while parsing, with the "
     "limit", "test_yamldoc::test_an_oversized_submission_yaml_is_refused_before_it_is_parsed"),
    ("A tiny TIFF declaring 20 TB; an OME-XML declaring a billion planes; too many series or pages; a "
     "decompression bomb; an OME-Zarr declaring 10^18 pixels", "refused from the headers with what it declares and "
     "the limit; the other images go on", "test_budget::test_a_file_over_budget_fails_alone_and_the_others_are_"
                                          "published"),
    ("Single-byte mutations of valid TIFFs and OME-XML (Hypothesis, seeded)", "convert, or an InputError naming "
     "the file; never a hang or a bare MemoryError", "test_reliability::test_single_byte_mutations_of_valid_tiffs_"
                                                     "fail_cleanly_or_convert"),
    ("Runs of one submission racing for its first accession (threads, on a folder and on S3)",
     "one accession for all of them; the others let their claim go",
     "test_intake::test_runs_of_one_submission_racing_for_its_first_accession_all_get_the_same_one"),
    ("Two runs publishing one accession at once (threads, processes, on a folder and on S3)",
     "exactly one version; the other waits and reports unchanged, or busy", "test_lease::test_two_ingest_processes_"
                                                                            "of_one_submission_publish_one_version"),
    ("A killed holder of the publishing lease; an expired lease", "taken over; the old holder can no longer "
     "commit", "test_lease::test_an_expired_lease_is_taken_over_and_its_holder_cannot_commit"),
    ("SIGTERM or SIGINT during a run (while compressing, while fetching)", "stops within seconds: staging removed, "
     "cluster and API server ended, one JSON object, exit 128 + the signal", "test_reliability::test_sigterm_or_sigint_stops_a_run_within_seconds_and_leaves_nothing_behind"),
    ("kill -9 at each stage (fetch, convert, compress with the run's own cluster, QC) and each step of publish "
     "(start, images, originals, before and after the commit)",
     "no partially visible version; nothing left running; the next run removes the debris, reuses verified work "
     "and completes", "test_reliability::test_kill_9_at_each_step_then_the_next_run_completes_without_redoing_"
                      "verified_work"),
    ("What a killed run left, while another run works", "`zarrchive clean` removes the first and leaves the second",
     "test_reliability::test_clean_removes_what_a_killed_run_left_and_nothing_of_a_running_one"),
    ("A compressed store damaged in the work area after its pass proved it (a chunk that no longer decodes)",
     "that image fails QC with the reason (its level-0 checksum, \"level 0 cannot be read\"); the others are "
     "checked and the run goes on",
     "test_qc::test_a_store_damaged_since_it_was_written_fails_its_own_checks_and_the_others_are_checked"),
    ("A Dask worker killed mid-image", "its tasks are redone; the image is bit-exact",
     "test_cluster::test_work_lost_with_a_killed_worker_is_redone_and_the_image_is_bit_exact"),
    ("Throttling (503), server errors (500) and dropped connections from S3 (a faulty proxy in front of the "
     "endpoint)", "retried; the version verifies",
     "test_reliability::test_throttling_and_5xx_from_s3_are_retried_and_the_version_verifies"),
    ("A permanent storage error (403 on upload)", "reported; nothing visible",
     "test_reliability::test_a_permanent_storage_error_is_reported_and_nothing_is_visible"),
    ("Disk full in staging or in the archive", "reported at once (not retried), no debris, the next run completes",
     "test_reliability::test_a_full_disk_is_reported_at_once_leaves_no_debris_and_the_next_run_completes"),
    ("An unwritable archive location, a busy accession, a usage error", "one JSON object with the status and the "
     "error; exit 1 or 2", "test_reliability::test_json_reports_every_outcome_errors_included"),
    ("A flipped bit, a truncated, missing or unexpected object (chunk, original, metadata)",
     "`zarrchive verify` and the fixity audit name it; nothing is repaired", "test_reliability::test_verify_finds_"
                                                                             "every_kind_of_damage_in_every_kind_of_"
                                                                             "object"),
    ("A rerun of an unchanged submission whose version lost or truncated objects", "reported damaged, naming them, "
     "not unchanged", "test_reliability::test_a_rerun_reports_a_damaged_version_instead_of_unchanged"),
    ("An embargoed version before its date; its private copy damaged when it is due", "nowhere public (objects, "
     "page, versions.json, changes feed); a damaged copy is not released and is kept",
     "test_embargo::test_a_damaged_private_copy_is_not_released_and_is_kept"),
    ("A configuration naming a check, modality, suite or codec that does not exist", "a configuration error "
     "(exit 2) with a suggestion", "test_reliability::test_configuration_values_are_checked_against_what_exists"),
    ("A reader looping for ever on one file; a compress pass longer than its time", "that image fails alone, "
     "named (`convert.timeout_seconds`, `compress.timeout_seconds`); nothing of it is kept",
     "test_reliability::test_a_compress_pass_that_outlasts_its_time_fails_and_keeps_nothing"),
    ("A small image that kills its Dask worker, or never ends, in a task it shares with other images", "that "
     "image fails alone, named; the others are done again, each alone, and stored; one that never ends is not "
     "tried again; nothing of it is kept",
     "test_batch::test_an_image_that_kills_its_worker_fails_alone_and_the_others_of_its_task_are_done_again"),
    ("A copy that never ends (a source that keeps it busy for ever)", "that file fails alone, named (`fetch.timeout_seconds`); "
     "nothing of it is staged; the others are fetched",
     "test_fetch::test_a_file_whose_copy_outlasts_its_time_fails_alone_and_leaves_nothing_staged"),
    ("A truncated or empty file, one that is not an image, a truncated OME-TIFF that lost its OME-XML",
     "`validate` names it before submitting; the ingest refuses it (never zero-filled planes)",
     "test_reliability::test_validate_opens_every_image_as_far_as_the_ingest_would"),
    ("A failure whose message holds the ingest machine's paths", "published reasons name the submitted file, "
     "never staging or work-area paths", "test_reliability::test_failure_reasons_name_submitted_files_not_the_"
                                         "ingest_machine_s_paths"),
    ("A loaded machine starting the local Prefect API; its parent killed", "it waits up to 180 s to start, and "
     "ends with its parent", "test_reliability::test_the_local_prefect_api_starts_on_a_loaded_machine_and_dies_"
                             "with_its_parent"),
]


def readme_table() -> str:
    rows = ["| fault or hostile input | what happens | shown by |", "|---|---|---|"]
    rows += [f"| {fault} | {what} | `tests/{test.replace('::', '.py::')}` |" for fault, what, test in CASES]
    return "\n".join(rows)


def test_the_readme_reliability_table_is_this_list_and_every_test_it_names_exists():
    import importlib

    for _fault, _what, test in CASES:
        module, function = test.split("::")
        assert hasattr(importlib.import_module(module), function), test
    readme = (ROOT / "README.md").read_text()
    assert readme_table() in readme, "README.md's Reliability table is out of date; it should read:\n" + readme_table()


# ---------------------------------------------------------------- time limits per stage, and what reports say


def test_a_convert_that_outlasts_its_time_fails_alone_naming_the_file(tmp_path, prefect_server, monkeypatch):
    from prefect import flow
    from zarrchive.tasks import convert as convert_module

    from zarrchive.config import load_settings
    from zarrchive.errors import StageTimeout

    path = ome_tiff(tmp_path / "slow.ome.tif", random_image((1, 1, 16, 16)), "CZYX")

    def stuck(*_args, **_kwargs):
        while True:  # a reader looping for ever in Python
            time.sleep(0.01)

    monkeypatch.setattr(convert_module, "convert_file", stuck)
    settings = load_settings(overrides={"convert": {"timeout_seconds": 2}}).convert

    @flow
    def one() -> None:
        convert_module.convert(staged(path, "slow.ome.tif"), None, str(tmp_path / "work"), settings)

    started = time.monotonic()
    state = one(return_state=True)
    error = state.result(raise_on_failure=False)
    assert time.monotonic() - started < 30
    assert isinstance(error, StageTimeout) and str(error).startswith("slow.ome.tif: reading its headers took longer")


def test_a_compress_pass_that_outlasts_its_time_fails_and_keeps_nothing(tmp_path, settings):
    from zarrchive.tasks.compress import compress_image
    from zarrchive.tasks.convert import convert_file
    from zarrchive.tasks.pyramid import build_pyramid

    from zarrchive.errors import StageTimeout

    path = ome_tiff(tmp_path / "big.ome.tif", random_image((1, 24, 512, 512)), "CZYX")
    record = staged(path)
    image = build_pyramid(convert_file(record, None, str(tmp_path / "work"), settings.convert)[0], settings.pyramid)
    quick = settings.compress.model_copy(update={"timeout_seconds": 0.01})
    with pytest.raises(StageTimeout, match="big.ome.tif: the compress pass took longer than compress.timeout"):
        compress_image(image, record, str(tmp_path / "work"), quick, settings.cluster.address)
    assert not list((tmp_path / "work" / "compress").glob("*"))  # neither the store nor its temporary


def test_failure_reasons_name_submitted_files_not_the_ingest_machine_s_paths(tmp_path, config_file, prefect_server):
    from zarrchive.flows.ingest import ingest

    sub = submission(tmp_path / "sub", [{"path": "images/bad.tif"}, {"path": "images/good.ome.tif"}])
    ome_tiff(sub / "images" / "good.ome.tif", random_image((1, 1, 16, 16)), "CZYX", {"x": 1, "y": 1})
    (sub / "images" / "bad.tif").write_bytes(b"II*\x00" + b"\xff" * 64)  # a TIFF header pointing nowhere
    staging_root = tmp_path / "scratch-of-the-ingest-machine"
    pub = ingest(str(sub), str(tmp_path / "archive"), config_file(
        staging={"root": str(staging_root)}, publish={"on_image_error": "skip_image"}))
    [failed] = [o for o in pub.images if o.status == "failed"]
    assert "images/bad.tif" in failed.error
    for name in ("manifest.json", "index.html"):
        text = (Path(pub.version_uri) / name).read_text()
        assert str(staging_root) not in text and "/originals/images/bad.tif" not in text, name


def test_validate_opens_every_image_as_far_as_the_ingest_would(tmp_path, capsys):
    sub = tmp_path / "sub"
    files = {"empty.tif": b"", "notes.tif": b"just text, named like an image\n",
             "zip.tif": b"PK\x03\x04 an archive"}
    for name, data in files.items():
        (sub / name).parent.mkdir(parents=True, exist_ok=True)
        (sub / name).write_bytes(data)
    ome_tiff(sub / "ok.ome.tif", random_image((1, 2, 32, 32)), "CZYX", {"x": 1, "y": 1})
    full = ome_tiff(sub / "cut.ome.tif", random_image((1, 4, 64, 64)), "CZYX", {"x": 1, "y": 1})
    full.write_bytes(full.read_bytes()[: full.stat().st_size // 2])  # truncated half way
    submission(sub, [{"path": n} for n in ("empty.tif", "notes.tif", "zip.tif", "ok.ome.tif", "cut.ome.tif")])
    assert main(["validate", str(sub), "--json"]) == 1
    found = {f["file"]: f["message"] for f in json.loads(capsys.readouterr().out)["findings"]
             if f["check"] == "image_readable"}
    assert set(found) == {"empty.tif", "notes.tif", "zip.tif", "cut.ome.tif"}
    assert "empty (0 bytes)" in found["empty.tif"] and "not supported" in found["notes.tif"]
    assert "truncated" in found["cut.ome.tif"]


if __name__ == "__main__":  # write the table into README.md (from the repository's root: python tests/test_reliability.py)
    readme = (ROOT / "README.md").read_text()
    start = readme.index("| fault or hostile input |")
    end = readme.index("\n\n", start)
    (ROOT / "README.md").write_text(readme[:start] + readme_table() + readme[end:])
