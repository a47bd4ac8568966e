"""Nothing outside a submission is read: every kind of link, device, pipe and socket is refused, named.

The class of problem, not one example: a symbolic link to a file, to a folder,
dangling, looping, relative and pointing inside the submission; the
submission folder, its submission.yaml, a listed image and an object inside
an OME-Zarr input as links; hard links with a name outside the submission;
devices, named pipes and sockets; a folder swapped for a link between the
check and the copy; links reported by a remote filesystem. Each is refused by
``zarrchive validate`` and by the ingest alike, and never copied.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import threading
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import zarr

from builders import ome_tiff, random_image, submission
from zarrchive.cli import main
from zarrchive.config import FetchSettings, load_settings
from zarrchive.errors import InputError
from zarrchive.landingzone import SubmissionFiles, UnsafeEntry, _what
from zarrchive.tasks.fetch import fetch_file
from zarrchive.tasks.intake import check_folder, template_for

CHECKS = load_settings().submission
FETCH = FetchSettings(block_size=1 << 16, retries=0, retry_delay_seconds=[0])
SECRET = b"root:x:0:0:secret of the ingest machine\n"


@pytest.fixture()
def host_secret(tmp_path) -> Path:
    """A file of the ingest machine, outside every submission."""
    path = tmp_path / "host" / "passwd"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


def good_submission(folder: Path, extra: list[dict]) -> Path:
    ome_tiff(folder / "images" / "a.ome.tif", random_image((1, 1, 16, 16)), "CZYX", {"x": 0.5, "y": 0.5})
    return submission(folder, [{"path": "images/a.ome.tif"}, *extra])


def errors_of(folder: Path) -> list[str]:
    _doc, _sha, findings = check_folder(str(folder), CHECKS)
    return [f.line() for f in findings if f.severity == "error"]


def never_copied(tmp_path: Path) -> None:
    """The host's secret is in no file below ``tmp_path`` but its own."""
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.name != "passwd":
            assert SECRET not in path.read_bytes(), f"{path} holds the host's file"


def linked(sub: Path, rel: str, target: Path | str) -> Path:
    path = sub / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)
    return path


# ---------------------------------------------------------------- symbolic links, every kind


LINKS = {
    "to a host file": lambda sub, secret: linked(sub, "link.txt", secret),
    "relative, to a file inside": lambda sub, secret: (sub / "real.txt").write_text("x") and linked(
        sub, "link.txt", "real.txt"),
    "dangling": lambda sub, secret: linked(sub, "link.txt", sub / "nowhere"),
    "looping": lambda sub, secret: linked(sub, "link.txt", "link.txt"),
}


@pytest.mark.parametrize("kind", LINKS)
def test_a_symbolic_link_listed_as_a_file_is_refused_by_validate(tmp_path, host_secret, kind):
    sub = good_submission(tmp_path / "sub", [{"path": "link.txt", "kind": "attachment"}])
    LINKS[kind](sub, host_secret)
    [line] = errors_of(sub)
    assert line.startswith("files[1] (link.txt)") and "symbolic link" in line and "never follows links" in line


def test_a_file_inside_a_linked_folder_is_refused(tmp_path, host_secret):
    sub = good_submission(tmp_path / "sub", [{"path": "docs/passwd", "kind": "attachment"}])
    linked(sub, "docs", host_secret.parent)
    [line] = errors_of(sub)
    assert "docs/passwd" in line and "docs/, a symbolic link to a folder" in line


def test_a_linked_image_is_refused(tmp_path):
    sub = tmp_path / "sub"
    ome_tiff(tmp_path / "elsewhere" / "b.ome.tif", random_image((1, 1, 16, 16)), "CZYX")
    good_submission(sub, [{"path": "images/b.ome.tif"}])
    linked(sub, "images/b.ome.tif", tmp_path / "elsewhere" / "b.ome.tif")
    [line] = errors_of(sub)
    assert "images/b.ome.tif" in line and "symbolic link" in line


