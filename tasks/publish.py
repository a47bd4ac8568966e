"""Publish: copy a version into ``<archive>/<accession>/v<N>/``, verify it, and commit it with its manifest.

Layout of a version: ``images/<image-id>.ome.zarr`` (its label images nested
under ``labels/<name>/``, listed by ``labels/zarr.json``), ``originals/<submitted path>``,
``qc/report.json``, ``ro-crate-metadata.json`` and ``manifest.json``. An image or
original that did not change since the latest public version is not stored again:
the manifest lists it at that version's path (``../v1/images/<id>.ome.zarr/…``;
``zarrchive.archive.sharing``). Every object uploaded is re-read and its sha256 compared: a store's object copied
onto a local disk by the kernel, or an original copied so or hard-linked from the run's staging folder, is read back
before it is moved into place and compared with the digest compress or fetch took; every other object once all are
uploaded. Large objects are
copied ``publish.threads`` at a time. ``manifest.json`` is
written last: it is the commit point, so a version folder without one was never
published (a crashed attempt) and is replaced by the next attempt.
``versions.json`` is an index rebuilt from the manifests.
"""

from __future__ import annotations

import datetime as dt
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

from zarrchive import faults, runlog
from zarrchive.archive import fixity, lease, sharing
from zarrchive.archive.changes import record_change
from zarrchive.archive.documents import Manifest, QCDocument
from zarrchive.archive.identity import json_sha256
from zarrchive.archive.landing import render_landing_page, render_qc_page
from zarrchive.archive.lineage import Traced, build_crate, stage_task, traced
from zarrchive.archive.storage import (
    SMALL_COPY,
    copy_as_stored,
    copy_hashing,
    dumps,
    join,
    resolve,
    sha256_stream,
    to_url,
    tree_digest,
    walk_files,
    write_bytes_atomic,
    write_bytes_exclusive,
)
from zarrchive.archive.thumbnails import thumbnail_png
from zarrchive.archive.versions import (
    CRATE, LANDING, MANIFEST, MANIFEST_FORMAT, QC_PAGE, QC_REPORT, VERSIONS, image_store, is_shared, original_path,
    published_versions, shared_from, version_index, withdrawals,
)
from zarrchive.config import PublishSettings, Settings
from zarrchive.errors import TransientError
from zarrchive.ngff import labels_group_documents, store_ngff_version
from zarrchive.plates import plate_documents, plate_store, renumber_fields
from zarrchive.records import (
    CompressionReport,
    Failure,
    FileRecord,
    ImageOutcome,
    ImageRecord,
    LineageRecord,
    ManifestEntry,
    Publication,
    QCReport,
    Submission,
    slug,
    status_of,
)
from zarrchive.runtime import retry_transient
from zarrchive.software import pixel_versions

# ---------------------------------------------------------------- reading what is published


def version_fingerprint(submission: Submission, files: list[FileRecord], settings: Settings) -> str:
    """What a version is made of: submission metadata, file bytes, pixel settings, pixel software."""
    payload = {
        "doc": submission.doc.model_dump(mode="json"),
        "files": sorted((f.path, f.sha256) for f in files),
        "settings": {k: getattr(settings, k).identity()
                     for k in ("convert", "pyramid", "compress", "qc", "publish")},
        "software": pixel_versions(),
    }
    return json_sha256(payload)


def find_unchanged(archive: str, accession: str, fingerprint: str,
                   private: str | None = None) -> dict[str, Any] | None:
    """The manifest of the latest version not withdrawn (public, or embargoed at ``private``) when it was made from
    exactly this input; else None."""
    return latest_unchanged(published_versions(archive, accession, private), withdrawals(archive, accession),
                            fingerprint)


def latest_unchanged(found: list[dict[str, Any]], withdrawn: dict[int, Any],
                     fingerprint: str) -> dict[str, Any] | None:
    """Of the manifests ``found``, the latest not withdrawn when it was made from this input (``fingerprint``)."""
    current = [m for m in found if m["version"] not in withdrawn]
    return current[-1] if current and current[-1].get("fingerprint") == fingerprint else None


