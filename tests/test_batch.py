"""Small files and images run in batches (one task run for many); a large one keeps a task run of its own; an item
that fails in a batch fails alone, named with its reason, and every item keeps its own lineage."""

from __future__ import annotations

import asyncio
import json

import pytest
from distributed.diagnostics.plugin import WorkerPlugin

from builders import ome_tiff, random_image, submission
from zarrchive.batch import name, plan
from zarrchive.config import BatchSettings
from zarrchive.flows.ingest import ingest_submission


def test_items_are_grouped_in_order_by_count_and_bytes_and_a_large_one_runs_alone():
    settings = BatchSettings(images=3, bytes=100, small_bytes=50, parallel=1)
    sizes = [10, 10, 10, 10, 60, 40, 40, 30, 1]
    groups = plan(list(enumerate(sizes)), lambda item: item[1], settings)
    assert [[i for i, _ in g] for g in groups] == [[0, 1, 2], [3], [4], [5, 6], [7, 8]]
    assert plan([1, 2], lambda _: 1, BatchSettings(small_bytes=0)) == [[1], [2]]
    assert name("images", ["a", "b", "c"]) == "3 images (a … c)" and name("images", ["a"]) == "a"


def test_there_are_batches_enough_to_keep_the_cluster_busy():
    settings = BatchSettings(images=64, parallel=4)
    assert [len(g) for g in plan(range(10), lambda _: 1, settings)] == [3, 3, 3, 1]
    assert [len(g) for g in plan(range(1000), lambda _: 1, settings)] == [64] * 15 + [40]
    assert [len(g) for g in plan(range(3), lambda _: 1, settings)] == [1, 1, 1]


def test_a_batch_fails_its_bad_item_alone_and_keeps_each_items_lineage(tmp_path, config_file, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter

    sub = tmp_path / "sub"
    files = []
    for i in range(4):
        ome_tiff(sub / f"f{i}.ome.tif", random_image((1, 1, 32, 40), seed=i), "CZYX", {"x": 0.5, "y": 0.5})
        files.append({"path": f"f{i}.ome.tif"})
    (sub / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 12)  # a TIFF header and nothing else
    files.append({"path": "broken.tif"})
    ome_tiff(sub / "big.ome.tif", random_image((1, 1, 128, 128), seed=9), "CZYX", {"x": 0.5, "y": 0.5})
    files.append({"path": "big.ome.tif"})
    submission(sub, files)
    config = config_file(publish={"on_image_error": "skip_image"},
                         batch={"small_bytes": 20000, "parallel": 1, "describe_on_cluster": 0})
    from zarrchive.tasks import convert as convert_mod

    real = convert_mod.convert_file

    def here_only_the_large_one(file, *args):  # the batch's files are described on a worker, not here
        assert file.path == "big.ome.tif", f"{file.path} was read in the flow's process"
        return real(file, *args)

    monkeypatch.setattr(convert_mod, "convert_file", here_only_the_large_one)
    state = ingest_submission(submission=str(sub), archive=str(tmp_path / "archive"), config=config,
                              create_archive=True, return_state=True)
    pub = state.result(raise_on_failure=False).data  # (partly published: the run says so, Failed)
    outcome = {o.image_id: o for o in pub.images}
    assert pub.status == "published" and pub.partial and {i for i, o in outcome.items() if o.status == "published"} == {
        "f0", "f1", "f2", "f3", "big"}
    assert outcome["broken"].status == "failed" and outcome["broken"].error.startswith("convert: ")

    async def task_runs():
        async with get_client() as client:
            runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id={"any_": [state.state_details.flow_run_id]}))
            return {r.name: r.state for r in runs}

    runs = asyncio.run(task_runs())
    batch = runs["convert: 5 files (f0.ome.tif … broken.tif)"]  # (files in the submission's order)
    assert batch.name == "Completed" and batch.message == "4 of 5 done; failed: broken.tif"
    assert "convert: big.ome.tif" in runs and "compress: big" in runs  # over small_bytes: a task run of its own
    assert "compress: 4 images (f0 … f3)" in runs
    crate = json.loads((tmp_path / "archive" / pub.accession / "v1" / "ro-crate-metadata.json").read_text())
    actions = {n["@id"] for n in crate["@graph"] if n.get("@type") == "CreateAction"}
    for image in ("f0", "f1", "f2", "f3", "big"):
        assert any(a.endswith(f"-compress-{image}") for a in actions), image
    # the batch's files were described on a worker (describe_on_cluster: 0): each keeps its lineage in this run
    converted = {n["object"][0]["@id"]: n for n in crate["@graph"]
                 if n.get("@type") == "CreateAction" and n.get("zarrchive:stage") == "convert"}
    assert set(converted) == {f"originals/f{i}.ome.tif" for i in range(4)} | {"originals/big.ome.tif"}
    for action in converted.values():
        assert action["zarrchive:prefectFlowRun"] == str(state.state_details.flow_run_id)
        assert action["zarrchive:prefectTaskRun"] and action["startTime"] <= action["endTime"]