@pytest.mark.parametrize("inside", ["OME/passwd", "0/zarr.json", "0/c"])
def test_a_link_inside_an_ome_zarr_input_is_refused_naming_the_object(tmp_path, host_secret, inside):
    sub = good_submission(tmp_path / "sub", [{"path": "images/b.ome.zarr"}])
    store = sub / "images" / "b.ome.zarr"
    group = zarr.open_group(str(store), mode="w", zarr_format=3)
    group.create_array("0", shape=(4, 4), chunks=(4, 4), dtype="uint8")[...] = np.ones((4, 4), "uint8")
    target = store / inside
    if target.is_dir():
        import shutil

        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    linked(sub, f"images/b.ome.zarr/{inside}", host_secret if inside != "0/c" else host_secret.parent)
    [line] = errors_of(sub)
    assert f"images/b.ome.zarr/{inside}" in line and "symbolic link" in line


def test_a_linked_submission_yaml_is_refused(tmp_path, host_secret):
    sub = good_submission(tmp_path / "sub", [])
    real = tmp_path / "elsewhere.yaml"
    (sub / "submission.yaml").rename(real)
    linked(sub, "submission.yaml", real)
    [line] = errors_of(sub)
    assert line.startswith("submission.yaml") and "symbolic link" in line


def test_a_linked_submission_folder_is_refused_naming_the_real_one(tmp_path):
    real = good_submission(tmp_path / "real", [])
    os.symlink(real, tmp_path / "sub")
    [line] = errors_of(tmp_path / "sub")
    assert "submission folder is a symbolic link" in line and str(real) in line


# ---------------------------------------------------------------- hard links, devices, pipes, sockets


def test_a_hard_link_to_a_file_outside_is_refused_and_one_inside_is_not(tmp_path, host_secret):
    sub = good_submission(tmp_path / "sub", [{"path": "passwd", "kind": "attachment"},
                                             {"path": "copy.ome.tif"}])
    os.link(host_secret, sub / "passwd")
    os.link(sub / "images" / "a.ome.tif", sub / "copy.ome.tif")  # both names inside: the same file twice
    [line] = errors_of(sub)
    assert line.startswith("files[1] (passwd)") and "hard link" in line and "1 of them outside" in line


def _device(path: Path) -> bool:
    try:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:
        return False
    return True


def test_devices_pipes_and_sockets_are_refused_without_hanging(tmp_path):
    sub = good_submission(tmp_path / "sub", [{"path": n, "kind": "attachment"} for n in ("dev", "fifo", "sock")])
    made_device = _device(sub / "dev")
    if not made_device:  # no CAP_MKNOD here: the device case is the classification alone
        (sub / "dev").write_text("stand-in")
        assert _what(stat.S_IFCHR | 0o600) == "a device, not a file"
    os.mkfifo(sub / "fifo")  # no writer: a blocking open would hang for ever
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(sub / "sock"))
        done: list[list[str]] = []
        worker = threading.Thread(target=lambda: done.append(errors_of(sub)), daemon=True)
        worker.start()
        worker.join(30)
    assert done, "checking the submission hung"
    lines = done[0]
    assert any("fifo" in line and "named pipe" in line for line in lines)
    assert any("sock" in line and "a socket" in line for line in lines)
    if made_device:
        assert any(line.startswith("files[1] (dev)") and "a device" in line for line in lines)


def test_fetch_refuses_a_pipe_without_hanging(tmp_path):
    from test_fetch import make_submission

    sub = tmp_path / "sub"
    sub.mkdir()
    os.mkfifo(sub / "fifo")
    entry = make_submission(str(sub), [{"path": "fifo"}])
    result: list[BaseException] = []

    def run() -> None:
        try:
            fetch_file(entry, entry.doc.files[0], str(tmp_path / "staging"), FETCH)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            result.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(30)
    assert result and isinstance(result[0], UnsafeEntry) and "named pipe" in str(result[0])


# ---------------------------------------------------------------- the copy itself, and what changes under it