def check_unchanged(submission: Submission, archive: str, fingerprint: str,
                    settings: PublishSettings | None = None, private: str | None = None) -> Publication | None:
    """What a rerun of an unchanged submission reports: ``unchanged`` when its latest version was made from exactly
    this input and one listing of it matches its manifest, ``damaged`` (naming the objects) when it does not; None
    when the input changed (a new version is due). Reads only the archive's listing and manifests."""
    manifest = find_unchanged(archive, submission.accession, fingerprint, private)
    if manifest is None:
        return None
    location = private if manifest.get("embargoed") else archive
    fs, root = resolve(location)
    vdir = join(root, submission.accession, f"v{manifest['version']}")
    if problems := fixity.quick_problems(fs, vdir, manifest):
        return damaged_publication(submission, location, manifest, [p.line() for p in problems], settings)
    return unchanged_publication(submission, location, manifest, settings=settings)


def version_url(archive: str, accession: str, number: int, settings: PublishSettings | None,
                embargoed: bool = False) -> tuple[str, str]:
    """A version's location in the archive, and the address of its landing page (under ``public_base_url`` when
    set and the version is public; an embargoed version has no public address yet)."""
    fs, root = resolve(archive)
    location = to_url(fs, join(root, accession, f"v{number}"))
    base = settings.public_base_url if settings and not embargoed else None
    return location, f"{base.rstrip('/')}/{accession}/v{number}/index.html" if base else f"{location}/index.html"


# ---------------------------------------------------------------- deciding what to publish


def image_outcomes(images: list[ImageRecord], failures: list[Failure], qc_report: QCReport | None,
                   settings: PublishSettings) -> list[ImageOutcome]:
    """The fate of every image and failed file: failed, blocked by QC errors, or to be published."""
    outcomes = [ImageOutcome(image_id=f.image_id or slug(f.source_path), source_path=f.source_path, series=f.series,
                             status="failed", error=f"{f.stage}: {f.error}", label_of=f.label_of) for f in failures]
    failed = {o.image_id for o in outcomes}
    findings = qc_report.by_image() if qc_report else {}
    for image in (i for i in images if i.image_id not in failed):  # a later stage may have failed it
        qc = status_of(findings.get(image.image_id, [])) if qc_report else "not run"
        errors = [x.message for x in findings.get(image.image_id, []) if x.severity == "error"]
        outcomes.append(ImageOutcome(image_id=image.image_id, source_path=image.source_path, series=image.series,
                                     status="blocked" if errors else "published", qc=qc,
                                     error="; ".join(f"qc: {m}" for m in errors) or None,
                                     label_of=image.label_of, label_name=image.label_name, well=image.well))
    outcomes = _labels_follow_their_images(outcomes)
    if settings.on_image_error == "block_submission" and any(o.status != "published" for o in outcomes):
        outcomes = [o.model_copy(update={"status": "blocked"}) if o.status == "published" else o for o in outcomes]
    return _with_label_names(outcomes)


def _labels_follow_their_images(outcomes: list[ImageOutcome]) -> list[ImageOutcome]:
    """A label is published only with its image: when the image failed, so does the label; when the image is
    blocked, so is the label."""
    status = {o.image_id: o.status for o in outcomes if not o.label_of}
    out = []
    for o in outcomes:
        image = status.get(o.label_of or "")
        if o.label_of and o.status == "published" and image != "published":
            fate = "blocked" if image == "blocked" else "failed"
            o = o.model_copy(update={"status": fate, "error": f"the image it annotates ({o.label_of}) "
                                                            f"{'is blocked' if fate == 'blocked' else 'failed'}"})
        out.append(o)
    return out


def _with_label_names(outcomes: list[ImageOutcome]) -> list[ImageOutcome]:
    """Each published image's outcome names its published labels."""
    names: dict[str, list[str]] = {}
    for o in outcomes:
        if o.label_of and o.status == "published":
            names.setdefault(o.label_of, []).append(o.label_name or o.image_id)
    return [o.model_copy(update={"labels": sorted(names[o.image_id])}) if o.image_id in names and not o.label_of
            else o for o in outcomes]


def store_path(outcome: ImageOutcome, stores: dict[str, str] | None = None) -> str:
    """Where an image's store is, relative to the version: ``images/<id>.ome.zarr`` (a plate's field:
    ``plates/<plate>.ome.zarr/<row>/<column>/<field>``; or the earlier version's store it shares, from
    ``stores``), a label's under its image's ``labels/<name>``."""
    stores = stores or {}
    if outcome.label_of:
        image = stores.get(outcome.label_of, image_store(outcome.label_of))
        return f"{image}/labels/{outcome.label_name}"
    if outcome.well and outcome.image_id not in stores:
        return f"{plate_store(outcome.well.plate)}/{outcome.well.path}"
    return stores.get(outcome.image_id, image_store(outcome.image_id))


