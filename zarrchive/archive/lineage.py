"""Lineage: what each stage did, recorded as it runs, written as an RO-Crate with the data.

``traced`` runs a pure stage function and returns its output together with a
``LineageRecord`` (inputs and outputs with checksums, parameters, software,
times, host, Prefect run ids). ``build_crate`` turns a run's records into an
RO-Crate (Process Run Crate profile) for the published version.
"""

from __future__ import annotations

import datetime as dt
import socket
from typing import Any, Callable, Generic, Iterable, TypeVar

from pydantic import BaseModel, ConfigDict

from zarrchive import __version__
from zarrchive.archive.storage import tree_digest
from zarrchive.archive.versions import CRATE, logical_path
from zarrchive.records import Entity, LineageRecord, ManifestEntry, Submission
from zarrchive.software import versions

T = TypeVar("T")

RO_CRATE = "https://w3id.org/ro/crate/1.1"
PROCESS_RUN_CRATE = "https://w3id.org/ro/wfrun/process/0.5"
WORKFLOW_RUN_CRATE = "https://w3id.org/ro/wfrun/workflow/0.5"


class Traced(BaseModel, Generic[T]):
    """A stage's output together with the lineage of the call that made it."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    output: T
    lineage: LineageRecord


class StageTask:
    """A Prefect task made from a stage's wrapper the first time it is used (called, submitted, its options
    read), so that plain users of a stage module — ``zarrchive convert``, Dask workers — never import Prefect
    (about a second of start-up). Made with ``stage_task(**options)`` in place of ``@task(**options)``."""

    def __init__(self, fn: Callable[..., Any], options: dict[str, Any]):
        self._fn, self._options, self._task = fn, options, None
        self.__doc__, self.__name__, self.__wrapped__ = fn.__doc__, fn.__name__, fn

    @property
    def task(self) -> Any:
        if self._task is None:
            from prefect import task

            options = dict(self._options)
            if options.get("cache_policy") == "none":  # (named here: Prefect's NO_CACHE needs Prefect imported)
                from prefect.cache_policies import NO_CACHE

                options["cache_policy"] = NO_CACHE
            self._task = task(**options)(self._fn)
        return self._task

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.task(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:  # a copy is the module's own task, found by name
        return _module_attribute, (self._fn.__module__, self.__name__)

    def __getattr__(self, name: str) -> Any:  # submit, map, with_options, name, fn …
        if name.startswith("_"):  # not set yet (a copy being made): never build the task for it
            raise AttributeError(name)
        return getattr(self.task, name)


def _module_attribute(module: str, name: str) -> Any:
    import importlib

    return getattr(importlib.import_module(module), name)


def stage_task(**options: Any) -> Callable[[Callable[..., Any]], StageTask]:
    """``@task(**options)``, made when first used (``StageTask``)."""
    return lambda fn: StageTask(fn, options)


def _entities(value: Any) -> list[Entity]:
    if hasattr(value, "entities"):
        return list(value.entities())
    if isinstance(value, (list, tuple)):
        return [e for item in value for e in _entities(item)]
    return []


def _parameters(args: Iterable[Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for value in args:
        if isinstance(value, BaseModel) and not hasattr(value, "entities"):
            params[type(value).__name__] = value.model_dump(mode="json")
    return params


def _prefect_ids() -> tuple[str | None, str | None, str | None]:
    """Flow run id, task run id and the flow run's UI address (None outside a Prefect run)."""
    try:
        from prefect.runtime import flow_run, task_run

        flow_id = str(flow_run.id) if flow_run.id else None
        return flow_id, (str(task_run.id) if task_run.id else None), (flow_run.ui_url if flow_id else None)
    except Exception:  # outside a Prefect run there is no run id
        return None, None, None


def traced(stage: str, fn: Callable[..., T], *args: Any, image_id: str | None = None, **kwargs: Any) -> Traced[T]:
    """Call ``fn(*args, **kwargs)`` and record its lineage (``trace``)."""
    started = dt.datetime.now(dt.timezone.utc)
    output = fn(*args, **kwargs)
    return trace(stage, output, started, *args, image_id=image_id, **kwargs)


