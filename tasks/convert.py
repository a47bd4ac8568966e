"""Convert: describe each image of a staged file as an image of the archive.

The file's format is chosen from its content and says what images it holds
(``zarrchive.formats``: one object per kind of file, which opens it once). This
stage merges that with what the submission says: the submission wins; where
the file also has it and disagrees, the conflict is noted. Axes are mapped to
OME-NGFF order (t, c, z, y, x; singleton t and z dropped), physical pixel sizes
keep their units, channel names are carried over. The file's OME-XML (or one
generated for other formats) is kept in the work area, to be stored beside the
image.

Convert reads no pixels: it says where they are (``SourceLayout``) and the
compress stage's single streaming pass reads each region of the source once,
writing every level of the pyramid from it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import math
import os
import posixpath
import socket
import threading
from typing import Any, Callable, Iterator, NamedTuple

import fsspec
import numpy as np

from zarrchive import __version__, batch, faults, formats, runlog
from zarrchive.archive.identity import convert_key, json_sha256
from zarrchive.archive.lineage import Traced, stage_task, trace, traced
from zarrchive.archive.storage import write_bytes_atomic
from zarrchive.config import ConvertSettings
from zarrchive.errors import InputError, StageTimeout
from zarrchive.formats import SourceMetadata
from zarrchive.formats.ometiff import listing
from zarrchive.records import (
    MICROMETERS,
    Axis,
    FileEntry,
    FileRecord,
    ImageRecord,
    Level,
    PixelSize,
    series_label,
    slug,
)
from zarrchive.software import pixel_versions
from zarrchive.units import OME_LENGTH

LOCAL = fsspec.filesystem("file")

def merge_metadata(
    source: SourceMetadata, entry: FileEntry | None, n_channels: int, shown_as: str
) -> tuple[dict[str, float | None], str | None, list[str], int | None, list[str]]:
    """Combine file and submission metadata: the submission wins; disagreements become notes.

    Returns pixel sizes (z, y, x), their unit, channel names (one per channel),
    the number of names the submission gave (None if it gave none), and notes.
    """
    notes: list[str] = []
    sizes = dict(source.pixel_size)
    unit = source.unit
    given: PixelSize | None = entry.pixel_size if entry else None
    if given is not None:
        for ax in "zyx":
            value = getattr(given, ax)
            if value is None:
                continue
            file_value = sizes.get(ax)
            if file_value is not None and unit is not None:
                in_um = file_value * MICROMETERS[unit]
                given_um = value * MICROMETERS[given.unit]
                if not math.isclose(in_um, given_um, rel_tol=1e-6):
                    notes.append(f"{shown_as}: pixel_size.{ax}: the file says {file_value} {unit}, "
                                 f"submission.yaml says {value} {given.unit}; using submission.yaml")
        if unit and unit != given.unit:  # bring the file's own values into the submission's unit
            sizes = {ax: (v * MICROMETERS[unit] / MICROMETERS[given.unit] if v is not None else None)
                     for ax, v in sizes.items()}
        unit = given.unit
        for ax in "zyx":
            if getattr(given, ax) is not None:
                sizes[ax] = getattr(given, ax)
    names_given = entry.channel_names if entry else None
    if names_given is not None and len(names_given) == n_channels:
        if source.channel_names and list(source.channel_names) != list(names_given):
            notes.append(f"{shown_as}: channel_names: the file says {source.channel_names}, "
                         f"submission.yaml says {names_given}; using submission.yaml")
        names = list(names_given)
    elif source.channel_names and len(source.channel_names) == n_channels:
        names = list(source.channel_names)
    else:
        names = [f"C{i}" for i in range(n_channels)]
    return sizes, unit, names, (len(names_given) if names_given is not None else None), notes


# ---------------------------------------------------------------- identity


def conversion_id(source_sha256: str, series: int, settings: ConvertSettings, entry: FileEntry | None) -> str:
    """Deterministic identity of one conversion: input bytes, series, settings, metadata given, software."""
    payload = {
        "source": source_sha256, "series": series, "settings": settings.identity(),
        "entry": entry.model_dump(mode="json") if entry else None, "software": pixel_versions(),
    }
    return json_sha256(payload)[:20]


# ---------------------------------------------------------------- conversion


def chunk_shape(axes: list[str], shape: tuple[int, ...], dtype: str, settings: ConvertSettings) -> tuple[int, ...]:
    """One plane tile per chunk: 1 along t and c, ``chunk_z`` along z (when the image has z), ``chunk_xy`` along y
    and x — for ``auto``, the largest power of two (64 to 4096) whose chunk holds at most ``chunk_bytes``."""
    depth = settings.chunk_z if "z" in axes else 1
    xy = settings.chunk_xy
    if xy == "auto":
        pixels = settings.chunk_bytes / (np.dtype(dtype).itemsize * depth)
        xy = int(min(4096, max(64, 2 ** int(np.floor(np.log2(np.sqrt(pixels)))))))
    edge = {"t": 1, "c": 1, "z": settings.chunk_z, "y": xy, "x": xy}
    return tuple(max(1, min(edge[a], n)) for a, n in zip(axes, shape))


def companions(files: list[FileRecord]) -> Callable[[FileRecord], dict[str, str]]:
    """For each file, the sha256 of the staged files in its folder (itself included): the members a multi-file
    OME-TIFF set may have (they are part of its conversion's identity). One mapping per folder, shared by its
    files: a folder of 10,000 fields costs one mapping of 10,000, not 10,000 of them."""
    folders: dict[str, dict[str, str]] = {}
    for f in files:
        folders.setdefault(posixpath.dirname(f.path), {})[f.path] = f.sha256
    return lambda file: folders.get(posixpath.dirname(file.path), {})


def convert_file(
    file: FileRecord, entry: FileEntry | None, work: str, settings: ConvertSettings,
    companions: dict[str, str] | None = None,
) -> list[ImageRecord]:
    """Every image of a staged file (``describe_file``); a plate's field is one image, placed at its well."""
    images = describe_file(file, entry, work, settings, companions)
    if not images or file.kind != "image":
        return images
    declared = entry.well if entry else None
    if declared and len(images) == 1:
        return [images[0].model_copy(update={"well": declared})]
    if declared and not (images[0].source_set and any(i.well for i in images)):
        raise InputError(file.path, f"is field {declared.field} of well {declared.row}{declared.column} of plate "
                                    f"{declared.plate}, and a field is one image, but it "
                                    + (f"gives the {len(images)} images of the OME-TIFF set of "
                                       f"{listing(list(images[0].source_set))} (their OME-XML names no plate): "
                                       "submit the set without a plate, or files that hold their own images"
                                       if images[0].source_set else
                                       f"holds {len(images)} series: list each field as a file of its own"))
    return images


def describe_file(
    file: FileRecord, entry: FileEntry | None, work: str, settings: ConvertSettings,
    companions: dict[str, str] | None = None,
) -> list[ImageRecord]:
    """Describe every image of a staged file (metadata, level 0, source layout), as its format finds them
    (``zarrchive.formats``) merged with what the submission says; keep its OME-XML under
    ``<work>/convert/<conversion id>.ome.xml``. ``companions``: the sha256 of the staged files of its folder
    (itself included), the members a multi-file OME-TIFF set may have. A file whose planes belong to the image of
    another file of its set gives none."""
    with formats.Opened(file, settings.limits, companions) as opened:
        found = formats.identify(file.staged_path, file.path, opened).images(opened)
        images = []
        for image in found:
            with formats.describing(image.shown_as):
                images.append(_image_record(file, entry, work, settings, image))
    if file.kind == "label":
        return [as_label(image, entry, found[0].count) for image in images]
    return images


def _image_record(file: FileRecord, entry: FileEntry | None, work: str, settings: ConvertSettings,
                  found: formats.Found) -> ImageRecord:
    """The image record of one image a format found: its metadata merged with the submission's, its axes in
    OME-NGFF order (singleton t and z dropped), level 0, and its OME-XML (and other original metadata) kept in
    the work area under its conversion id. A whole-slide file's images are named by their ``role`` (the slide:
    the file's id; ``<id>_label``, ``<id>_macro``…), other files' by number."""
    shown_as = series_label(file.path, found.index, found.count)
    source = found.metadata
    t, c, z, _y, _x = found.tczyx
    sizes, unit, names, names_given, merge_notes = merge_metadata(source, entry, c, shown_as)
    keep = [t > 1, True, z > 1, True, True]
    axis_names = tuple(a for a, k in zip("tczyx", keep) if k)
    axes, scale = [], []
    for name in axis_names:
        if name == "t":
            axes.append(Axis(name="t", type="time", unit=source.time_unit if source.time_increment else None))
            scale.append(float(source.time_increment or 1.0))
        elif name == "c":
            axes.append(Axis(name="c", type="channel"))
            scale.append(1.0)
        else:
            value = sizes.get(name)
            axes.append(Axis(name=name, type="space", unit=unit if value is not None else None))
            scale.append(float(value) if value is not None else 1.0)

    cid = conversion_id(found.digest or file.sha256, found.index, settings, entry)
    shape = tuple(n for n, k in zip(found.tczyx, keep) if k)
    xml = found.own_xml or generated_xml(found, shape, axis_names, names, sizes, unit)
    xml_path = f"{work.rstrip('/')}/convert/{cid}.ome.xml"
    os.makedirs(os.path.dirname(xml_path), exist_ok=True)
    write_bytes_atomic(LOCAL, xml_path, xml)
    kept = []
    for name, content in sorted(found.documents.items()):
        kept_path = f"{work.rstrip('/')}/convert/{cid}.{name.replace('/', '.')}"
        write_bytes_atomic(LOCAL, kept_path, content)
        kept.append((name, kept_path))
    base_id, role = slug(file.path), found.role
    return ImageRecord(
        image_id=(base_id if found.count == 1 or role == "" else f"{base_id}_{role}" if role
                  else f"{base_id}_s{found.index}"),
        conversion_id=cid, source_path=file.path, source_sha256=file.sha256, source_set=found.source_set,
        series=found.index, series_name=found.name, series_count=found.count, reader=found.reader,
        layout=found.layout(axis_names), metadata_xml=xml_path, metadata_sha256=hashlib.sha256(xml).hexdigest(),
        documents=tuple(kept), axes=tuple(axes), dtype=found.dtype, channel_names=tuple(names),
        channel_names_given=names_given,
        channel_colours=tuple(source.channel_colours) if source.channel_colours and len(source.channel_colours) == c
        else None,
        channel_windows=tuple(source.channel_windows) if source.channel_windows and len(source.channel_windows) == c
        else None,
        calibrated=any(v is not None for v in sizes.values()),
        levels=(Level(path="0", shape=shape, chunks=chunk_shape(list(axis_names), shape, found.dtype, settings),
                      scale=tuple(scale), translation=tuple(0.0 for _ in scale)),),
        notes=tuple(merge_notes) + found.notes, lossy_source=found.lossy,
        well=found.well if file.kind == "image" else None,
    )


def as_label(image: ImageRecord, entry: FileEntry | None, n_series: int) -> ImageRecord:
    """A converted series as a label image: one channel of integer (or bool) labels, the channel axis dropped,
    annotating the image of ``entry.label_of`` (its series of the same index when the label file has several).

    A bool mask is stored as uint8 (0 and 1): OME-NGFF labels are integers.
    Raises ``InputError`` naming the file when it is not a label image.
    """
    shown_as = image.shown_as
    if entry is None or entry.label_of is None:
        raise InputError(shown_as, "a label file names the image it annotates (label_of)")
    axes = image.axis_names
    channels = image.shape[axes.index("c")]
    if channels != 1:
        raise InputError(shown_as, f"a label image has one channel of label values; this one has {channels}")
    dtype = np.dtype(image.dtype)
    if dtype.kind not in "uib":
        raise InputError(shown_as, f"a label image holds integer label values; this one holds {dtype} pixels")
    keep = [i for i, name in enumerate(axes) if name != "c"]

    def drop_c(values: tuple) -> tuple:
        return tuple(values[i] for i in keep)

    stored = "uint8" if dtype == np.bool_ else str(dtype)
    level0 = image.levels[0]
    annotates = slug(entry.label_of) + (f"_s{image.series}" if n_series > 1 else "")
    return image.model_copy(update={
        "kind": "label", "label_of": annotates, "label_name": entry.label, "dtype": stored,
        "axes": drop_c(image.axes), "channel_names": (entry.label,), "channel_names_given": None,
        "layout": image.layout.model_copy(update={"axes": drop_c(image.layout.axes),
                                                  "dtype": stored if stored != image.dtype else None}),
        "levels": (Level(path="0", shape=drop_c(level0.shape), chunks=drop_c(level0.chunks),
                         scale=drop_c(level0.scale), translation=drop_c(level0.translation), downsampling="mode"),),
    })


def generated_xml(found: formats.Found, shape: tuple[int, ...], axes: tuple[str, ...], channels: list[str],
                  sizes: dict[str, float | None], unit: str | None) -> bytes:
    """The OME-XML kept beside an image whose file has none of its own: generated from what was read, with the
    file's own description kept as an annotation (``zarrchive.omexml``)."""
    from zarrchive.omexml import Generated, document

    dims = dict(zip(axes, shape))
    ome_type = {"bool": "bit", "float16": "float", "float32": "float", "float64": "double"}.get(
        str(np.dtype(found.dtype)), str(np.dtype(found.dtype)))
    physical = {ax: (sizes[ax], OME_LENGTH[unit]) for ax in "xyz" if sizes.get(ax) is not None and unit in OME_LENGTH}
    return document(Generated(
        creator=f"zarrchive {__version__} (generated from {found.reader})", name=found.name, pixel_type=ome_type,
        size={"x": dims["x"], "y": dims["y"], "z": dims.get("z", 1), "c": dims["c"], "t": dims.get("t", 1)},
        channels=list(channels), physical=physical, time_increment=found.metadata.time_increment or None,
        description=found.description or None))


@stage_task(name="convert", task_run_name="convert: {file.path}", cache_key_fn=convert_key,
            persist_result=True)
def convert(
    file: FileRecord, entry: FileEntry | None, work: str, settings: ConvertSettings,
    companions: dict[str, str] | None = None,
) -> Traced[list[ImageRecord]]:
    from prefect.utilities.timeout import timeout

    faults.point("convert.start")
    try:
        with timeout(settings.timeout_seconds):
            result = traced("convert", convert_file, file, entry, work, settings, companions)
    except TimeoutError:
        raise _too_long(file, settings) from None
    _log_converted(file, result.output)
    return result


def _too_long(file: FileRecord, settings: ConvertSettings) -> StageTimeout:
    return StageTimeout(file.path, f"reading its headers took longer than convert.timeout_seconds "
                                   f"({settings.timeout_seconds:.0f} s): refused")


def _log_converted(file: FileRecord, images: list[ImageRecord]) -> None:
    log = runlog.logger()
    if not images:
        log.info("convert %s: its planes belong to the image of another file of its set", file.path)
    for image in images:
        calibration = ", ".join(f"{a.name} {s:g} {a.unit}" for a, s in zip(image.axes, image.levels[0].scale)
                                if a.unit) or "no physical size"
        log.info("convert %s: %s, %s %s, %s (%s), channels %s", file.path, image.image_id, " × ".join(
            f"{a.name}={n}" for a, n in zip(image.axes, image.shape)), image.dtype, calibration, image.reader,
            ", ".join(image.channel_names))


@stage_task(name="convert", task_run_name="convert: {name}",
            cache_policy="none")  # (its inputs can be large; its items are small: redone on a rerun)
def convert_batch(items: list[tuple[FileRecord, FileEntry | None, dict[str, str]]], work: str,
                  settings: ConvertSettings, name: str,
                  scheduler: str | None = None) -> list[Traced[list[ImageRecord]] | batch.ItemFailed]:
    """``convert`` for many small files (file, entry, companions) in one task run (``zarrchive.batch``). With a
    ``scheduler``, the files are described on a worker of the run's cluster, in one Dask task
    (``describe_files``): the headers of a small file are most of its conversion, and the process running the
    flow would otherwise read them one file after another under its one lock while the workers wait for the
    compress stage. Each file keeps its log lines, its lineage (timed where it was described) and fails alone;
    when the cluster cannot do the batch (a worker lost, past its time), it is done here, as without one."""
    described = _on_cluster(items, work, settings, scheduler) if scheduler else None

    def one(i: int, file: FileRecord, entry: FileEntry | None, companions: dict[str, str]):
        if described is None:
            return convert.__wrapped__(file, entry, work, settings, companions)
        faults.point("convert.start")  # (in the flow's process, for each file, as convert)
        done = described[i]
        for said in done.said:
            runlog.logger().warning("%s", said)
        if done.error is not None:
            return batch.ItemFailed(error=done.error)
        result = trace("convert", done.images, done.started, file, entry, work, settings, companions,
                       ended=done.ended, host=done.host)
        _log_converted(file, done.images)
        return result

    return batch.run("convert", [(i, *item) for i, item in enumerate(items)], one, lambda item: item[1].path)


class Described(NamedTuple):
    """What a worker made of one file of a batch: its images, or the error it failed with (as a batch names it),
    when and where, and the warnings its description logged (for the run's log, which the worker has not)."""

    images: list[ImageRecord] | None
    error: str | None
    started: dt.datetime
    ended: dt.datetime
    host: str
    said: tuple[str, ...] = ()


class _Said(logging.Handler):
    """The warnings zarrchive's logger gets from this thread while a file is described."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread, self.lines = threading.get_ident(), []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.lines.append(record.getMessage())


@contextlib.contextmanager
def _within(seconds: float) -> Iterator[None]:
    """Raise ``TimeoutError`` in this thread once it has spent ``seconds`` in the block, at its next Python
    instruction (as Prefect's ``timeout`` does in a thread; a worker does without Prefect). A read blocked in the
    kernel or in a library's C code is not interrupted."""
    import ctypes

    thread, lock, inside = threading.get_ident(), threading.Lock(), [True]

    def expire() -> None:
        with lock:
            if inside[0]:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(TimeoutError))

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            inside[0] = False
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), None)  # (one raised too late: dropped)
        timer.cancel()