def _convert_items(tmp_path):
    """Three small OME-TIFFs and a broken TIFF, staged, as a convert batch's items."""
    import hashlib

    from zarrchive.records import FileRecord

    folder = tmp_path / "staged"
    paths = []
    for i in range(3):
        paths.append(ome_tiff(folder / f"f{i}.ome.tif", random_image((2, 1, 24, 20), seed=i), "CZYX",
                              {"x": 0.5, "y": 0.5}, channels=["DNA", "actin"]))
    (folder / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 12)
    paths.append(folder / "broken.tif")
    return [(FileRecord(path=p.name, source_uri=str(p), staged_path=str(p), size=p.stat().st_size,
                        sha256=hashlib.sha256(p.read_bytes()).hexdigest(), kind="image"), None, {}) for p in paths]


def test_a_convert_batch_is_described_on_a_worker_each_file_alone_as_it_would_be_here(tmp_path, scheduler,
                                                                                        monkeypatch):
    """With the run's cluster, a batch's files are read by a worker: the same images and the same error (named,
    the others going on) as in the flow's process, each file's lineage timed where it was described; nothing is
    read in this process (its convert_file refuses every file)."""
    import datetime as dt

    from zarrchive.batch import ItemFailed
    from zarrchive.config import load_settings
    from zarrchive.tasks import convert as convert_mod

    items, settings = _convert_items(tmp_path), load_settings(None).convert
    work = str(tmp_path / "work")
    here = convert_mod.convert_batch.__wrapped__(items, work, settings, "4 files").data
    before = dt.datetime.now(dt.timezone.utc)

    def refused(*args, **kwargs):
        raise AssertionError("read in the flow's process")

    monkeypatch.setattr(convert_mod, "convert_file", refused)
    there = convert_mod.convert_batch.__wrapped__(items, work, settings, "4 files", scheduler).data
    assert [type(r) for r in there] == [type(r) for r in here] and isinstance(there[3], ItemFailed)
    assert there[3].error == here[3].error and there[3].error.startswith("InputError: broken.tif")
    for a, b in zip(here[:3], there[:3]):
        assert a.output == b.output
        assert [tuple(i.channel_names) for i in b.output] == [("DNA", "actin")]
        assert before <= b.lineage.started <= b.lineage.ended <= dt.datetime.now(dt.timezone.utc)
        assert b.lineage.stage == "convert" and (b.lineage.inputs, b.lineage.outputs) == (a.lineage.inputs,
                                                                                          a.lineage.outputs)



def test_what_a_file_s_description_warns_on_a_worker_goes_with_its_result(tmp_path, monkeypatch):
    """A worker has no run log: the warnings a file's description logs (zarrchive's logger, its own thread) are
    returned with that file, for the batch to log in the run; another thread's are not."""
    import threading

    from zarrchive import runlog
    from zarrchive.config import load_settings
    from zarrchive.tasks import convert as convert_mod

    def describing(file, *args):
        runlog.logger().warning("%s: its plate layout cannot be read", file.path)
        other = threading.Thread(target=lambda: runlog.logger().warning("another thread's line"))
        other.start()
        other.join()
        if file.path == "broken.tif":
            raise ValueError("no images")
        return []

    monkeypatch.setattr(convert_mod, "convert_file", describing)
    done = convert_mod.describe_files(_convert_items(tmp_path), str(tmp_path / "work"), load_settings(None).convert)
    assert [d.said for d in done] == [(f"{name}: its plate layout cannot be read",) for name in (
        "f0.ome.tif", "f1.ome.tif", "f2.ome.tif", "broken.tif")]
    assert [d.error for d in done] == [None, None, None, "ValueError: no images"]




