"""How the outcome of one ingestion is told: the state message, the run's tags and the publication report.

Pure functions of a ``Publication``: the flow turns them into a Prefect state
(published and unchanged are Completed; everything that published nothing, and
a version published without some images, is Failed, so it is never plain
green; each state is named for what happened: Published, Unchanged, Partially
published, Refused, Not published, Busy, Damaged, Rejected), tags staff can filter on (``outcome:<status>``, ``accession:<id>``) and
the markdown of the ``<accession>-publication`` artifact: every image with its
fate and reason, and links to the landing page and the QC page.
"""

from __future__ import annotations

import re

from zarrchive.records import Publication

MAX_LISTED = 20  # images or reasons named in a state message; the report lists them all


def kind(pub: Publication) -> str:
    """What happened, in one word: published, partial, unchanged, refused, not-published, busy, damaged, rejected."""
    if pub.partial:
        return "partial"
    return {"blocked": "not-published", "failed": "not-published"}.get(pub.status, pub.status)


STATE_NAMES = {"published": "Published", "unchanged": "Unchanged", "partial": "Partially published",
               "refused": "Refused", "not-published": "Not published", "busy": "Busy", "damaged": "Damaged",
               "rejected": "Rejected"}


def state_name(pub: Publication) -> str:
    """The name of the run's final state, shown on its badge in the run list: what happened (the state's type,
    Completed or Failed, gives the colour; automations can trigger on ``prefect.flow-run.<name>`` events)."""
    return STATE_NAMES[kind(pub)]


def succeeded(pub: Publication) -> bool:
    """Whether the run did all it was asked: a complete version published, or nothing new to publish."""
    return pub.ok and not pub.partial


def link(pub: Publication, page: str = "index.html") -> str | None:
    """A link to a page of the published version: its address under the public base URL (``pub.url``'s folder),
    else its location."""
    base = pub.url.rsplit("/", 1)[0] if pub.url else pub.version_uri
    if not base:
        return None
    return f"{base.rstrip('/')}/{page}"


def _not_published(pub: Publication) -> list[str]:
    return [f"{o.source_path}" + (f" [{o.image_id}]" if o.image_id else "") + f": {o.status}"
            + (f" ({o.error})" if o.error else "") for o in pub.images if o.status in ("failed", "blocked")]


def message(pub: Publication) -> str:
    """The state message: what happened, to which accession, and each image or reason that explains it."""
    where = f"{pub.accession} v{pub.version}" if pub.version else (pub.accession or pub.submission or "")
    what = kind(pub)
    published = (f"Published {where} under embargo until {pub.embargoed_until} (kept in the private location "
                 f"{pub.version_uri}, released on that date)" if pub.embargoed_until else f"Published {where} at "
                 f"{link(pub)}")
    text = {
        "published": published,
        "partial": f"Partially published {where} at {link(pub)}: {len(_not_published(pub))} image(s) not published",
        "unchanged": f"Unchanged: {where} already holds this submission ({link(pub)})",
        "refused": f"Refused {pub.submission}: nothing was published",
        "not-published": f"Not published: {pub.accession}: nothing was published",
        "busy": f"Not published: another run is publishing {pub.accession}; retry later",
        "damaged": f"Not published: {where} is damaged; nothing was published and nothing was repaired",
        "rejected": f"Not published: {pub.accession} was not approved",
    }[what]
    details = _not_published(pub) if what == "partial" else pub.reasons if what not in ("published", "unchanged") \
        else []
    if details:
        shown = details[:MAX_LISTED]
        more = f"; and {len(details) - MAX_LISTED} more (see the publication artifact)" if len(details) > MAX_LISTED \
            else ""
        text += ": " + "; ".join(shown) + more
    return text


def tags(pub: Publication) -> list[str]:
    return [f"outcome:{kind(pub)}"] + ([f"accession:{pub.accession}"] if pub.accession else [])


def artifact_key(pub: Publication, what: str = "publication") -> str:
    """A key per accession (``za000001-publication``), so each accession's latest report has its own entry; a
    submission refused before it got an accession is keyed by its folder's name."""
    name = pub.accession or f"submission-{(pub.submission or 'unknown').rstrip('/').rsplit('/', 1)[-1]}"
    return key_of(f"{name}-{what}")


def key_of(text: str) -> str:
    """``text`` as a Prefect artifact key (lowercase letters, digits and dashes)."""
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]+", "-", text.lower())).strip("-")


def run_artifact_key(what: str, location: str) -> str:
    """A key per consortium for a service flow's report (``consortium-a-import-summary``): the deployment's name
    when the run has one (a consortium's deployments are named after it), else the last part of ``location``
    (the landing zone or archive), so one consortium's latest report does not hide another's."""
    from prefect.runtime import deployment

    scope = deployment.name or location.rstrip("/").rsplit("/", 1)[-1] or "archive"
    return key_of(f"{scope}-{what}")


def report(pub: Publication) -> str:
    """The publication artifact: the outcome, links, and every image with its fate and reason."""
    out = [f"# {message(pub).split(': ')[0] if kind(pub) != 'published' else 'Published'}", "",
           f"**{message(pub)}**", ""]
    if pub.version and (landing := link(pub)):
        out += [f"- Landing page: [{landing}]({landing})", f"- QC report: [{link(pub, 'qc/index.html')}]"
                f"({link(pub, 'qc/index.html')})", f"- Archive: `{pub.archive}`"]
    if pub.created_archive:
        out.append(f"- A new archive was created at `{pub.archive}`")
    if pub.images:
        out += ["", "| image | submitted file | fate | QC | reason |", "|---|---|---|---|---|"]
        out += [f"| `{o.image_id}` | {o.source_path} | {o.status} | {o.qc} | {_cell(o.error or '')} |"
                for o in pub.images]
    reasons = [r for r in pub.reasons if kind(pub) not in ("published",)]
    if reasons:
        out += ["", "## Reasons", ""] + [f"- {_cell(r)}" for r in reasons]
    return "\n".join(out) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