def describe_files(items: list[tuple[FileRecord, FileEntry | None, dict[str, str]]], work: str,
                   settings: ConvertSettings) -> list[Described]:
    """Run on a Dask worker: ``convert_file`` for each item, one after another, each within
    ``convert.timeout_seconds``; a file that fails is its error (as ``convert`` would raise it in the flow), and
    the others go on."""
    host, done, said = socket.gethostname(), [], _Said()
    log = logging.getLogger("zarrchive")
    log.addHandler(said)
    try:
        for file, entry, companions in items:
            started = dt.datetime.now(dt.timezone.utc)
            try:
                try:
                    with _within(settings.timeout_seconds):
                        images, error = convert_file(file, entry, work, settings, companions), None
                except TimeoutError:
                    raise _too_long(file, settings) from None
            except Exception as exc:  # this file fails alone
                images, error = None, f"{type(exc).__name__}: {exc}"
            done.append(Described(images, error, started, dt.datetime.now(dt.timezone.utc), host, tuple(said.lines)))
            said.lines.clear()
    finally:
        log.removeHandler(said)
    return done


def _describe_sealed(items: Any, work: str, settings: ConvertSettings) -> list[Described]:
    """``describe_files`` of a batch handed over sealed (``cluster.Sealed``)."""
    return describe_files(items.value, work, settings)