def trace(stage: str, output: T, started: dt.datetime, *args: Any, image_id: str | None = None,
          ended: dt.datetime | None = None, host: str | None = None, **kwargs: Any) -> Traced[T]:
    """The lineage of work on ``args`` and ``kwargs`` begun at ``started`` that has just given ``output``.

    Inputs are the entities of the record arguments (plus the ``sources()`` a
    result declares it read), outputs those of the result, parameters the
    configuration sections among the arguments. Work done elsewhere (on a Dask
    worker) gives when it ``ended`` and the ``host`` it ran on.
    """
    ended = ended or dt.datetime.now(dt.timezone.utc)
    flow_run_id, task_run_id, run_url = _prefect_ids()
    record = LineageRecord(
        stage=stage,
        image_id=image_id,
        inputs=_entities(list(args) + list(kwargs.values())) + list(getattr(output, "sources", list)()),
        outputs=_entities(output),
        parameters=_parameters(list(args) + list(kwargs.values())),
        software=versions(),
        started=started,
        ended=ended,
        host=host or socket.gethostname(),
        flow_run_id=flow_run_id,
        task_run_id=task_run_id,
        run_url=run_url,
        facts=getattr(output, "facts", dict)(),
    )
    return Traced(output=output, lineage=record)


# ---------------------------------------------------------------- RO-Crate


def build_crate(
    submission: Submission,
    version: int,
    lineage: list[LineageRecord],
    manifest: list[ManifestEntry],
    published_paths: dict[str, str],
    previous_version: int | None = None,
    publish_results: tuple[str, ...] = (),
    date_published: dt.date | None = None,
) -> dict[str, Any]:
    """The ``ro-crate-metadata.json`` document of one published version.

    ``published_paths`` maps a staging URI (as lineage knows it) to the path of
    the object in the version, so actions point at the published objects.
    Every file entity carries its size and sha256; a Zarr store is one
    Dataset entity with its tree digest (``storage.tree_digest``) — its
    objects are listed, with their checksums, in ``manifest.json``. A label
    image nested in an image's store (``labels/<name>/``) is a Dataset of its
    own, part of the image's; the image's digest covers the image's own objects,
    so each store's digest is the one its compress action verified.
    A staged copy made by an earlier run (reused through the cache) is matched
    to the published original by its sha256. The publish action itself links
    the published images and originals to what publish wrote
    (``publish_results``); ``previous_version`` links this version to the one
    it is based on.
    """
    originals = {e.sha256: e.path for e in manifest
                 if logical_path(e.path).startswith("originals/") and not _store_of(e.path)}
    entities = _data_entities(manifest, originals)
    ref = _referrer(published_paths, originals)
    software, software_ids = _software_nodes()
    actions, sources = [], {}
    for i, rec in enumerate(lineage):
        action = _action_node(i, rec, ref)
        actions.append(action)
        for ent in [*rec.inputs, *rec.outputs]:
            node_id = ref(ent)["@id"]
            if node_id not in entities:  # a source in the landing zone or an intermediate of the work area
                sources.setdefault(node_id, _entity_node(ent, node_id))
    if publish_results:
        actions.append(_publish_action(lineage, entities, publish_results))
    # sources in the landing zone are web-based data entities of the crate; intermediates are contextual
    parts = [{"@id": key} for key in entities] + [{"@id": key} for key, node in sources.items()
                                                   if node["@type"] == "File"]
    root = _root_node(submission, version, parts, [{"@id": a["@id"]} for a in actions], date_published)
    graph = [*_contextual_nodes(submission, root, software_ids), *software, *actions]
    if previous_version:
        root["isBasedOn"] = {"@id": f"../v{previous_version}/"}
        graph.append({"@id": f"../v{previous_version}/", "@type": "CreativeWork",
                      "name": f"{submission.accession} version {previous_version}",
                      "identifier": f"{submission.accession}/v{previous_version}"})
    graph += [_person(a) for a in submission.doc.authors]
    graph += [*entities.values(), *sources.values()]
    return {"@context": "https://w3id.org/ro/crate/1.1/context", "@graph": graph}


def _referrer(published_paths: dict[str, str], originals: dict[str, str]) -> Callable[[Entity], dict[str, str]]:
    """How the crate refers to an entity lineage recorded: by its published path, a staged original by the
    published original of the same sha256, a work-area object as an intermediate, anything else by its URI."""
    def ref(entity: Entity) -> dict[str, str]:
        if entity.uri in published_paths:
            return {"@id": published_paths[entity.uri]}
        if entity.role == "staged" and entity.sha256 in originals:
            return {"@id": originals[entity.sha256]}
        if entity.role in ("intermediate", "output", "staged"):  # work-area objects that are not published
            return {"@id": f"#intermediate/{entity.uri.rstrip('/').rsplit('/', 1)[-1]}"}
        return {"@id": entity.uri if "://" in entity.uri else f"file://{entity.uri}"}

    return ref