def blocking_reasons(outcomes: list[ImageOutcome], qc_report: QCReport | None) -> list[str]:
    """Why nothing can be published (empty when something can)."""
    if any(o.status == "published" for o in outcomes):
        return []
    reasons = [f"{o.source_path}: {o.error}" for o in outcomes if o.error]
    if qc_report:
        reasons += [f"qc: {f.message}" for f in qc_report.errors if f.image_id is None]
    if any(o.status == "blocked" and not o.error for o in outcomes):
        reasons.append("publish.on_image_error is block_submission: one failed image blocks the whole version")
    return reasons or ["the submission lists no image that could be converted"]


def not_published(submission: Submission, archive: str, outcomes: list[ImageOutcome], reasons: list[str],
                  status: str = "blocked") -> Publication:
    fs, root = resolve(archive)
    return Publication(accession=submission.accession, status=status, archive=to_url(fs, root), images=outcomes,
                       reasons=reasons, submission=submission.source, created_archive=submission.created_archive)


# ---------------------------------------------------------------- writing a version


def _upload(fs: fsspec.AbstractFileSystem, src: str, dst: str, checked: bool, link: bool = False
            ) -> tuple[ManifestEntry, bool]:
    """Copy ``src`` into the version: its entry, and whether it was read back as stored. A ``checked`` copy (its
    digest is compared with one known before) onto a local disk is hard-linked (``link``, on the same filesystem)
    or made by the kernel, and read back; others are hashed as read, and read back by ``_verify_stored``."""
    if checked:
        size, sha256, read_back = copy_as_stored(src, fs, dst, link=link)
    else:
        (size, sha256), read_back = copy_hashing(fsspec.filesystem("file"), src, fs, dst), False
    return ManifestEntry(path=dst, size=size, sha256=sha256), read_back


def _done(copy: Future | tuple[ManifestEntry, bool]) -> tuple[ManifestEntry, bool]:
    return copy.result() if isinstance(copy, Future) else copy


class _Copier:
    """Copies into a version, each entry in the order asked: ``threads`` at a time (an object store's round trips;
    hashing and the kernel's copying release the GIL), but small files onto a local disk one after another in this
    thread (``storage.SMALL_COPY``). The publishing lease is checked in this thread before each copy is begun, and
    at most ``2 * threads`` are begun ahead of the one waited for (a lease lost stops those not yet begun; the ones
    under way end before ``close`` returns). ``read_back`` holds the copies read back as stored
    (``storage.copy_as_stored``), not read again."""

    def __init__(self, fs: fsspec.AbstractFileSystem, held: lease.Lease, threads: int) -> None:
        self.fs, self.held, self.threads = fs, held, threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="publish")
        self.read_back: set[str] = set()
        self.local = isinstance(fs, LocalFileSystem)

    def copy(self, pairs: Iterable[tuple[str, str]], checked: bool = True, link: bool = False
             ) -> list[ManifestEntry]:
        """Each local ``src`` copied to ``dst`` in the version; their entries, in order. ``checked``: the caller
        compares each digest with one it knew before (else it is compared with the source's when read back).
        ``link``: checked copies are hard links where they can be."""
        copies = []
        pending: deque = deque()  # copies begun in threads, and entries made here, in order
        for src, dst in pairs:
            self.held.check()
            if self.local and os.stat(src).st_size < SMALL_COPY:  # (storage.SMALL_COPY: one after another)
                pending.append(_upload(self.fs, src, dst, checked, link))
            else:
                pending.append(self.pool.submit(_upload, self.fs, src, dst, checked, link))
            while len(pending) > 2 * self.threads or pending and not isinstance(pending[0], Future):
                copies.append(_done(pending.popleft()))
        copies += [_done(copy) for copy in pending]
        self.read_back.update(entry.path for entry, read_back in copies if read_back)
        return [entry for entry, _read_back in copies]

    def close(self) -> None:
        """Wait for the copies begun (a failed one leaves others running) and begin no more."""
        self.pool.shutdown(wait=True, cancel_futures=True)


def _put_bytes(fs: fsspec.AbstractFileSystem, dst: str, data: bytes) -> ManifestEntry:
    return ManifestEntry(path=dst, size=len(data), sha256=write_bytes_atomic(fs, dst, data))


