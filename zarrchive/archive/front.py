"""The archive's front page (``index.html`` at its root) and keeping it and the catalog current.

The page lists every public study from the catalog (title, authors, organism, imaging method, images, size,
release date, a thumbnail), with filtering in the page itself: static HTML with relative links, readable
from a folder, a web server or an object store alike, no server code. ``refresh`` is called after a
version becomes public (published or released): the accession's catalog rows are made again from the
archive, then the page. Neither is the record — the versions are — so a failure here is reported, not
fatal, and ``zarrchive catalog rebuild`` makes both again.
"""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

from zarrchive.units import human_size
from zarrchive.archive.storage import join, resolve, write_bytes_atomic
from zarrchive.catalog import Catalog
from zarrchive.config import CatalogSettings

INDEX = "index.html"


def render_index(studies: list[dict[str, Any]], generated: dt.datetime) -> str:
    e = html.escape
    rows = []
    for s in studies:
        words = " ".join(str(s.get(k) or "") for k in ("accession", "title", "description", "authors", "organism",
                                                        "imaging_method", "license", "doi")).lower()
        picture = (f"<img src='{e(s['thumbnail'])}' alt='' width='64' loading='lazy'>" if s.get("thumbnail")
                   else "")
        rows.append(
            f"<tr data-text='{e(words)}' data-organism='{e(s.get('organism') or '')}' "
            f"data-method='{e(s.get('imaging_method') or '')}' data-license='{e(s.get('license') or '')}'>"
            f"<td>{picture}</td><td><a href='{e(s['url'])}'>{e(s['title'])}</a><br><small>{e(s['accession'])} "
            f"v{s['latest_version']}</small></td><td>{e(s.get('authors') or '')}</td>"
            f"<td>{e(s.get('organism') or '')}</td><td>{e(s.get('imaging_method') or '')}</td>"
            f"<td>{s['images']}</td><td>{human_size(s['bytes'])}</td>"
            f"<td>{e(s['release_date'].isoformat() if s.get('release_date') else '')}</td></tr>")
    choices = {key: sorted({s.get(field) for s in studies if s.get(field)})
               for key, field in (("organism", "organism"), ("method", "imaging_method"), ("license", "license"))}
    selects = "".join(
        f"<label>{label} <select id='{key}'><option value=''>any</option>"
        + "".join(f"<option>{e(v)}</option>" for v in choices[key]) + "</select></label> "
        for key, label in (("organism", "Organism"), ("method", "Imaging method"), ("license", "Licence")))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>zarrchive: public studies</title>
<link rel="icon" href="data:,">
<style>body{{font-family:system-ui,sans-serif;margin:2rem;max-width:90rem}}table{{border-collapse:collapse;
margin:1rem 0}}td,th{{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;font-size:.9rem;
vertical-align:top}}th{{background:#f4f4f4}}input{{width:24rem}}</style></head><body>
<h1>Public studies</h1>
<p>{len(studies)} stud{'y' if len(studies) == 1 else 'ies'}, each a citable accession of OME-Zarr images with
its files as submitted, a manifest of checksums and an RO-Crate of its provenance. Changes are listed in
<a href="changes.jsonl">changes.jsonl</a>.</p>
<p><label>Search <input id="q" type="search" placeholder="title, author, organism, method, DOI…"></label>
{selects}<span id="count"></span></p>
<table><thead><tr><th></th><th>study</th><th>authors</th><th>organism</th><th>imaging method</th><th>images</th>
<th>size</th><th>release date</th></tr></thead><tbody id="studies">{''.join(rows)}</tbody></table>
<p><small>Made {e(generated.isoformat(timespec='seconds'))} from the archive's catalog.</small></p>
<script>
const rows = Array.from(document.querySelectorAll("#studies tr"));
const inputs = ["q", "organism", "method", "license"].map((id) => document.getElementById(id));
function filter() {{
  const words = inputs[0].value.toLowerCase().split(/\\s+/).filter(Boolean);
  const [, organism, method, license] = inputs.map((i) => i.value);
  let shown = 0;
  for (const row of rows) {{
    const ok = words.every((w) => row.dataset.text.includes(w))
      && (!organism || row.dataset.organism === organism) && (!method || row.dataset.method === method)
      && (!license || row.dataset.license === license);
    row.hidden = !ok;
    shown += ok ? 1 : 0;
  }}
  document.getElementById("count").textContent = `${{shown}} of ${{rows.length}} shown`;
}}
inputs.forEach((i) => i.addEventListener("input", filter));
filter();
</script>
</body></html>
"""


def write_index(archive: str, catalog: Catalog) -> None:
    fs, root = resolve(archive)
    page = render_index(catalog.studies(), dt.datetime.now(dt.timezone.utc))
    write_bytes_atomic(fs, join(root, INDEX), page.encode())


def refresh(archive: str, accession: str | None, settings: CatalogSettings | None = None) -> list[str]:
    """Index ``accession`` (every accession when None) in the catalog again and rewrite the front page; return
    what went wrong, for the run's log (the versions themselves are already safe)."""
    settings = settings or CatalogSettings()
    try:
        with Catalog(archive, settings.url, settings.password_env) as catalog:
            if accession is None:
                catalog.rebuild()
            else:
                catalog.index_accession(accession)
            write_index(archive, catalog)
    except Exception as exc:
        return [f"the catalog and front page of {archive} were not updated ({type(exc).__name__}: {exc}); run "
                f"'zarrchive catalog rebuild --archive {archive}'"]
    return []