def test_fetch_refuses_a_folder_swapped_for_a_link_after_the_check(tmp_path, host_secret, monkeypatch):
    from test_fetch import make_submission

    sub = tmp_path / "sub"
    (sub / "docs").mkdir(parents=True)
    (sub / "docs" / "passwd").write_text("harmless")
    entry = make_submission(str(sub), [{"path": "docs/passwd"}])
    files = SubmissionFiles(str(sub))
    real_kind = files.kind

    def kind_then_swap(rel: str):
        found = real_kind(rel)
        (sub / "docs" / "passwd").unlink()
        (sub / "docs").rmdir()
        os.symlink(host_secret.parent, sub / "docs")  # the depositor swaps the folder after the check
        return found

    monkeypatch.setattr(files, "kind", kind_then_swap)
    with pytest.raises(UnsafeEntry, match="docs/, a symbolic link to a folder"):
        fetch_file(entry, entry.doc.files[0], str(tmp_path / "staging"), FETCH, files)
    never_copied(tmp_path)


def test_a_file_written_to_while_it_is_fetched_is_copied_again(tmp_path, monkeypatch):
    """The depositor's program rewrites the file in place after the first block was read: that copy would be
    torn (old first block, new rest), so it is refused and the file copied again, whole and new."""
    from test_fetch import make_submission
    from zarrchive.tasks import fetch as fetch_mod

    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "a.bin").write_bytes(b"first version " * 10000)
    entry = make_submission(str(sub), [{"path": "a.bin"}])
    copy, calls = fetch_mod.copy_stream_hashing, []

    class Rewritten:  # the source handle; after its first block, the file is rewritten in place (same inode)
        def __init__(self, fin):
            self.fin = fin

        def read(self, size=-1):
            block = self.fin.read(size)
            if len(calls) == 1 and block:
                with open(sub / "a.bin", "r+b") as fh:
                    fh.write(b"other version " * 10000)
                calls.append("rewritten")
            return block

    def copying(fin, *args, **kwargs):
        calls.append("copy")
        return copy(Rewritten(fin), *args, **kwargs)

    monkeypatch.setattr(fetch_mod, "copy_stream_hashing", copying)
    record = fetch_file(entry, entry.doc.files[0], str(tmp_path / "staging"),
                        FetchSettings(block_size=1 << 12, retries=2, retry_delay_seconds=[0]))
    assert calls == ["copy", "rewritten", "copy"]
    assert Path(record.staged_path).read_bytes() == b"other version " * 10000
    assert record.sha256 == hashlib.sha256(b"other version " * 10000).hexdigest()


def test_other_filesystems_refuse_what_they_report_as_a_link(tmp_path):
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class LinkingFileSystem(MemoryFileSystem):
        protocol = ("linking",)
        store: dict = {}
        pseudo_dirs = [""]

        @classmethod
        def _strip_protocol(cls, path):
            return super()._strip_protocol(path.removeprefix("linking://") if isinstance(path, str) else path)

        def info(self, path, **kwargs):
            info = super().info(path, **kwargs)
            return {**info, "islink": path.rstrip("/").endswith("link.txt")}

    fsspec.register_implementation("linking", LinkingFileSystem, clobber=True)
    fs = fsspec.filesystem("linking")
    fs.pipe_file("/sub/link.txt", b"pointing somewhere")
    fs.pipe_file("/sub/ok.txt", b"fine")
    files = SubmissionFiles("linking:///sub")
    assert files.kind("ok.txt") == "file"
    with pytest.raises(UnsafeEntry, match="symbolic link"):
        files.kind("link.txt")
    with pytest.raises(UnsafeEntry, match="symbolic link"):
        files.open("link.txt")


# ---------------------------------------------------------------- names and what is not listed


def test_names_that_differ_only_by_case_or_normalisation_collide(tmp_path):
    sub = tmp_path / "sub"
    composed, decomposed = unicodedata.normalize("NFC", "café.txt"), unicodedata.normalize("NFD", "café.txt")
    for name in ("Notes.txt", "notes.txt", composed, decomposed):
        (sub / name).parent.mkdir(parents=True, exist_ok=True)
        (sub / name).write_text(name)
    good_submission(sub, [{"path": p, "kind": "attachment"} for p in ("Notes.txt", "notes.txt", composed,
                                                                        decomposed)])
    lines = errors_of(sub)
    assert sum("only in letter case or Unicode normalisation" in line for line in lines) == 2


