"""The catalog: a database of the archive's public studies, versions, images and files, for search and the index.

SQLite by default (a file, nothing to run): ``<archive>/_catalog/catalog.sqlite`` beside a folder archive's
studies, or a file in zarrchive's data folder for an object-store archive (``catalog_path``). PostgreSQL for
production (``catalog.url: postgresql+psycopg://user@host/db``; the password from ``catalog.password_env`` or
libpq's own ``PGPASSWORD``/``~/.pgpass``, never in the configuration). The schema is created and upgraded by
Alembic migrations (``zarrchive/catalog/migrations``) whenever the catalog is opened.

The archive is the source of truth: an accession's rows are rebuilt from its public versions' documents
(``index_accession``) after each publish and release, and ``rebuild`` makes the whole catalog again from them;
embargoed versions live elsewhere and are never read. A catalog knows the archive it indexes and refuses
another.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import posixpath
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy as sa
from fsspec.implementations.local import LocalFileSystem

from zarrchive.archive.documents import QCDocument
from zarrchive.archive.storage import join, read_json, resolve, to_url
from zarrchive.archive.versions import ARCHIVE_MARKER, MANIFEST, accessions, logical_path, public_versions
from zarrchive.catalog import schema
from zarrchive.errors import ConfigError

MIGRATIONS = Path(__file__).parent / "migrations"


def default_url(archive: str) -> str:
    """The SQLite catalog of ``archive`` when none is configured."""
    fs, root = resolve(archive)
    if isinstance(fs, LocalFileSystem):
        return f"sqlite:///{Path(root) / '_catalog' / 'catalog.sqlite'}"
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "zarrchive" / "catalogs"
    key = hashlib.sha256(to_url(fs, root).encode()).hexdigest()[:16]
    return f"sqlite:///{data / f'{key}.sqlite'}"


def archive_identity(archive: str) -> str:
    """What names an archive wherever it is (a copy or a mirror is the same archive): the id in its marker
    (``zarrchive-archive.json``), else its creation time there, else its address."""
    fs, root = resolve(archive)
    try:
        marker = read_json(fs, join(root, ARCHIVE_MARKER))
    except (FileNotFoundError, ValueError):
        return to_url(fs, root)
    return str(marker.get("id") or marker.get("created") or to_url(fs, root))


def engine_for(url: str, password_env: str | None = None) -> sa.Engine:
    parsed = sa.make_url(url)
    if parsed.password is not None:
        raise ConfigError("catalog.url", ["holds a password: name the environment variable that has it "
                                          "(catalog.password_env) or use libpq's PGPASSWORD or ~/.pgpass"])
    if password_env:
        if password_env not in os.environ:
            raise ConfigError("catalog.password_env", [f"the environment variable {password_env} is not set"])
        parsed = parsed.set(password=os.environ[password_env])
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        return sa.create_engine(parsed, connect_args={"timeout": 60})
    return sa.create_engine(parsed, pool_pre_ping=True)


class Catalog:
    """The catalog of the archive at ``archive`` (a folder or object-store URL), opened and migrated."""

    def __init__(self, archive: str, url: str | None = None, password_env: str | None = None):
        fs, root = resolve(archive)
        self.archive = to_url(fs, root)
        self.url = url or default_url(archive)
        self.engine = engine_for(self.url, password_env)
        migrate(self.engine)
        identity = archive_identity(archive)
        with self.engine.begin() as db:
            known = dict(db.execute(sa.select(schema.info.c.key, schema.info.c.value)).all())
            if "archive_id" not in known:
                db.execute(schema.info.insert(), [{"key": "archive_id", "value": identity},
                                                  {"key": "archive", "value": self.archive}])
            elif known["archive_id"] != identity:
                raise ConfigError("catalog.url", [f"{sa.make_url(self.url).render_as_string()} is the catalog of "
                                                  f"{known.get('archive')}, not of {self.archive}"])

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---------------------------------------------------------------- writing

    def index_accession(self, accession: str) -> int:
        """Make ``accession``'s rows again from its public versions; return how many versions it has."""
        rows = accession_rows(self.archive, accession)
        with self.engine.begin() as db:
            _delete(db, accession)
            _insert(db, rows)
        return len(rows["versions"])

    def rebuild(self) -> int:
        """Make the whole catalog again from the archive; return the number of studies."""
        every = [accession_rows(self.archive, a) for a in accessions(self.archive)]
        with self.engine.begin() as db:
            for table in (schema.files, schema.images, schema.versions, schema.studies):
                db.execute(table.delete())
            for rows in every:
                _insert(db, rows)
        return sum(1 for rows in every if rows["studies"])

    # ---------------------------------------------------------------- reading

    def studies(self) -> list[dict[str, Any]]:
        """Every public study, newest release first."""
        with self.engine.connect() as db:
            query = sa.select(schema.studies).order_by(schema.studies.c.release_date.desc(),
                                                       schema.studies.c.accession)
            return [dict(r._mapping) for r in db.execute(query)]

    def search(self, text: str = "", organism: str | None = None, method: str | None = None,
               license: str | None = None) -> list[dict[str, Any]]:
        """The public studies that match every word of ``text`` (in their accession, title, description,
        authors, ORCID iDs, organism, imaging method, DOI, or an image's id, source file or channel names)
        and the filters: ``organism`` a part of its name or its NCBI taxon id, ``method`` a part of its name or
        its FBbi id, ``license`` its SPDX id."""
        s, i = schema.studies.c, schema.images.c
        query = sa.select(schema.studies)
        for word in text.split():
            pattern = f"%{_escape(word)}%"
            in_images = sa.exists().where(i.accession == s.accession, i.version == s.latest_version,
                                          sa.or_(*(c.ilike(pattern, escape="\\")
                                                   for c in (i.image_id, i.source_path, i.channels))))
            query = query.where(sa.or_(in_images, *(c.ilike(pattern, escape="\\") for c in (
                s.accession, s.title, s.description, s.authors, s.orcids, s.organism, s.imaging_method, s.doi))))
        if organism:
            query = query.where(s.ncbi_taxon == int(organism) if organism.isdigit()
                                else s.organism.ilike(f"%{_escape(organism)}%", escape="\\"))
        if method:
            query = query.where(sa.or_(sa.func.lower(s.fbbi_id) == method.lower(),
                                       s.imaging_method.ilike(f"%{_escape(method)}%", escape="\\")))
        if license:
            query = query.where(sa.func.lower(s.license) == license.lower())
        query = query.order_by(s.release_date.desc(), s.accession)
        with self.engine.connect() as db:
            return [dict(r._mapping) for r in db.execute(query)]

    def images(self, accession: str, version: int | None = None) -> list[dict[str, Any]]:
        with self.engine.connect() as db:
            if version is None:
                version = db.execute(sa.select(schema.studies.c.latest_version)
                                     .where(schema.studies.c.accession == accession)).scalar()
            query = (sa.select(schema.images).where(schema.images.c.accession == accession,
                                                    schema.images.c.version == version)
                     .order_by(schema.images.c.image_id))
            return [dict(r._mapping) for r in db.execute(query)]

    def dump(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row of every table, in key order: two catalogs of one archive compare equal."""
        out = {}
        with self.engine.connect() as db:
            for table in (schema.studies, schema.versions, schema.images, schema.files):
                rows = db.execute(sa.select(table).order_by(*table.primary_key.columns))
                out[table.name] = [tuple(r) for r in rows]
        return out


def migrate(engine: sa.Engine) -> None:
    """Create the catalog's tables or bring them to the newest migration."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with _migration_lock(engine), engine.begin() as connection:
        if engine.dialect.name == "postgresql":  # one migrating process at a time
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(7234001)"))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


@contextlib.contextmanager
def _migration_lock(engine: sa.Engine) -> Iterator[None]:
    """A SQLite catalog's migrations one process at a time (a lock file beside it)."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _escape(word: str) -> str:
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _delete(db: sa.Connection, accession: str) -> None:
    for table in (schema.files, schema.images, schema.versions, schema.studies):
        db.execute(table.delete().where(table.c.accession == accession))


def _insert(db: sa.Connection, rows: dict[str, list[dict[str, Any]]]) -> None:
    for name in ("studies", "versions", "images", "files"):
        if rows[name]:
            db.execute(getattr(schema, name).insert(), rows[name])


# ---------------------------------------------------------------- rows from the archive's documents


def accession_rows(archive: str, accession: str) -> dict[str, list[dict[str, Any]]]:
    """The catalog rows of ``accession``'s public versions, read from their manifests and QC documents."""
    fs, root = resolve(archive)
    rows: dict[str, list[dict[str, Any]]] = {"studies": [], "versions": [], "images": [], "files": []}
    found = public_versions(archive, accession)  # (a withdrawn version is not found)
    for manifest in found:
        vdir = join(root, accession, f"v{manifest['version']}")
        rows["versions"].append(_version_row(fs, vdir, manifest))
        rows["images"] += _image_rows(fs, vdir, manifest)
        rows["files"] += [{"accession": accession, "version": manifest["version"], "path": f["path"],
                           "size": f["size"], "sha256": f["sha256"]}
                          for f in manifest["files"] if logical_path(f["path"]).startswith("originals/")]
    if found:
        rows["studies"].append(_study_row(found[-1], len(found), rows["images"]))
    return rows


def _version_row(fs: Any, vdir: str, manifest: dict[str, Any]) -> dict[str, Any]:
    with fs.open(join(vdir, MANIFEST), "rb") as fh:
        manifest_sha256 = hashlib.sha256(fh.read()).hexdigest()
    return {"accession": manifest["accession"], "version": manifest["version"], "created": manifest["created"],
            "release_date": _date(manifest.get("release_date")), "fingerprint": manifest["fingerprint"],
            "manifest_sha256": manifest_sha256, "files": len(manifest["files"]),
            "bytes": sum(f["size"] for f in manifest["files"]),
            "released_early": bool((manifest.get("released") or {}).get("early")),
            "url": f"{manifest['accession']}/v{manifest['version']}/index.html"}


def _image_rows(fs: Any, vdir: str, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        qc = {row["image_id"]: row for row in QCDocument.read(fs, join(vdir, "qc", "report.json")).images}
    except FileNotFoundError:
        qc = {}
    sizes = _store_sizes(manifest)
    out = []
    for image in manifest.get("images", []):
        row = qc.get(image["image_id"], {})
        published = image.get("status") == "published"
        out.append({
            "accession": manifest["accession"], "version": manifest["version"], "image_id": image["image_id"],
            "source_path": image["source_path"], "kind": "label" if image.get("label_of") else "image",
            "label_of": image.get("label_of"), "status": image["status"], "qc": image.get("qc", "not run"),
            "path": image.get("path"), "axes": row.get("axes"), "shape": row.get("shape"), "dtype": row.get("dtype"),
            **{f"size_{a}": row.get(f"size_{a}") for a in "xyzct"},
            **{f"pixel_size_{a}": row.get(f"pixel_size_{a}") for a in "xyz"},
            "unit": row.get("unit"), "channels": row.get("channel_names"),
            "codec": image.get("codec") if published else None,
            "bytes": (image.get("bytes") or sizes.get(image.get("path") or "")) if published else None,
        })
    return out


def _store_sizes(manifest: dict[str, Any]) -> dict[str, int]:
    """The bytes of each published store (its own objects; a label's are its own, not its image's)."""
    sizes = dict.fromkeys((i["path"] for i in manifest.get("images", []) if i.get("path")), 0)
    for entry in manifest["files"]:  # each object's store: the longest of its folders that is one (a label's
        parts = entry["path"].split("/")  # own, not its image's); a lookup per folder, not a scan of every store
        for end in range(len(parts) - 1, 0, -1):  # (10,000 images: 70,000 objects by 10,000 stores took 37 s)
            if (folder := "/".join(parts[:end])) in sizes:
                sizes[folder] += entry["size"]
                break
    return sizes


def _study_row(latest: dict[str, Any], count: int, images: list[dict[str, Any]]) -> dict[str, Any]:
    study = latest.get("study") or {}  # manifests before format 3 name only the title and release date
    organism = study.get("organism") or {}
    method = study.get("imaging_method") or {}
    authors = study.get("authors") or []
    shown = [i for i in images if i["version"] == latest["version"] and i["kind"] == "image"
             and i["status"] == "published"]
    first = shown[0]["image_id"] if shown else None
    version = f"{latest['accession']}/v{latest['version']}"
    return {"accession": latest["accession"], "latest_version": latest["version"], "versions": count,
            "title": study.get("title") or latest.get("title") or latest["accession"],
            "description": study.get("description") or "", "authors": "; ".join(a["name"] for a in authors),
            "orcids": " ".join(a["orcid"] for a in authors if a.get("orcid")),
            "organism": organism.get("scientific_name"), "ncbi_taxon": organism.get("ncbi_taxon"),
            "imaging_method": method.get("name"), "fbbi_id": method.get("fbbi_id"),
            "license": study.get("license"), "doi": study.get("doi"),
            "release_date": _date(study.get("release_date") or latest.get("release_date")),
            "images": len(shown), "bytes": sum(f["size"] for f in latest["files"]),
            "thumbnail": next((posixpath.normpath(f"{version}/{f['path']}") for f in latest["files"]
                               if first and logical_path(f["path"]) == f"thumbnails/{first}.png"), None),
            "url": f"{version}/index.html"}


def _date(value: str | None) -> dt.date | None:
    return dt.date.fromisoformat(value) if value else None


def rows_of(results: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Search results as JSON-ready dictionaries."""
    for row in results:
        yield {k: v.isoformat() if isinstance(v, dt.date) else v for k, v in row.items()}