def test_a_batch_logs_in_the_run_what_each_file_s_description_said_on_the_worker(tmp_path, monkeypatch, caplog):
    """What the worker returns is logged by the batch: each file's warnings (a failed file's too, before its
    failure), its images' lines, and its failure named."""
    import datetime as dt
    import logging

    from zarrchive.batch import ItemFailed
    from zarrchive.config import load_settings
    from zarrchive.tasks import convert as convert_mod

    items, settings = _convert_items(tmp_path), load_settings(None).convert
    now = dt.datetime.now(dt.timezone.utc)
    described = [convert_mod.Described(convert_mod.convert_file(*item[:2], str(tmp_path / "w"), settings, item[2])
                                       if i < 3 else None, None if i < 3 else "InputError: broken.tif: damaged",
                                       now, now, "worker-host", (f"{item[0].path}: said on the worker",))
                 for i, item in enumerate(items)]
    monkeypatch.setattr(convert_mod, "_on_cluster", lambda *args: described)
    with caplog.at_level(logging.INFO, logger="zarrchive"):
        results = convert_mod.convert_batch.__wrapped__(items, str(tmp_path / "w"), settings, "4 files",
                                                        "tcp://nowhere:1").data
    for item in items:
        assert f"{item[0].path}: said on the worker" in caplog.text
    assert "convert f0.ome.tif: f0, c=2" in caplog.text and "convert broken.tif failed: InputError" in caplog.text
    assert [r.lineage.host for r in results[:3]] == ["worker-host"] * 3 and isinstance(results[3], ItemFailed)


def test_a_file_whose_description_outlasts_its_time_on_a_worker_fails_alone(tmp_path, monkeypatch):
    """On a worker (no Prefect there), a file that keeps the reader busy past convert.timeout_seconds fails with
    the error convert gives in the flow, the thread is freed for the next file, and a file that ends in time is
    not interrupted afterwards."""
    import time

    from zarrchive.config import load_settings
    from zarrchive.tasks import convert as convert_mod

    real = convert_mod.convert_file

    def describing(file, *args):
        if file.path == "f1.ome.tif":
            while True:  # a reader looping on a hostile file
                time.sleep(0.01)
        return real(file, *args)

    convert_mod.describe_files(_convert_items(tmp_path / "warm")[:1], str(tmp_path / "warm"),
                               load_settings(None).convert)  # (a first read imports the readers: not timed here)
    monkeypatch.setattr(convert_mod, "convert_file", describing)
    settings = load_settings(None).convert.model_copy(update={"timeout_seconds": 0.5})
    started = time.monotonic()
    done = convert_mod.describe_files(_convert_items(tmp_path), str(tmp_path / "work"), settings)
    assert time.monotonic() - started < 10
    assert done[1].error == ("StageTimeout: f1.ome.tif: reading its headers took longer than "
                             "convert.timeout_seconds (0 s): refused")
    assert [len(d.images) for d in (done[0], done[2])] == [1, 1] and done[3].error.startswith("InputError")
    time.sleep(0.7)  # past the time of the last file begun: nothing is raised in this thread later