def test_a_listed_name_found_only_in_another_normalisation_gets_a_hint(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / unicodedata.normalize("NFD", "café.txt")).write_text("x")
    good_submission(sub, [{"path": unicodedata.normalize("NFC", "café.txt"), "kind": "attachment"}])
    [line] = errors_of(sub)
    assert "listed but not found" in line and "differs only in letter case or Unicode normalisation" in line


def test_control_characters_in_a_listed_path_are_refused(tmp_path):
    sub = good_submission(tmp_path / "sub", [{"path": "bad\nname.txt", "kind": "attachment"}])
    assert any("control character" in line for line in errors_of(sub))


def test_unlisted_entries_are_warned_about_and_a_non_utf8_name_is_left_out_of_the_template(tmp_path, host_secret):
    sub = good_submission(tmp_path / "sub", [])
    (sub / "forgotten.txt").write_text("x")
    linked(sub, "link.txt", host_secret)
    os.close(os.open(os.fsencode(sub) + b"/caf\xe9.txt", os.O_CREAT | os.O_WRONLY))  # Latin-1, not UTF-8
    _doc, _sha, findings = check_folder(str(sub), CHECKS)
    warned = {f.file: f.message for f in findings if f.check == "unlisted"}
    assert "forgotten.txt" in warned and "will not be archived" in warned["forgotten.txt"]
    assert "symbolic link" in warned["link.txt"]
    assert any("caf" in name for name in warned)
    assert not [f for f in findings if f.severity == "error"]
    template = template_for(str(sub))
    assert "- path: forgotten.txt" in template and "path: link.txt" not in template
    assert "# left out: 'link.txt'" in template and "not valid UTF-8" in template


# ---------------------------------------------------------------- the whole path, as a depositor would try it


def test_validate_and_ingest_refuse_a_link_to_a_host_file_and_publish_nothing(tmp_path, host_secret, config_file,
                                                                             prefect_server, capsys):
    import json

    sub = good_submission(tmp_path / "sub", [{"path": "link.txt", "kind": "attachment"}])
    linked(sub, "link.txt", host_secret)
    assert main(["validate", str(sub)]) == 1
    assert "link.txt" in capsys.readouterr().out
    code = main(["ingest", str(sub), "--archive", str(tmp_path / "archive"), "--config", config_file(), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["status"] == "refused"
    assert any("link.txt" in r and "symbolic link" in r for r in out["reasons"])
    never_copied(tmp_path)
    assert not list((tmp_path / "archive").rglob("manifest.json"))


def test_an_unsafe_entry_is_an_input_error_naming_it():
    error = UnsafeEntry("images/x.tif", "a socket, not a file")
    assert isinstance(error, InputError) and str(error) == "images/x.tif: a socket, not a file"


@pytest.mark.parametrize("kind", ["hard link outside", "named pipe", "socket"])
def test_a_hard_link_pipe_or_socket_inside_an_ome_zarr_input_is_refused_naming_the_object(tmp_path, host_secret,
                                                                                            kind):
    """What a Zarr store holds is checked object by object, as the submission's own files are."""
    sub = good_submission(tmp_path / "sub", [{"path": "images/b.ome.zarr"}])
    store = sub / "images" / "b.ome.zarr"
    group = zarr.open_group(str(store), mode="w", zarr_format=3)
    group.create_array("0", shape=(4, 4), chunks=(4, 4), dtype="uint8")[...] = np.ones((4, 4), "uint8")
    odd = store / "0" / "extra"
    if kind == "hard link outside":
        os.link(host_secret, odd)
    elif kind == "named pipe":
        os.mkfifo(odd)
    done: list[list[str]] = []
    with socket.socket(socket.AF_UNIX) as server:
        if kind == "socket":
            server.bind(str(odd))
        worker = threading.Thread(target=lambda: done.append(errors_of(sub)), daemon=True)
        worker.start()
        worker.join(30)
    assert done, "checking the submission hung"
    [line] = done[0]
    words = {"hard link outside": "hard link", "named pipe": "named pipe", "socket": "a socket"}[kind]
    assert "images/b.ome.zarr/0/extra" in line and words in line, line
