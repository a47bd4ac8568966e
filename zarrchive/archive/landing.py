"""The landing page of a published version (``<accession>/v<N>/index.html``): what people read first.

Study metadata and how to cite it, the images with their QC status, the
files as submitted, and a short provenance section linking the RO-Crate.
"""

from __future__ import annotations

import datetime as dt
import html
import posixpath
from typing import Any

from zarrchive.archive.versions import image_store
from zarrchive.ngff import NGFF_VERSION, ZARR_FORMAT, store_ngff_version
from zarrchive.records import CompressionReport, FileRecord, ImageOutcome, LineageRecord, QCReport, Submission
from zarrchive.software import versions
from zarrchive.units import human_size

PROVENANCE_SOFTWARE = ("zarrchive", "bioio", "bioio-ome-tiff", "bioio-tifffile", "tifffile", "zarr", "numcodecs",
                       "dask", "distributed", "prefect", "great-expectations")


def citation(submission: Submission, version: int) -> str:
    doc = submission.doc
    names = [a.name for a in doc.authors]
    who = names[0] + (" et al." if len(names) > 2 else f" and {names[1]}" if len(names) == 2 else "")
    return f"{who} ({doc.release_date.year}). {doc.title}. zarrchive {submission.accession}, version {version}."


def needs_imagecodecs(report: Any) -> bool:
    """Whether an image's codec is one of imagecodecs' image codecs (JPEG-LS, JPEG-XL…), which a reader decodes
    with imagecodecs' Zarr codecs (imagecodecs-zarr)."""
    return report.codec.name.startswith("imagecodecs_")


def extra_install(report: Any) -> str:
    """What a reader installs beside zarr to decode an image's codec (nothing for blosc and zstd)."""
    if needs_imagecodecs(report):
        return " imagecodecs-zarr"
    return " 'numcodecs[pcodec]'" if report.codec.name == "numcodecs.pcodec" else ""


def label_links(outcome: ImageOutcome, ngff: str = NGFF_VERSION, store: str | None = None) -> str:
    """The labels published with an image (whose store is at ``store``), linked, for its row of the images
    table."""
    e = html.escape
    store = store or image_store(outcome.image_id)
    links = [f"<a href='{e(store_link(f'{store}/labels/{n}', ngff))}'>{e(n)}</a>" for n in outcome.labels]
    return f"<br><small>labels: {', '.join(links)}</small>" if links else ""


def _place(outcome: ImageOutcome) -> str:
    w = outcome.well
    return (f"<br><small>plate {html.escape(w.plate)}, well {html.escape(w.row + w.column)}, field {w.field}</small>"
            if w else "")


def plates_section(outcomes: list[ImageOutcome], stores: dict[str, str], ngff: dict[str, str]) -> str:
    """Each plate the version publishes: a link to it (an OME-NGFF plate, as plate viewers open it) and its
    wells as a grid, each well linked to its first field."""
    e = html.escape
    plates: dict[str, list[tuple[ImageOutcome, str]]] = {}
    for o in outcomes:
        if o.well and o.status == "published" and not o.label_of and o.image_id in stores:
            plates.setdefault(o.well.plate, []).append((o, stores[o.image_id]))
    parts = []
    for name, fields in sorted(plates.items()):
        first_store = fields[0][1]
        plate = first_store[:-len(fields[0][0].well.path) - 1]
        version = ngff.get(fields[0][0].image_id, NGFF_VERSION)
        rows = sorted({o.well.row for o, _ in fields}, key=lambda r: (len(r), r))
        columns = sorted({o.well.column for o, _ in fields}, key=lambda c: (len(c), c))
        cells = {}
        for o, store in sorted(fields, key=lambda f: f[0].well.field):
            cells.setdefault((o.well.row, o.well.column), []).append(store)
        grid = "".join(
            f"<tr><th>{e(r)}</th>" + "".join(
                f"<td><a href='{e(store_link(cells[(r, c)][0], version))}'>{len(cells[(r, c)])}</a></td>"
                if (r, c) in cells else "<td></td>" for c in columns) + "</tr>" for r in rows)
        parts.append(f"<h3>Plate <a href='{e(store_link(plate, version))}'>{e(name)}</a></h3>"
                     f"<p>{len(cells)} well(s), {len(fields)} field(s): an OME-NGFF plate (napari with "
                     f"napari-ome-zarr, ome-zarr-py, vizarr open it whole). Each well shows its number of fields, "
                     f"linked to the first.</p><table><thead><tr><th></th>"
                     + "".join(f"<th>{e(c)}</th>" for c in columns) + f"</tr></thead><tbody>{grid}</tbody></table>")
    return ("<h2>Plates</h2>" + "".join(parts)) if parts else ""