def test_a_convert_batch_the_cluster_cannot_do_is_done_in_the_flows_process(tmp_path, caplog):
    """A cluster that does not do the batch in its time (here: a scheduler with no worker): the files are
    described in the flow's process, with a warning saying why, and each gives its images or its error."""
    import logging

    from distributed import LocalCluster

    from zarrchive.batch import ItemFailed
    from zarrchive.cluster import release_clients
    from zarrchive.config import load_settings
    from zarrchive.tasks.convert import convert_batch

    items = _convert_items(tmp_path)
    settings = load_settings(None).convert.model_copy(update={"timeout_seconds": 1.0})
    idle = LocalCluster(n_workers=0, processes=False, dashboard_address=":0", protocol="tcp://", host="127.0.0.1")
    with idle, caplog.at_level(logging.WARNING, logger="zarrchive"):
        results = convert_batch.__wrapped__(items, str(tmp_path / "work"), settings, "4 files",
                                            idle.scheduler_address).data
        release_clients(idle.scheduler_address)
    assert [len(r.output) for r in results[:3]] == [1, 1, 1] and isinstance(results[3], ItemFailed)
    assert "the cluster could not describe these 4 files" in caplog.text


def test_a_convert_batch_reaches_a_worker_sealed_with_its_companions_whole(tmp_path, scheduler, monkeypatch):
    """A batch goes to the cluster as one sealed object (Dask walks every list, tuple and dict of a task's
    arguments: a screen's folder of 10,000 companions made each batch's submission 0.16 s of the flow's time), and
    on a real worker each file gets its images, its error, and its companions, as described in this process."""
    from distributed import Client

    from zarrchive.cluster import Sealed, release_clients
    from zarrchive.config import load_settings
    from zarrchive.tasks import convert as convert_mod

    items = _convert_items(tmp_path)
    folder = {f"field_{i:05d}.ome.tif": f"{i:064x}" for i in range(10_000)}  # a screen's folder
    folder.update({file.path: file.sha256 for file, _, _ in items})
    items = [(file, entry, folder) for file, entry, _ in items]
    settings = load_settings(None).convert
    submitted = []
    real_submit = Client.submit

    def submit(self, fn, *args, **kwargs):
        submitted.append(args)
        return real_submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(Client, "submit", submit)
    try:
        done = convert_mod._on_cluster(items, str(tmp_path / "work"), settings, scheduler)
    finally:
        release_clients(scheduler)
    assert len(submitted) == 1 and not any(isinstance(a, (list, tuple, dict, set)) for a in submitted[0])
    assert isinstance(submitted[0][0], Sealed) and submitted[0][0].value is items
    here = convert_mod.describe_files(items, str(tmp_path / "work"), settings)
    assert [d.error for d in done] == [d.error for d in here] and done[3].error.startswith("InputError")
    assert [[i.image_id for i in d.images] for d in done[:3]] == [[i.image_id for i in d.images] for d in here[:3]]
    assert [d.images[0].conversion_id for d in done[:3]] == [d.images[0].conversion_id for d in here[:3]]


def test_a_batch_reuses_what_an_earlier_run_compressed_so_a_new_version_shares_the_unchanged_images(tmp_path,
                                                                                                   config_file):
    from zarrchive.flows.ingest import ingest

    sub = tmp_path / "sub"
    for i in range(3):
        ome_tiff(sub / f"f{i}.ome.tif", random_image((1, 1, 32, 40), seed=i), "CZYX", {"x": 0.5, "y": 0.5})
    submission(sub, [{"path": f"f{i}.ome.tif"} for i in range(3)])
    config = config_file(batch={"parallel": 1})
    first = ingest(str(sub), str(tmp_path / "archive"), config)
    ome_tiff(sub / "f2.ome.tif", random_image((1, 1, 32, 40), seed=7), "CZYX", {"x": 0.5, "y": 0.5})
    submission(sub, [{"path": f"f{i}.ome.tif"} for i in range(3)])
    second = ingest(str(sub), str(tmp_path / "archive"), config)
    assert (first.version, second.version) == (1, 2)
    paths = {o.image_id: o.path for o in second.images}
    assert paths == {"f0": "../v1/images/f0.ome.zarr", "f1": "../v1/images/f1.ome.zarr", "f2": "images/f2.ome.zarr"}

    def compressed(version: int) -> dict[str, str]:
        crate = json.loads((tmp_path / "archive" / first.accession / f"v{version}" / "ro-crate-metadata.json")
                           .read_text())
        return {n["@id"].rsplit("-", 1)[-1]: n["startTime"] for n in crate["@graph"]
                if n.get("@type") == "CreateAction" and n.get("zarrchive:stage") == "compress"}

    before, after = compressed(1), compressed(2)
    assert after["f0"] == before["f0"] and after["f1"] == before["f1"]  # reused, with the lineage that made them
    assert after["f2"] > before["f2"]