def publish_version(
    submission: Submission,
    archive: str,
    fingerprint: str,
    files: list[FileRecord],
    reports: list[CompressionReport],
    outcomes: list[ImageOutcome],
    qc_report: QCReport,
    lineage: list[LineageRecord],
    settings: PublishSettings | None = None,
    private: str | None = None,
    link_originals: bool = False,
) -> Publication:
    """Upload, verify and commit a new version under the accession's publishing lease; return what was published.
    ``link_originals``: the staged originals are the run's own, removed when it ends (staging.keep false), so
    onto their filesystem they become the version's files as hard links instead of copies.

    A version whose release date is still to come is written to the ``private`` location and appears nowhere
    public until it is released (``tasks.release``); without a private location it is not published.

    Of two runs publishing one accession, one holds the lease and the other waits for it
    (``publish.lease_wait_seconds``), then finds the version it would publish already there (``unchanged``), or
    gives up (``busy``). A committed version is never removed or rewritten: its manifest is created exclusively,
    and only a version folder without one (an interrupted attempt) is cleared, under the lease."""
    settings = settings or PublishSettings(on_image_error="block_submission")
    if submission.embargoed and not private:
        return not_published(submission, archive, outcomes, [
            f"released on {submission.doc.release_date}: an embargoed version needs a private location that is not "
            "served publicly (archive.private), and this object-store archive names none"], status="blocked")
    target = private if submission.embargoed else archive
    try:
        held = lease.acquire(archive, submission.accession, settings.lease_seconds, settings.lease_wait_seconds)
    except lease.LeaseBusy as exc:
        return not_published(submission, archive, outcomes, [str(exc)], status="busy")
    try:
        found = published_versions(archive, submission.accession, private)
        withdrawn = withdrawals(archive, submission.accession)  # (their objects may be taken away one day)
        if latest := latest_unchanged(found, withdrawn, fingerprint):
            return unchanged_publication(submission, private if latest.get("embargoed") else archive, latest,
                                         outcomes, settings)
        previous = found[-1]["version"] if found else None
        public = [m for m in found if not m.get("embargoed") and m["version"] not in withdrawn]
        share_from = public[-1] if public and not submission.embargoed else None
        if share_from and withdrawn:  # nor what it shares from one (a withdrawn version's objects may go one day)
            share_from = {**share_from, "files": [f for f in share_from["files"]
                                                   if shared_from(f["path"]) not in withdrawn]}
        try:
            return _write_version(submission, target, (previous or 0) + 1, previous, fingerprint, files, reports,
                                  outcomes, qc_report, lineage, held, settings, share_from, link_originals)
        except Exception:
            _clear_interrupted_quietly(target, submission.accession, (previous or 0) + 1)
            raise
    finally:
        held.release()


def _clear_interrupted_quietly(archive: str, accession: str, number: int) -> None:
    """After a failed attempt (the lease still held), remove what it uploaded of its uncommitted version; what
    cannot be removed now (the store is down) is removed by the next attempt."""
    try:
        fs, root = resolve(archive)
        _clear_interrupted(fs, join(root, accession, f"v{number}"))
    except Exception:
        pass