def _data_entities(manifest: list[ManifestEntry], originals: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The version's data entities by path: each file with its size and sha256, each Zarr store as one Dataset
    with its tree digest (a label store a part of its image's). A submitted store among the originals is added
    to ``originals`` by its tree digest, so its staged copy is matched to it."""
    entities: dict[str, dict[str, Any]] = {}
    stores: dict[str, list[ManifestEntry]] = {}
    for entry in manifest:
        if store := _store_of(entry.path):  # an object inside a Zarr store: the store is the entity
            stores.setdefault(store, []).append(entry)
        else:
            entities[entry.path] = {"@id": entry.path, "@type": "File", "contentSize": entry.size,
                                    "sha256": entry.sha256}
    for store, objects in sorted(stores.items()):
        digest = tree_digest((o.path[len(store):], o.sha256) for o in objects)
        if logical_path(store).startswith("originals/"):
            originals[digest] = store
        entities[store] = {
            "@id": store, "@type": "Dataset", "name": store.rstrip("/").rsplit("/", 1)[-1],
            "encodingFormat": "application/vnd+zarr",
            "conformsTo": {"@id": f"https://ngff.openmicroscopy.org/{_ngff_of(objects, store)}/"},
            "contentSize": sum(o.size for o in objects), "zarrchive:objects": len(objects),
            "zarrchive:treeDigest": digest,
        }
    for key in sorted(entities):  # label stores and labels groups are parts of their image's store
        image, _, rest = key.rpartition("/labels/")
        if image and rest and f"{image}/" in entities:
            entities[f"{image}/"].setdefault("hasPart", []).append({"@id": key})
    return entities


def _software_nodes() -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    nodes = [{"@id": f"#software/{name}", "@type": "SoftwareApplication", "name": name, "softwareVersion": ver}
             for name, ver in sorted(versions().items())]
    return nodes, [{"@id": node["@id"]} for node in nodes]


def _action_node(i: int, rec: LineageRecord, ref: Callable[[Entity], dict[str, str]]) -> dict[str, Any]:
    """One stage's call as a CreateAction: what it read and made, when, where, with what parameters, and its
    Prefect run."""
    action = {
        "@id": f"#action/{i:04d}-{rec.stage}" + (f"-{rec.image_id}" if rec.image_id else ""),
        "@type": "CreateAction",
        "name": f"{rec.stage}" + (f" {rec.image_id}" if rec.image_id else ""),
        "instrument": {"@id": "#workflow/ingest_submission"},
        "object": [ref(e) for e in rec.inputs],
        "result": [ref(e) for e in rec.outputs],
        "startTime": rec.started.isoformat(),
        "endTime": rec.ended.isoformat(),
        "actionStatus": {"@id": "http://schema.org/CompletedActionStatus" if rec.outcome == "success"
                         else "http://schema.org/FailedActionStatus"},
        "zarrchive:stage": rec.stage,
        "zarrchive:parameters": rec.parameters,
        "zarrchive:host": rec.host,
    }
    optional = {"zarrchive:prefectFlowRun": rec.flow_run_id, "zarrchive:prefectTaskRun": rec.task_run_id,
                "url": rec.run_url, "error": rec.error, "zarrchive:facts": rec.facts}
    return action | {key: value for key, value in optional.items() if value}


def _publish_action(lineage: list[LineageRecord], entities: dict[str, dict[str, Any]],
                    publish_results: tuple[str, ...]) -> dict[str, Any]:
    """The publish action: the published images, plates and originals it read, what it wrote."""
    flow_runs = sorted({r.flow_run_id for r in lineage if r.flow_run_id})
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    results = set(publish_results)  # (a tuple of thousands, asked about each entity)
    published = [{"@id": k} for k in entities
                 if logical_path(k).startswith(("images/", "plates/", "originals/")) and k not in results]
    return {
        "@id": "#action/publish", "@type": "CreateAction", "name": "publish",
        "instrument": {"@id": "#workflow/ingest_submission"}, "object": published,
        "result": [{"@id": p} for p in publish_results], "startTime": now, "endTime": now,
        "actionStatus": {"@id": "http://schema.org/CompletedActionStatus"}, "zarrchive:stage": "publish",
        **({"zarrchive:prefectFlowRun": flow_runs[-1]} if flow_runs else {}),
    }


def _root_node(submission: Submission, version: int, parts: list[dict[str, str]], actions: list[dict[str, str]],
               date_published: dt.date | None) -> dict[str, Any]:
    doc = submission.doc
    root = {
        "@id": "./",
        "@type": "Dataset",
        "name": doc.title,
        "description": doc.description,
        "identifier": f"{submission.accession}/v{version}",
        "license": {"@id": f"https://spdx.org/licenses/{doc.license}"},
        "publisher": {"@id": "#zarrchive"},
        "datePublished": (date_published or dt.date.today()).isoformat(),  # an embargoed version: its release
        "author": [{"@id": _author_id(a.orcid, a.name)} for a in doc.authors],
        "hasPart": parts,
        "mentions": actions,
        "conformsTo": [{"@id": PROCESS_RUN_CRATE}],
    }
    if doc.publication:
        root["citation"] = {"@id": f"https://doi.org/{doc.publication.doi}"}
    return root


def _contextual_nodes(submission: Submission, root: dict[str, Any], software_ids: list[dict[str, str]]
                      ) -> list[dict[str, Any]]:
    """The crate's metadata descriptor, its root, the profile, the licence, the archive and the workflow."""
    licence = submission.doc.license
    return [
        {"@id": CRATE, "@type": "CreativeWork",
         "conformsTo": {"@id": RO_CRATE}, "about": {"@id": "./"}},
        root,
        {"@id": PROCESS_RUN_CRATE, "@type": "CreativeWork", "name": "Process Run Crate", "version": "0.5"},
        {"@id": f"https://spdx.org/licenses/{licence}", "@type": "CreativeWork", "name": licence,
         "identifier": licence},
        {"@id": "#zarrchive", "@type": "Organization", "name": "zarrchive bioimage archive"},
        {"@id": "#workflow/ingest_submission", "@type": "SoftwareApplication", "name": "zarrchive ingest_submission",
         "softwareVersion": __version__, "softwareRequirements": software_ids},
    ]


def _person(author: Any) -> dict[str, Any]:
    person = {"@id": _author_id(author.orcid, author.name), "@type": "Person", "name": author.name}
    if author.email:
        person["email"] = author.email
    if author.affiliation:
        person["affiliation"] = author.affiliation
    return person


def _ngff_of(objects: list[ManifestEntry], store: str) -> str:
    """0.5 for a Zarr v3 store (its root ``zarr.json``), else 0.4 (Zarr v2)."""
    return "0.5" if any(o.path == f"{store}zarr.json" for o in objects) else "0.4"


def _store_of(path: str) -> str | None:
    """The Zarr store an object of the version belongs to: ``images/<id>.ome.zarr/`` (a plate's field:
    ``plates/<name>.ome.zarr/<row>/<column>/<field>/``), or a label's ``…/labels/<name>/``; None for a file of its
    own (the ``labels`` group's ``zarr.json``, a plate's, a row's or a well's metadata).
    An object shared with an earlier version belongs to that version's store (``../v1/images/<id>.ome.zarr/``)."""
    inner = logical_path(path)
    store = _logical_store_of(inner)
    return path[:len(path) - len(inner)] + store if store else None


def _logical_store_of(path: str) -> str | None:
    parts = path.split("/")
    if parts[0] == "originals":  # a Zarr store submitted as one entry (an OME-Zarr input)
        inside = next((i for i, part in enumerate(parts[:-1]) if part.endswith(".zarr")), None)
        return "/".join(parts[:inside + 1]) + "/" if inside is not None else None
    if parts[0] == "plates":  # a plate's field: plates/<name>.ome.zarr/<row>/<column>/<field>/, its labels nested
        if len(parts) < 6:
            return None  # the plate's, a row's and a well's metadata
        field = "/".join(parts[:5])
        rest = parts[5:]
    elif parts[0] == "images" and len(parts) >= 3:
        field, rest = "/".join(parts[:2]), parts[2:]
    else:
        return None
    if rest[0] == "labels":
        return f"{field}/labels/{rest[1]}/" if len(rest) > 2 else None
    return f"{field}/"


def _author_id(orcid: str | None, name: str) -> str:
    return f"https://orcid.org/{orcid}" if orcid else f"#person/{name.replace(' ', '_')}"


def _entity_node(entity: Entity, node_id: str) -> dict[str, Any]:
    external = not node_id.startswith("#")
    node: dict[str, Any] = {"@id": node_id, "@type": ("File" if entity.kind == "file" else "Dataset") if external
                            else "CreativeWork"}
    if not external:
        node["description"] = f"intermediate in the work area, not part of this version ({entity.uri})"
    if entity.role:
        node["zarrchive:role"] = entity.role
    if entity.size is not None:
        node["contentSize"] = entity.size
    if entity.sha256:
        node["sha256"] = entity.sha256
    return node