def test_items_begun_ahead_end_in_order_each_failing_alone_and_a_stopped_batch_abandons_what_it_began():
    """``batch.run`` with ``ahead``: at most that many items under way; each ended in order; one failing as it
    begins or as it ends fails alone, named; stopped, every item begun and not ended is abandoned."""
    from zarrchive.batch import ItemFailed, run

    events: list[str] = []

    def begin(item: str):
        events.append(f"begin {item}")
        if item == "bad-begin":
            raise ValueError("refused at once")

        def end():
            events.append(f"end {item}")
            if item == "bad-end":
                raise OSError(28, "No space left on device")
            if item == "stop":
                raise KeyboardInterrupt
            return item.upper()

        end.abandon = lambda: events.append(f"abandon {item}")
        return end

    items = [("a",), ("bad-begin",), ("b",), ("bad-end",), ("c",)]
    state = run("compress", items, begin, lambda item: item[0], ahead=2)
    results = state.data
    assert results[0] == "A" and results[2] == "B" and results[4] == "C"
    assert isinstance(results[1], ItemFailed) and results[1].error == "ValueError: refused at once"
    assert isinstance(results[3], ItemFailed) and "No space left on device" in results[3].error
    assert state.message == "3 of 5 done; failed: bad-begin, bad-end"
    # never more than two under way: an item is ended before the third after it is begun
    under_way = 0
    for event in events:
        under_way += 1 if event.startswith("begin") and event != "begin bad-begin" else \
            -1 if event.startswith("end") else 0
        assert under_way <= 2
    assert [e for e in events if e.startswith("end")] == ["end a", "end b", "end bad-end", "end c"]

    events.clear()
    with pytest.raises(KeyboardInterrupt):
        run("compress", [("stop",), ("d",), ("e",)], begin, lambda item: item[0], ahead=3)
    assert events == ["begin stop", "begin d", "begin e", "end stop", "abandon d", "abandon e"]


def test_stage_tasks_carry_no_tags():
    """A tagged task run first asks the Prefect API for concurrency slots of its tags (once per set of tags in a
    process): measured at about 2 s a set under a run's load, so stage tasks carry none (their names say which
    stage and how many images; the flow run carries the run's tags)."""
    from zarrchive.tasks.compress import compress, compress_batch
    from zarrchive.tasks.convert import convert, convert_batch
    from zarrchive.tasks.pyramid import pyramid, pyramid_batch

    for stage in (convert, convert_batch, pyramid, pyramid_batch, compress, compress_batch):
        assert not stage.task.tags, stage.name


def _small_images(tmp_path, count: int):
    """``count`` converted, pyramided small images (image record, staged file record), each from its own file."""
    from builders import staged
    from zarrchive.config import load_settings
    from zarrchive.tasks.convert import convert_file
    from zarrchive.tasks.pyramid import build_pyramid

    settings = load_settings(None)
    items = []
    for i in range(count):
        path = ome_tiff(tmp_path / "sub" / f"f{i}.ome.tif", random_image((1, 1, 48, 40), seed=i), "CZYX",
                        {"x": 0.5, "y": 0.5})
        record = staged(path)
        [image] = convert_file(record, None, str(tmp_path / "w"), settings.convert)
        items.append((build_pyramid(image, settings.pyramid), record))
    return items


def _compress_batch(items, work, scheduler: str, **compress):
    from zarrchive.archive.staging import work_area
    from zarrchive.cluster import release_clients
    from zarrchive.config import StagingSettings, load_settings
    from zarrchive.tasks.compress import compress_batch

    settings = load_settings(None).compress.model_copy(update=compress)
    try:
        return compress_batch.fn(items, work_area(StagingSettings(work=str(work))), settings, scheduler,
                                 "a batch").data
    finally:
        release_clients(scheduler)