def _write_version(submission: Submission, archive: str, number: int, previous: int | None, fingerprint: str,
                   files: list[FileRecord], reports: list[CompressionReport], outcomes: list[ImageOutcome],
                   qc_report: QCReport, lineage: list[LineageRecord], held: lease.Lease,
                   settings: PublishSettings, share_from: dict[str, Any] | None = None,
                   link_originals: bool = False) -> Publication:
    """Write version ``number`` (the lease held), sharing what did not change since the version ``share_from``
    (a manifest of the same location), verify every object it stored, then commit its manifest."""
    fs, root = resolve(archive)
    acc = join(root, submission.accession)
    vdir = join(acc, f"v{number}")
    faults.point("publish.start")
    _clear_interrupted(fs, vdir)
    outcomes = renumber_fields(outcomes)
    publishable = {o.image_id: o for o in outcomes if o.status == "published"}
    reports = [r for r in reports if r.image_id in publishable]
    share = sharing.shareable(fs, acc, share_from)
    copier = _Copier(fs, held, settings.threads)
    try:
        entries, shared, published_paths, documents, stores = _upload_images(copier, vdir, reports, publishable, share)
        faults.point("publish.images")
        uploaded, kept, originals, original_paths = _upload_originals(copier, vdir, files, share, link_originals)
        faults.point("publish.originals")
        entries += uploaded
        shared += kept
        published_paths.update(originals)
        pages, kept = _upload_pages(copier, vdir, submission, number, previous, outcomes, qc_report, reports, files,
                                    lineage, settings, stores, original_paths, share)
        entries += pages
        shared += kept
        relative = [ManifestEntry(path=e.path[len(vdir) + 1:], size=e.size, sha256=e.sha256) for e in entries] + shared
        crate = build_crate(submission, number, lineage, relative, published_paths, previous_version=previous,
                            publish_results=(QC_REPORT, QC_PAGE, LANDING,
                                             *(g for g in documents if not is_shared(g)),
                                             *(e.path for e in relative if e.path.startswith("thumbnails/"))),
                            date_published=max(submission.doc.release_date, dt.date.today()))
        entries.append(_put_bytes(fs, join(vdir, CRATE), dumps(crate)))
        relative.append(entries[-1].model_copy(update={"path": CRATE}))
        _verify_stored(copier, entries)  # (what it shares was found whole by one listing of the earlier version)
    finally:
        copier.close()
    stored = {r.image_id: r for r in reports}
    images = [o.model_copy(update={"path": store_path(o, stores), "codec": stored[o.image_id].codec.name,
                                   "bytes": stored[o.image_id].bytes_out})
              if o.status == "published" and o.image_id in stored else
              o.model_copy(update={"path": store_path(o, stores)}) if o.status == "published" else o
              for o in outcomes]
    manifest = {
        "format_version": MANIFEST_FORMAT,
        "accession": submission.accession, "version": number, "previous_version": previous,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(), "fingerprint": fingerprint,
        "title": submission.doc.title, "release_date": submission.doc.release_date.isoformat(),
        "embargoed": submission.embargoed, "submission": submission.source, "study": study_record(submission),
        "images": [o.model_dump() for o in images],
        "files": [e.model_dump() for e in sorted(relative, key=lambda e: e.path)],
    }
    held.check()
    faults.point("publish.commit")
    data = Manifest.model_validate(manifest).to_bytes()
    write_bytes_exclusive(fs, join(vdir, MANIFEST), data)  # the commit point, never overwritten
    faults.point("publish.committed")
    _put_bytes(fs, join(acc, VERSIONS), version_index(archive, submission.accession).to_bytes())
    location, url = version_url(archive, submission.accession, number, settings, submission.embargoed)
    if not submission.embargoed:  # an embargoed version enters the feed when it is released
        record_change(archive, "published", submission.accession, number, fs, join(vdir, MANIFEST), url)
    return Publication(accession=submission.accession, status="published", version=number, archive=to_url(fs, root),
                       submission=submission.source, version_uri=location, url=url, fingerprint=fingerprint,
                       images=images, created_archive=submission.created_archive,
                       embargoed_until=submission.doc.release_date if submission.embargoed else None)


def study_record(submission: Submission) -> dict[str, Any]:
    """What a manifest says about the study, for the archive's index and catalog: the submission's metadata
    without the authors' e-mail addresses."""
    doc = submission.doc
    return {"title": doc.title, "description": doc.description, "license": doc.license,
            "release_date": doc.release_date.isoformat(),
            "authors": [a.model_dump(exclude={"email"}) for a in doc.authors],
            "organism": doc.organism.model_dump() if doc.organism else None,
            "imaging_method": doc.imaging_method.model_dump() if doc.imaging_method else None,
            "doi": doc.publication.doi if doc.publication else None}


def _clear_interrupted(fs: fsspec.AbstractFileSystem, vdir: str) -> None:
    """Remove what an interrupted attempt left of a version that was never committed (no manifest)."""
    if fs.exists(join(vdir, MANIFEST)):
        raise lease.LeaseLost(f"{vdir} was committed by another run while this one held the lease")
    if fs.exists(vdir):
        fs.rm(vdir, recursive=True)