def _on_cluster(items: list[tuple[FileRecord, FileEntry | None, dict[str, str]]], work: str,
                settings: ConvertSettings, scheduler: str) -> list[Described] | None:
    """``describe_files`` for the batch on the cluster; None when it could not be done there (a worker lost, the
    cluster gone, longer than ``convert.timeout_seconds`` for each of its files): the batch is then done here."""
    from zarrchive.cluster import Sealed, client_for

    log = runlog.logger()
    try:
        with client_for(scheduler) as client:
            future = client.submit(_describe_sealed, Sealed(items), work, settings, pure=False)
            try:
                return future.result(timeout=settings.timeout_seconds * len(items))
            except BaseException:
                future.cancel()
                raise
    except Exception as exc:  # the files are described here instead, each within its own time
        log.warning("convert: the cluster could not describe these %d files (%s: %s); describing them here",
                    len(items), type(exc).__name__, exc)
        return None


def probe_file(path: str, rel: str, entry: FileEntry, settings: ConvertSettings) -> str | None:
    """Why the ingest would fail to convert the local file ``path`` (submitted as ``rel``), or None: empty, not an
    image, a format no installed reader has, over the image budget, unreadable headers, or pixels the file
    declares but does not hold (truncated). Reads headers and the last plane's first tile, nothing more;
    ``zarrchive validate`` runs it on every listed image and label."""
    import tempfile

    if os.path.isfile(path) and os.path.getsize(path) == 0:
        return "empty (0 bytes): not an image"
    record = FileRecord(path=rel, source_uri=path, staged_path=path, size=os.path.getsize(path) if os.path.isfile(
        path) else 0, sha256="0" * 64, kind=entry.kind if entry.kind != "attachment" else "image")
    try:
        with tempfile.TemporaryDirectory(prefix="zarrchive-probe-") as work:
            images = convert_file(record, entry, work, settings)
            for image in images:
                _probe_pixels(path, image)
    except InputError as exc:
        return exc.reason
    except Exception as exc:  # what convert would report as the file's failure
        return f"cannot be read: {type(exc).__name__}: {exc}"
    return None


def _probe_pixels(path: str, image: ImageRecord) -> None:
    """The pixels the image declares are in the file: every TIFF page's strips or tiles lie inside it; for other
    formats, the first tile of the last plane can be read."""
    from zarrchive.pixels.sources import read_region

    shown_as = image.shown_as
    if getattr(formats.by_name(image.reader), "checks_pages", False):
        return  # convert checked that every page of the series is there and inside the file
    level = image.levels[0]
    region = tuple(slice(n - 1, n) if a.name in "tcz" else slice(0, min(c, n))
                   for a, n, c in zip(image.axes, level.shape, level.chunks))
    try:
        read_region(path, image.layout, region)
    except Exception as exc:
        raise InputError(shown_as, f"its last plane cannot be read (truncated or damaged): "
                                   f"{type(exc).__name__}: {exc}") from exc