def test_a_compress_batch_sends_small_images_several_to_a_task_and_each_fails_alone(tmp_path, scheduler,
                                                                                  monkeypatch):
    """A batch's small images go to the cluster several to a Dask task (a task costs the flow and a worker about
    5 ms whatever its work); an image whose pass fails on the worker fails alone, named, and the images of its
    task and of the others are stored, proven and reported as they would be alone."""
    from distributed import Client

    from zarrchive.batch import ItemFailed
    from zarrchive.ngff import validate_image

    items = _small_images(tmp_path, 10)
    with open(items[4][1].staged_path, "r+b") as fh:  # the staged file damaged after conversion: its pass fails
        fh.seek(8)
        fh.write(b"\xff" * 64)
    submitted = []
    real_submit = Client.submit

    def submit(self, fn, *args, **kwargs):
        submitted.append(fn.__name__)
        return real_submit(self, fn, *args, **kwargs)

    monkeypatch.setattr(Client, "submit", submit)
    done = _compress_batch(items, tmp_path / "work", scheduler, profile="fixed")  # (a codec chosen by speed may
    monkeypatch.undo()                                                           # differ from run to run)
    assert submitted == ["whole_images"] * 4  # 10 images, 2 threads: 3 to a task (a task for each thread, and one)
    assert isinstance(done[4], ItemFailed) and "f4.ome.tif" in done[4].error, done[4]
    alone = _compress_batch(items[:4], tmp_path / "alone", scheduler, profile="fixed")  # (4 images: 1 to a task)
    for i, result in enumerate(done):
        if i == 4:
            continue
        report = result.output
        assert report.image_id == f"f{i}" and validate_image(report.store) == [] and report.thumbnail
        if i < 4:
            assert (report.store_sha256, report.bytes_out) == (alone[i].output.store_sha256, alone[i].output.bytes_out)
    left = sorted(p.name for p in (tmp_path / "work" / "compress").iterdir() if p.name != "results")
    assert len(left) == 18 and not [n for n in left if "partial" in n]  # 9 stores and their pictures, nothing else


class Unwell(WorkerPlugin):
    """On each worker, the whole pass of an image read from a file named ``victim`` kills the worker (SIGKILL) as a
    file that crashes its reader would, every time it is tried, or (``stall``) keeps it busy that many seconds;
    each time it begins, a line is added to the file ``begun``."""

    name = "zarrchive-test-unwell"
    idempotent = True

    def __init__(self, victim: str, begun: str, stall: float = 0.0):
        self.victim, self.begun, self.stall = victim, begun, stall

    def setup(self, worker) -> None:
        import os
        import signal
        import time

        from zarrchive.pixels import passes

        original, victim, begun, stall = passes.whole_image, self.victim, self.begun, self.stall

        def unwell(source, *args):
            if os.path.basename(source) == victim:
                with open(begun, "a") as fh:
                    fh.write(f"{os.getpid()}\n")
                if not stall:
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(stall)
            return original(source, *args)

        passes.whole_image = unwell


def _unwell_batch(tmp_path, stall: float = 0.0, **compress):
    """A batch of 9 small images (3 to a task) compressed on a cluster of its own (2 workers, no death allowed)
    whose workers are unwell on f4 (``Unwell``); the results, the names left in the work area's compress folder,
    and how many times f4's pass began."""
    from distributed import Client

    from zarrchive.cluster import cluster_for_run
    from zarrchive.config import ClusterSettings

    items = _small_images(tmp_path, 9)
    begun = tmp_path / "begun"
    begun.touch()
    cluster = ClusterSettings(n_workers=2, threads_per_worker=1, memory_limit="1GiB", allowed_failures=0)
    with cluster_for_run(cluster) as address:
        _compress_batch(items[:2], tmp_path / "warm", address)  # (each worker's first pass imports the readers)
        with Client(address, set_as_default=False) as client:
            client.register_plugin(Unwell("f4.ome.tif", str(begun), stall))
        done = _compress_batch(items, tmp_path / "work", address, **compress)
        left = [p.name for p in (tmp_path / "work" / "compress").iterdir() if p.name != "results"]
    return done, left, len(begun.read_text().splitlines())