def _upload_images(copier: _Copier, vdir: str, reports: list[CompressionReport],
                   publishable: dict[str, ImageOutcome], share: sharing.Shared
                   ) -> tuple[list[ManifestEntry], list[ManifestEntry], dict[str, str], list[str], dict[str, str]]:
    """Every publishable image with its labels and labels group, stored (each store checked against the tree
    digest compress verified) or, when exactly that tree is in the earlier version, shared with it; the fields
    of a plate in the plate's store, with the plate's and its wells' metadata (a plate is shared as a whole).
    Returns the entries stored, the entries shared, the staged store -> published path of each store, the
    labels groups' and plates' metadata objects, and the path of each image's store."""
    entries: list[ManifestEntry] = []
    shared: list[ManifestEntry] = []
    published_paths: dict[str, str] = {}
    documents: list[str] = []
    stores: dict[str, str] = {}
    staged = {r.image_id: r for r in reports}
    images = [o for o in publishable.values() if not o.label_of and o.image_id in staged]
    labels: dict[str, list[ImageOutcome]] = {}  # (each image's labels, found once: not a scan of all per image)
    for o in publishable.values():
        if o.label_of:
            labels.setdefault(o.label_of, []).append(o)
    trees = {o.image_id: _ImageTree(o, staged, labels.get(o.image_id, [])) for o in images}
    fs, held = copier.fs, copier.held
    for image in (o for o in images if not o.well):
        held.check()
        tree = trees[image.image_id]
        if earlier := share.store(image.image_id, tree.key):
            path, objects = earlier
            shared += [ManifestEntry.model_validate(o) for o in objects]
        else:
            path = image_store(image.image_id)
            entries += tree.upload(copier, join(vdir, path))
        stores[image.image_id] = path
        published_paths.update(tree.published_paths(path))
        documents += tree.documents_at(path)
    plates: dict[str, list[ImageOutcome]] = {}
    for image in (o for o in images if o.well):
        plates.setdefault(image.well.plate, []).append(image)
    for name, fields in sorted(plates.items()):
        held.check()
        group_documents = plate_documents(name, [o.well for o in fields], store_ngff_version(
            staged[fields[0].image_id].store))
        key = sharing.plate_key({o.well.path: trees[o.image_id].key for o in fields}, group_documents)
        if earlier := share.plate(name, key):
            path, objects = earlier
            shared += [ManifestEntry.model_validate(o) for o in objects]
        else:
            path = plate_store(name)
            for field in fields:
                entries += trees[field.image_id].upload(copier, join(vdir, path, field.well.path))
            entries += [_put_bytes(fs, join(vdir, path, rel), dumps(document))
                        for rel, document in group_documents.items()]
        documents += [f"{path}/{rel}" for rel in group_documents]
        for field in fields:
            stores[field.image_id] = f"{path}/{field.well.path}"
            published_paths.update(trees[field.image_id].published_paths(stores[field.image_id]))
            documents += trees[field.image_id].documents_at(stores[field.image_id])
    return entries, shared, published_paths, documents, stores


class _ImageTree:
    """One image's published tree: its staged store, its labels' and its labels group's documents."""

    def __init__(self, image: ImageOutcome, staged: dict[str, CompressionReport], labels: list[ImageOutcome]
                 ) -> None:
        self.report = staged[image.image_id]
        self.labels = [(o.label_name, staged[o.image_id]) for o in labels if o.image_id in staged]
        ngff = store_ngff_version(self.report.store)  # the labels group is in the image's Zarr format
        self.documents = labels_group_documents(image.labels, ngff) if image.labels else {}
        self.key = sharing.staged_key(self.report.store_sha256, {name: r.store_sha256 for name, r in self.labels},
                                      self.documents)

    def upload(self, copier: _Copier, dst: str) -> list[ManifestEntry]:
        entries = _upload_store(copier, self.report, dst)
        for name, report in self.labels:
            entries += _upload_store(copier, report, join(dst, "labels", name))
        return entries + [_put_bytes(copier.fs, join(dst, "labels", name), dumps(document))
                          for name, document in self.documents.items()]

    def published_paths(self, path: str) -> dict[str, str]:
        """Each staged store of the tree -> its published path, when the tree is published at ``path``."""
        return {self.report.store: path + "/", **{r.store: f"{path}/labels/{name}/" for name, r in self.labels}}

    def documents_at(self, path: str) -> list[str]:
        return [f"{path}/labels/{name}" for name in self.documents]


def _upload_store(copier: _Copier, report: CompressionReport, dst: str) -> list[ManifestEntry]:
    """One staged store, object by object, checked against the tree digest compress verified."""
    objects = list(walk_files(report.store))
    uploaded = copier.copy((os.path.join(report.store, rel), join(dst, rel)) for rel in objects)
    if tree_digest((rel, e.sha256) for rel, e in zip(objects, uploaded)) != report.store_sha256:
        raise TransientError(f"{report.image_id}: the staged store changed since it was compressed and verified")
    return uploaded