def store_link(path: str, ngff: str) -> str:
    """A link to a published Zarr store that resolves on a folder and on an object store alike: its metadata
    document (``zarr.json``, or ``.zattrs`` for NGFF 0.4)."""
    return f"{path}/{'zarr.json' if ngff == '0.5' else '.zattrs'}"


def how_to_open(url: str, extra: str = "") -> str:
    """Snippets a visitor pastes: bioio, ome-zarr-py, napari, zarr-python, for the image at ``url`` (``extra``:
    what its codec needs installed beside them)."""
    return (f"# pip install bioio bioio-ome-zarr{extra}\nfrom bioio import BioImage\nimage = BioImage(\"{url}\")\n"
            f"print(image.dims, image.physical_pixel_sizes)\n\n"
            f"# pip install ome-zarr{extra}\nfrom ome_zarr.io import parse_url\nfrom ome_zarr.reader import Reader\n"
            f"levels = next(iter(Reader(parse_url(\"{url}\"))())).data\n\n"
            f"# napari (pip install napari napari-ome-zarr{extra})\nnapari --plugin napari-ome-zarr {url}\n\n"
            f"# pip install zarr{extra}\nimport zarr\nlevel0 = zarr.open_group(\"{url}\", mode=\"r\")[\"0\"]")


def _opening(first: tuple[str, str] | None, public: bool, version: int) -> str:
    """The section that shows how to open an image, with the first image as the example."""
    if first is None:
        return ""
    where = ("" if public else " (the address of this page with <code>index.html</code> replaced by the image's "
             "path, or the path of your copy)")
    if not public and first[0].startswith("../"):  # shared with an earlier version: an object store has no '..'
        shared = posixpath.normpath(f"v{version}/{first[0]}")
        where = (f" (the address of this page with <code>v{version}/index.html</code> replaced by "
                 f"<code>{html.escape(shared)}</code> for the first one, or the path of your copy)")
    return (f"<h2>How to open an image</h2><p>Each image is an OME-Zarr store{where}; for the first one:</p>"
            f"<pre><code>{html.escape(how_to_open(*first))}</code></pre>")


def render_landing_page(submission: Submission, version: int, outcomes: list[ImageOutcome], qc_report: QCReport,
                        reports: list[CompressionReport], files: list[FileRecord], lineage: list[LineageRecord],
                        previous_version: int | None, public_url: str | None = None,
                        viewer: str | None = None, thumbnails: dict[str, str] | None = None,
                        stores: dict[str, str] | None = None, originals: dict[str, str] | None = None) -> str:
    """The landing page; ``public_url`` is the version's public address (links and snippets are relative
    without it), ``viewer`` a viewer's URL template with ``{url}`` (e.g. vizarr's), used with a public
    address. ``thumbnails`` gives the path of each image's picture (none without). ``stores`` (image id) and
    ``originals`` (submitted path) give the paths of what the version shares
    with an earlier one (``../v1/…``); the others are in the version's own folder."""
    doc = submission.doc
    e = html.escape
    ngff = {r.image_id: store_ngff_version(r.store) for r in reports}
    base = public_url.rstrip("/") + "/" if public_url else ""
    image_rows, first = _image_rows(outcomes, qc_report, reports, ngff, base, viewer, thumbnails, stores or {})
    formats = "; ".join(f"OME-NGFF {v}, Zarr v{ZARR_FORMAT[v]}"
                        for v in sorted({store_ngff_version(r.store) for r in reports}) or [NGFF_VERSION])
    file_rows = "".join(f"<tr><td><a href='{e((originals or {}).get(f.path, f'originals/{f.path}'))}'>{e(f.path)}</a>"
                        f"</td><td>{e(f.kind)}</td>"
                        f"<td>{human_size(f.size)}</td><td><code>{f.sha256}</code></td></tr>" for f in files)
    runs = sorted({r.flow_run_id for r in lineage if r.flow_run_id})
    started = min((r.started for r in lineage), default=dt.datetime.now(dt.timezone.utc))
    software = versions()
    authors = ", ".join(
        (f"<a href='https://orcid.org/{e(a.orcid)}'>{e(a.name)}</a>" if a.orcid else e(a.name))
        + (f" ({e(a.affiliation)})" if a.affiliation else "") for a in doc.authors)
    previous = (f"<p>This version replaces <a href='../v{previous_version}/'>version {previous_version}</a>.</p>"
                if previous_version else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(submission.accession)} v{version}: {e(doc.title)}</title>