def _only_f4_failed(done, left, error: str) -> None:
    from zarrchive.batch import ItemFailed
    from zarrchive.ngff import validate_image

    assert isinstance(done[4], ItemFailed) and done[4].error.startswith(error), done[4]
    for i, result in enumerate(done):
        if i != 4:
            assert not isinstance(result, ItemFailed), (i, result)
            assert result.output.image_id == f"f{i}" and validate_image(result.output.store) == []
    assert len(left) == 16 and not [n for n in left if "partial" in n]  # 8 stores and their pictures


def test_an_image_that_kills_its_worker_fails_alone_and_the_others_of_its_task_are_done_again(tmp_path, caplog):
    """A task of several images lost as a whole (its worker died, more often than the cluster allows): each of its
    images is done again in a task of its own, so the image that kills its worker fails alone and the others
    are stored."""
    done, left, begun = _unwell_batch(tmp_path)
    _only_f4_failed(done, left, "ClusterError: Dask workers died 1 time(s) while running 'whole_image-")  # alone
    assert begun == 2 and "the task of 3 images failed as a whole (ClusterError" in caplog.text


def test_an_image_that_outlasts_its_time_fails_alone_and_the_others_of_its_task_are_done_again(tmp_path, caplog):
    """A task of several images past ``compress.timeout_seconds`` (one image's time) is stopped before its next
    image; each image it did not do is done again alone, with a time of its own, so only the image that outlasts
    its own time fails, named."""
    done, left, begun = _unwell_batch(tmp_path, stall=8, timeout_seconds=2)
    _only_f4_failed(done, left, "StageTimeout: f4.ome.tif: the compress pass took longer than "
                                "compress.timeout_seconds")
    assert begun == 2 and "the task of 3 images failed as a whole (StageTimeout" in caplog.text


def test_an_image_that_never_ends_fails_without_taking_a_second_thread(tmp_path, caplog, monkeypatch):
    """A task still on one image ``STOP_SECONDS`` after it was stopped (a reader that never ends): that image fails
    there and then, and is not tried again (it would hold a second thread for good); the others are done alone."""
    from zarrchive.tasks import compress

    monkeypatch.setattr(compress, "STOP_SECONDS", 1.0)
    done, left, begun = _unwell_batch(tmp_path, stall=60, timeout_seconds=2)
    _only_f4_failed(done, left, "StageTimeout: f4.ome.tif: the compress pass took longer than "
                                "compress.timeout_seconds")
    assert begun == 1 and "each is done again alone but image 2, still running (it fails)" in caplog.text


def test_a_task_of_several_images_returns_each_failure_light_and_portable_and_stops_at_a_memory_error(monkeypatch):
    """``passes.whole_images``: an image's failure comes back in its place without its traceback or chained errors
    (their frames hold its pixels), one that cannot be pickled as a ``RuntimeError`` saying what it was; after an
    image that ran out of memory the task stops (the images left are done again alone by the flow)."""
    import pickle

    from zarrchive.cluster import Sealed
    from zarrchive.pixels import passes

    class Local(Exception):  # a class pickle cannot find
        pass

    def whole_image(name):
        if name == "chained":
            try:
                raise KeyError("inner")
            except KeyError:
                raise ValueError("outer") from None
        if name == "local":
            raise Local("not portable")
        if name == "memory":
            raise MemoryError("no room")
        return name

    monkeypatch.setattr(passes, "whole_image", whole_image)
    done = passes.whole_images(Sealed([("a",), ("chained",), ("local",), ("b",), ("memory",), ("never",)]))
    assert done[0] == "a" and done[3] == "b" and len(done) == 5  # stopped after the memory error
    assert isinstance(done[1], ValueError) and done[1].__traceback__ is None and done[1].__context__ is None
    assert isinstance(done[2], RuntimeError) and str(done[2]) == "Local: not portable"
    assert isinstance(done[4], MemoryError) and done[4].__traceback__ is None
    assert [type(e) for e in pickle.loads(pickle.dumps(done[1:3]))] == [ValueError, RuntimeError]