def _upload_originals(copier: _Copier, vdir: str, files: list[FileRecord], share: sharing.Shared, link: bool = False
                      ) -> tuple[list[ManifestEntry], list[ManifestEntry], dict[str, str], dict[str, str]]:
    """Every submitted file as staged (a Zarr store object by object), checked against the sha256 fetch took, or
    shared with the earlier version that has it with that sha256. With ``link`` (the run's staging folder goes when
    it ends), onto its filesystem the staged copies become the version's files as hard links. Returns the entries
    stored, the entries shared, the staged path -> published path of each, and the published path of each
    submitted path."""
    shared: list[ManifestEntry] = []
    published_paths: dict[str, str] = {}
    paths: dict[str, str] = {}
    copied: list[tuple[FileRecord, list[str] | None]] = []  # each file copied, with a store's objects
    pairs: list[tuple[str, str]] = []
    for file in files:
        rel = original_path(file.path)
        if earlier := share.original(file.path, file.sha256):
            paths[file.path], objects = earlier
            shared += [ManifestEntry.model_validate(o) for o in objects]
            published_paths[file.staged_path] = paths[file.path] + ("/" if os.path.isdir(file.staged_path) else "")
            continue
        paths[file.path] = rel
        if os.path.isdir(file.staged_path):  # a Zarr store submitted as one entry: each object, checked as a tree
            inside = list(walk_files(file.staged_path))
            pairs += [(os.path.join(file.staged_path, obj), join(vdir, rel, obj)) for obj in inside]
            published_paths[file.staged_path] = rel + "/"
            copied.append((file, inside))
        else:
            pairs.append((file.staged_path, join(vdir, rel)))
            published_paths[file.staged_path] = rel
            copied.append((file, None))
    entries = copier.copy(pairs, link=link)  # (files of every size at once: a submission of many small ones is most)
    at = 0
    for file, inside in copied:
        if inside is None:
            digest, at = entries[at].sha256, at + 1
        else:
            digest, at = tree_digest(zip(inside, (e.sha256 for e in entries[at:at + len(inside)]))), at + len(inside)
        if digest != file.sha256:
            raise TransientError(f"{file.path}: staged copy changed since fetch (sha256 {digest})")
    return entries, shared, published_paths, paths


def _upload_pages(copier: _Copier, vdir: str, submission: Submission, number: int,
                  previous: int | None, outcomes: list[ImageOutcome], qc_report: QCReport,
                  reports: list[CompressionReport], files: list[FileRecord],
                  lineage: list[LineageRecord], settings: PublishSettings | None = None,
                  stores: dict[str, str] | None = None, originals: dict[str, str] | None = None,
                  share: sharing.Shared = sharing.Shared()) -> tuple[list[ManifestEntry], list[ManifestEntry]]:
    """The QC document and page, a thumbnail of each published image, and the landing page (its links under
    the version's public address when the archive has one and the version is not embargoed)."""
    qc_doc = QCDocument(format_version=QCDocument.FORMAT, suite=qc_report.suite, modality=qc_report.modality,
                        images=qc_report.rows, channels=qc_report.channels,
                        findings=[f.model_dump(mode="json") for f in qc_report.findings],
                        errors=len(qc_report.errors), warnings=len(qc_report.warnings))
    page = render_qc_page(qc_report, f"{submission.accession} v{number}: {submission.doc.title}")
    fs = copier.fs
    entries = [_put_bytes(fs, join(vdir, QC_REPORT), qc_doc.to_bytes()),
               _put_bytes(fs, join(vdir, QC_PAGE), page.encode())]
    shown = {o.image_id for o in outcomes if o.status == "published" and not o.label_of}
    thumbnails: dict[str, str] = {}
    shared = []
    made = []
    for report in (r for r in reports if r.image_id in shown):
        if (stores or {}).get(report.image_id, "").startswith("../") and report.image_id in share.thumbnails:
            shared.append(ManifestEntry.model_validate(share.thumbnails[report.image_id]))  # its image's is shared
            thumbnails[report.image_id] = shared[-1].path
        else:
            made.append(report)
    # the compress pass made most pictures, in the work area: copied as a store's objects are
    pictured = [r for r in made if r.thumbnail and os.path.isfile(r.thumbnail)]
    entries += copier.copy(((r.thumbnail, join(vdir, f"thumbnails/{r.image_id}.png")) for r in pictured),
                           checked=False)  # (no digest of its own: hashed as read, and read back at the end)
    thumbnails.update((r.image_id, f"thumbnails/{r.image_id}.png") for r in pictured)
    made = [r for r in made if r.image_id not in thumbnails]
    for report, png in zip(made, _thumbnails([r.store for r in made])):
        if isinstance(png, Exception):  # a picture is a courtesy: the image is published without one
            runlog.logger().warning("%s: no thumbnail (%s)", report.image_id, png)
            continue
        entries.append(_put_bytes(fs, join(vdir, f"thumbnails/{report.image_id}.png"), png))
        thumbnails[report.image_id] = f"thumbnails/{report.image_id}.png"
    # an embargoed version's page is private until its release, and then public at this address
    base = settings.public_base_url if settings else None
    public_url = f"{base.rstrip('/')}/{submission.accession}/v{number}/" if base else None
    landing = render_landing_page(submission, number, outcomes, qc_report, reports, files, lineage, previous,
                                  public_url=public_url, viewer=settings.viewer_url if settings else None,
                                  thumbnails=thumbnails, stores=stores, originals=originals)
    return entries + [_put_bytes(fs, join(vdir, LANDING), landing.encode())], shared