<link rel="icon" href="data:,">
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:80rem}}table{{border-collapse:collapse;margin:1rem 0}}
td,th{{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;font-size:.9rem}}th{{background:#f4f4f4}}</style></head><body>
<h1>{e(doc.title)}</h1>
<p>{authors}</p>
<p>{e(doc.description)}</p>
<table>{_metadata_rows(submission, version)}</table>
<h2>Cite</h2><p>{e(citation(submission, version))}</p>
<h2>Images</h2>
<p>OME-Zarr ({e(formats)}), readable with napari, bioio, ome-zarr-py, zarr-python, tensorstore and
neuroglancer/vizarr. Quality control: <a href="qc/index.html">report</a> ({len(qc_report.errors)} error(s),
{len(qc_report.warnings)} warning(s)).</p>
<table><thead><tr><th></th><th>image</th><th>source</th><th>axes, shape</th><th>type</th>
<th>pixel size (z × y × x)</th><th>channels</th><th>QC</th><th>stored</th><th>codec</th></tr></thead>
<tbody>{image_rows}</tbody></table>
{_codec_note(reports)}
{plates_section(outcomes, stores or {}, ngff)}
{_opening(first, bool(base), version)}
<h2>Files as submitted</h2>
<table><thead><tr><th>path</th><th>kind</th><th>size</th><th>sha256</th></tr></thead><tbody>{file_rows}</tbody></table>
<h2>Provenance</h2>
<p>Ingested by zarrchive on {started.date().isoformat()} (Prefect flow run {e(', '.join(runs) or 'none')}).
Every object of this version is listed with its sha256 in <a href="manifest.json">manifest.json</a>; how each was
made is recorded in <a href="ro-crate-metadata.json">ro-crate-metadata.json</a> (RO-Crate, Process Run Crate).</p>
{previous}
<p>Software: {e(', '.join(f'{n} {software[n]}' for n in PROVENANCE_SOFTWARE if n in software))}.</p>
</body></html>
"""


def _image_rows(outcomes: list[ImageOutcome], qc_report: QCReport, reports: list[CompressionReport],
                ngff: dict[str, str], base: str, viewer: str | None, thumbnails: dict[str, str] | None,
                stores: dict[str, str]) -> tuple[str, tuple[str, str] | None]:
    """The image table's rows (a label is shown with its image), and the first image's address with what its
    codec needs installed, for the snippets that open it."""
    from urllib.parse import urljoin

    e = html.escape
    facts = {row["image_id"]: row for row in qc_report.rows}
    sizes = {r.image_id: r for r in reports}
    rows, first = [], None
    for o in outcomes:
        if o.status != "published" or o.label_of:
            continue
        row: dict[str, Any] = facts.get(o.image_id, {})
        report = sizes.get(o.image_id)
        pixel = " × ".join(f"{row[k]:.4g}" for k in ("pixel_size_z", "pixel_size_y", "pixel_size_x")
                           if row.get(k) is not None)
        store = stores.get(o.image_id, image_store(o.image_id))
        address = urljoin(base, store) if base else store
        view = f"<br><a href='{e(viewer.format(url=address))}'>view</a>" if viewer and base else ""
        picture = (f"<img src='{e(thumbnails[o.image_id])}' alt='{e(o.image_id)}' width='128'>"
                   if thumbnails and o.image_id in thumbnails else "")
        first = first or (address, extra_install(report) if report else "")
        rows.append(
            f"<tr><td>{picture}</td>"
            f"<td><a href='{e(store_link(store, ngff.get(o.image_id, NGFF_VERSION)))}'>{e(o.image_id)}</a>"
            f"{label_links(o, ngff.get(o.image_id, NGFF_VERSION), store)}{view}</td>"
            f"<td>{e(o.source_path)}{_place(o)}</td>"
            f"<td>{e(str(row.get('axes', '')))} {e(str(row.get('shape', '')))}</td>"
            f"<td>{e(str(row.get('dtype', '')))}</td>"
            f"<td>{e(pixel)} {e(str(row.get('unit') or ''))}</td><td>{e(str(row.get('channel_names', '')))}</td>"
            f"<td>{e(o.qc)}</td><td>{human_size(report.bytes_out) if report else ''}"
            f"{f' ({report.ratio:.2f}×)' if report else ''}</td>"
            f"<td>{e(report.codec.name) if report else ''}{'*' if report and extra_install(report) else ''}"
            f"</td></tr>")
    return "".join(rows), first


def _codec_note(reports: list[CompressionReport]) -> str:
    """What reading the images needs beyond zarr-python, for the codecs the version used."""
    return "".join(note for kind, note in (
        ("numcodecs.pcodec", "<p>* stored with pcodec (the <code>max</code> profile) through numcodecs: zarr-python "
                             "reads it with <code>pip install zarr 'numcodecs[pcodec]'</code>; it is not in the "
                             "Zarr v3 specification, so other Zarr implementations may not.</p>"),
        ("imagecodecs", "<p>* stored with a lossless image codec of imagecodecs (the <code>max</code> profile): "
                        "zarr-python 3.2 or later reads it with <code>pip install zarr imagecodecs-zarr</code> "
                        "(imagecodecs' own Zarr codecs, Python 3.12 or later; on Python 3.11, <code>pip install "
                        "zarrchive</code> registers the same codecs). It is not in the Zarr v3 specification, so "
                        "other Zarr implementations may not read it.</p>"))
        if any(r.codec.name.startswith(kind) for r in reports))


def _metadata_rows(submission: Submission, version: int) -> str:
    """The study's facts: accession, release date, licence, organism, imaging method, publication."""
    doc, e = submission.doc, html.escape
    meta = [("Accession", f"{submission.accession} v{version}"), ("Release date", doc.release_date.isoformat()),
            ("Licence", doc.license)]  # (an embargoed version's page is public only once it is released)
    if doc.organism:
        meta.append(("Organism", doc.organism.scientific_name
                     + (f" (NCBI:txid{doc.organism.ncbi_taxon})" if doc.organism.ncbi_taxon else "")))
    if doc.imaging_method:
        meta.append(("Imaging method", doc.imaging_method.name
                     + (f" ({doc.imaging_method.fbbi_id})" if doc.imaging_method.fbbi_id else "")))
    rows = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in meta)
    if doc.publication:
        rows += (f"<tr><th>Publication</th><td><a href='https://doi.org/{e(doc.publication.doi)}'>"
                 f"{e(doc.publication.doi)}</a></td></tr>")
    return rows


def render_qc_page(report: QCReport, title: str) -> str:
    """A self-contained HTML page of the QC results: summary, findings, image and channel facts."""
    def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in columns) + "</tr>"
                       for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    findings = [f.model_dump() for f in report.findings]
    verdict = "errors: not publishable" if report.errors else "passed" + (" with warnings" if report.warnings else "")
    image_columns = ["image_id", "kind", "label_of", "source_path", "source_format", "dtype", "axes", "shape",
                     "pixel_size_x", "pixel_size_y", "pixel_size_z", "unit", "time_step", "channel_names", "min", "max",
                     "saturated_fraction", "levels", "ngff_valid", "compression_ratio", "level0_checksum_matched"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>QC — {html.escape(title)}</title>
<link rel="icon" href="data:,">
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:80rem}}table{{border-collapse:collapse;margin:1rem 0}}
td,th{{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;font-size:.9rem}}th{{background:#f4f4f4}}
.error{{color:#a00}}.warning{{color:#a60}}</style></head><body>
<h1>Quality control — {html.escape(title)}</h1>
<p>Suite <code>{html.escape(report.suite)}</code>{f", modality <code>{html.escape(report.modality)}</code>" if report.modality else ""}:
<strong class="{'error' if report.errors else 'warning' if report.warnings else ''}">{verdict}</strong>
— {len(report.rows)} image(s), {len(report.errors)} error(s), {len(report.warnings)} warning(s).</p>
<h2>Findings</h2>
{table(findings, ["severity", "check", "image_id", "file", "field", "message"]) if findings else "<p>All checks passed.</p>"}
<h2>Images</h2>
{table(report.rows, image_columns)}
<h2>Channels</h2>
{table(report.channels, ["image_id", "channel", "name", "min", "max", "mean", "saturated_fraction", "zero_fraction"])}
</body></html>
"""


def _cell(value: Any) -> str:
    """A value of a QC table as shown: floats to 4 significant digits, nothing as a dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