def _thumbnails(stores: list[str], ahead: int = 64) -> Iterator[bytes | Exception]:
    """The thumbnail of each store, or why there is none, in order: made four at a time (reading the level,
    scaling and the PNG encoder release the GIL; a version of many small images spends most of its page-making
    here), at most ``ahead`` of them held before they are taken (a version of 10,000 fields never holds all)."""
    from concurrent.futures import ThreadPoolExecutor

    def made(store: str) -> bytes | Exception:
        try:
            return thumbnail_png(store)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(4) as pool:
        for start in range(0, len(stores), ahead):
            yield from pool.map(made, stores[start:start + ahead])


def _verify_stored(copier: _Copier, entries: list[ManifestEntry]) -> None:
    """Every object re-read as stored and compared with what was uploaded (a copy already read back as it was
    stored, and compared with the digest its caller knew, is not read again)."""
    fs = copier.fs
    again = [e for e in entries if e.path not in copier.read_back]
    for entry, (size, sha256) in zip(again, copier.pool.map(lambda e: sha256_stream(fs, e.path), again)):
        if (size, sha256) != (entry.size, entry.sha256):
            raise TransientError(f"{to_url(fs, entry.path)}: stored object does not match what was uploaded")


def unchanged_publication(submission: Submission, archive: str, manifest: dict[str, Any],
                          outcomes: list[ImageOutcome] = (), settings: PublishSettings | None = None) -> Publication:
    fs, root = resolve(archive)
    images = [ImageOutcome.model_validate({**img, "status": "unchanged"}) for img in manifest.get("images", [])]
    location, url = version_url(archive, submission.accession, manifest["version"], settings,
                                bool(manifest.get("embargoed")))
    return Publication(
        accession=submission.accession, status="unchanged", version=manifest["version"], archive=to_url(fs, root),
        submission=submission.source, version_uri=location, url=url, fingerprint=manifest["fingerprint"],
        images=images or list(outcomes),
        reasons=[f"the submission is unchanged since version {manifest['version']}; nothing new was published"],
    )


def damaged_publication(submission: Submission, archive: str, manifest: dict[str, Any], problems: list[str],
                        settings: PublishSettings | None = None) -> Publication:
    """A rerun found the version it would be damaged: reported, never repaired silently."""
    fs, root = resolve(archive)
    location, url = version_url(archive, submission.accession, manifest["version"], settings)
    return Publication(
        accession=submission.accession, status="damaged", version=manifest["version"], archive=to_url(fs, root),
        submission=submission.source, version_uri=location, url=url, fingerprint=manifest["fingerprint"],
        reasons=[f"v{manifest['version']} no longer matches its manifest: {p}" for p in problems]
        + [f"run 'zarrchive verify {submission.accession}/v{manifest['version']} --archive {to_url(fs, root)}' for "
           "a full check; the version is not repaired automatically"],
    )


@stage_task(name="check_unchanged", cache_policy="none", retries=2, retry_delay_seconds=[1, 5],
            retry_condition_fn=retry_transient)
def unchanged(submission: Submission, archive: str, fingerprint: str, settings: PublishSettings,
              private: str | None = None) -> Traced[Publication | None]:
    """Whether the latest version already holds this submission (and is whole)."""
    return traced("check_unchanged", check_unchanged, submission, archive, fingerprint, settings, private)


@stage_task(name="publish", cache_policy="none", retries=2, retry_delay_seconds=[2, 10],
            retry_condition_fn=retry_transient)
def publish(
    submission: Submission, archive: str, fingerprint: str, files: list[FileRecord],
    reports: list[CompressionReport], outcomes: list[ImageOutcome], qc_report: QCReport,
    lineage: list[LineageRecord], settings: PublishSettings | None = None, private: str | None = None,
    link_originals: bool = False,
) -> Traced[Publication]:
    return traced("publish", publish_version, submission, archive, fingerprint, files, reports, outcomes,
                  qc_report, lineage, settings, private, link_originals)
