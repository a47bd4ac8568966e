"""The ``zarrchive`` command line.

Exit codes: 0 a version was published (or the submission is unchanged since its
latest version; for ``validate``: no errors; for ``convert``: written), 1 nothing
was published (the reasons are printed; for ``validate``: errors found; for
``convert``: the input could not be converted), 2 usage or configuration errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterator, NoReturn, Sequence

from zarrchive.errors import ConfigError, NotFound, ZarrchiveError
from zarrchive.records import Publication
from zarrchive.session import Interrupted, prefect_api, preload, stop_on_signals

EXIT_OK, EXIT_NOT_PUBLISHED, EXIT_USAGE = 0, 1, 2
PROFILES = ("compat", "max", "fixed")
PROFILE_HELP = ("codecs to choose from per image: compat (every Zarr v3 reader), max (also pcodec, JPEG-LS and "
                "JPEG-XL: smaller; zarr-python reads them with numcodecs[pcodec] and imagecodecs-zarr), fixed "
                "(compress.codec); default: the config's")


def _curator_command(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A curator's command on an accession's versions: its accession, archive and configuration."""
    command = sub.add_parser(name, help=help)
    command.add_argument("accession")
    command.add_argument("--archive", required=True)
    command.add_argument("--config", help="YAML merged over configs/default.yaml (archive.private)")
    command.add_argument("--json", action="store_true")
    return command


class UsageError(Exception):
    """A command line argparse refuses, with argparse's message and the usage of the command it was for."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    """argparse's parser, raising ``UsageError`` instead of printing and exiting: ``main`` reports it like every
    other failure (one JSON object with ``--json``), exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zarrchive", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    ingest = sub.add_parser("ingest", help="ingest one submission folder (or fsspec URL) into an archive")
    ingest.add_argument("submission", help="folder or URL holding submission.yaml and the files it lists")
    ingest.add_argument("--archive", required=True, help="archive root: a folder or fsspec URL")
    ingest.add_argument("--config", help="YAML merged over configs/default.yaml")
    ingest.add_argument("--json", action="store_true", help="print one JSON object for scripts")
    ingest.add_argument("--codec-profile", choices=PROFILES, help=PROFILE_HELP)

    demo = sub.add_parser("demo", help="generate a sample submission and ingest it")
    demo.add_argument("--archive", default="zarrchive-demo/archive", help="archive folder (default: %(default)s)")
    demo.add_argument("--config", help="YAML merged over configs/default.yaml")
    demo.add_argument("--json", action="store_true", help="print one JSON object for scripts")

    conv = sub.add_parser("convert", help="convert one file to OME-Zarr, outside of an archive run")
    conv.add_argument("input", help="an image file (OME-TIFF, TIFF, PNG, JPEG; ND2, CZI, LIF with their plugins)")
    conv.add_argument("output", help="the .ome.zarr folder to write")
    conv.add_argument("--config", help="YAML merged over configs/default.yaml (convert, pyramid, compress, cluster)")
    conv.add_argument("--overwrite", action="store_true", help="replace an existing output")
    conv.add_argument("--codec-profile", choices=PROFILES, help=PROFILE_HELP)

    validate = sub.add_parser("validate", help="check a submission (submission.yaml and its files) without ingesting")
    validate.add_argument("submission", help="folder or URL holding submission.yaml")
    validate.add_argument("--config", help="YAML merged over configs/default.yaml")
    validate.add_argument("--json", action="store_true", help="print the findings as JSON")

    show = sub.add_parser("show", help="print what is published under an accession")
    show.add_argument("accession")
    show.add_argument("--archive", required=True)
    show.add_argument("--json", action="store_true")

    lineage = sub.add_parser("lineage", help="where a published version's images came from, and what changed")
    lineage.add_argument("accession")
    lineage.add_argument("--archive", required=True)
    lineage.add_argument("--version", type=int, help="a version number (default: the latest)")
    lineage.add_argument("--image", help="one image id")
    lineage.add_argument("--json", action="store_true")

    verify = sub.add_parser("verify", help="re-hash published objects against their manifests (fixity)")
    verify.add_argument("target", nargs="?", help="ACCESSION or ACCESSION/vN (default with --all: every accession)")
    verify.add_argument("--archive", required=True)
    verify.add_argument("--all", action="store_true", help="every accession of the archive")
    verify.add_argument("--sample", type=float, default=1.0,
                        help="hash this fraction of the objects, a share that rotates from audit to audit so that "
                             "1/FRACTION audits cover everything (every object is still listed and sized)")
    verify.add_argument("--json", action="store_true")

    deploy = sub.add_parser("deploy", help="register a consortium's deployments with the Prefect server")
    deploy_cmds = deploy.add_subparsers(dest="action", required=True)
    register = deploy_cmds.add_parser("register", help="validate a consortium file, then create or update its "
                                                      "deployments (ingest, nightly import, fixity audit, embargo release)")
    register.add_argument("file", help="the consortium's YAML file (see configs/consortia/example.yaml)")
    register.add_argument("--json", action="store_true")
    listing = deploy_cmds.add_parser("list", help="each consortium's deployments, schedules and next runs")
    listing.add_argument("name", nargs="?", help="one consortium")
    listing.add_argument("--json", action="store_true")
    removing = deploy_cmds.add_parser("remove", help="delete a consortium's deployments")
    removing.add_argument("name")
    removing.add_argument("--json", action="store_true")
    starting = deploy_cmds.add_parser("run", help="start an ingest run of a deployment, named after the submission "
                                                  "from its creation (ingest <folder>)")
    starting.add_argument("deployment", help="e.g. ingest_submission/acme")
    starting.add_argument("submission", help="the submission folder or URL, as the worker sees it")
    starting.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                          help="another parameter of the run (a JSON value, or text), e.g. create_archive=true")
    starting.add_argument("--json", action="store_true")

    rel = _curator_command(sub, "release", "release embargoed versions of an accession now (a curator's request)")
    rel.add_argument("--version", type=int, help="one version (default: every embargoed one)")
    rel.add_argument("--curator", required=True, help="who asks for it (recorded in the version's lineage)")
    rel.add_argument("--reason", required=True, help="why (recorded)")
    out = _curator_command(sub, "withdraw", "withdraw a public version (kept and recorded, no longer listed)")
    out.add_argument("--version", type=int, required=True, help="the public version withdrawn")
    out.add_argument("--curator", required=True, help="who withdraws it (recorded)")
    out.add_argument("--reason", required=True, help="why (recorded, and shown in versions.json)")
    emb = _curator_command(sub, "embargo", "change the release date of an accession's embargoed versions")
    emb.add_argument("--until", required=True, help="the new release date, YYYY-MM-DD")
    emb.add_argument("--version", type=int, help="one version (default: every embargoed one)")
    emb.add_argument("--curator", required=True, help="who asks for it (recorded in the version's lineage)")
    emb.add_argument("--reason", required=True, help="why (recorded)")

    feed = sub.add_parser("changes", help="what became public in the archive (the changes feed)")
    feed.add_argument("--archive", required=True)
    feed.add_argument("--since", help="an ISO time: only later events")
    feed.add_argument("--json", action="store_true", help="one JSON object (the events)")

    find = sub.add_parser("search", help="find public studies in the archive's catalog")
    find.add_argument("text", nargs="?", default="", help="words that must all appear (title, authors, channels…)")
    find.add_argument("--archive", required=True)
    find.add_argument("--config", help="YAML merged over configs/default.yaml (catalog.url)")
    find.add_argument("--organism", help="a part of the organism's name, or its NCBI taxon id")
    find.add_argument("--method", help="a part of the imaging method's name, or its FBbi id")
    find.add_argument("--license", help="an SPDX licence id, e.g. CC-BY-4.0")
    find.add_argument("--json", action="store_true")

    cat = sub.add_parser("catalog", help="the catalog of public studies (search, the archive's front page)")
    cat_cmds = cat.add_subparsers(dest="action", required=True)
    for name, text in (("rebuild", "make the catalog and the front page again from the archive's versions"),
                       ("check", "compare the catalog with the archive's versions (changes nothing)")):
        one = cat_cmds.add_parser(name, help=text)
        one.add_argument("--archive", required=True)
        one.add_argument("--config", help="YAML merged over configs/default.yaml (catalog.url)")
        one.add_argument("--json", action="store_true")

    clean = sub.add_parser("clean", help="remove what killed runs left (staging folders, unfinished stores)")
    clean.add_argument("--config", help="YAML merged over configs/default.yaml (staging.root, staging.work)")
    clean.add_argument("--json", action="store_true")

    workers = sub.add_parser("worker-env", help="the environment for a Dask scheduler and workers a facility starts "
                                                "itself (cluster.address): export lines for a shell or job script")
    workers.add_argument("--memory-limit", required=True, help="each worker's --memory-limit, e.g. 16GiB")
    workers.add_argument("--config", help="YAML merged over configs/default.yaml (cluster.worker_memory)")
    workers.add_argument("--json", action="store_true")

    submission = sub.add_parser("submission", help="help depositors prepare a submission")
    sub_cmds = submission.add_subparsers(dest="action", required=True)
    new = sub_cmds.add_parser("new", help="write a submission.yaml template listing the files in DIR")
    new.add_argument("dir")
    new.add_argument("--force", action="store_true", help="overwrite an existing submission.yaml")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code. With ``--json``, every outcome prints one JSON object, errors included."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
    except UsageError as exc:  # a usage error is reported like the others: one JSON object when --json was given
        if "--json" in argv:
            print(json.dumps({"status": "usage error", "error": str(exc), "usage": exc.usage.strip()}))
        else:
            print(f"{exc.usage}zarrchive: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # An archive runs offline: the Prefect server must not try to phone home.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Log lines without colour where nobody sees it (standard error is a file, a pipe, a scheduler's capture):
    # Prefect's highlighter costs 0.14 ms a line, and a run of 10,000 images logs 20,000. Yours wins when set.
    if not _is_terminal(sys.stderr):
        os.environ.setdefault("PREFECT_LOGGING_COLORS", "false")
    logging.getLogger("distributed").setLevel(logging.WARNING)
    as_json = bool(getattr(args, "json", False))

    def stopped(signum: int) -> None:  # the run did not unwind in time: the process ends now, still reporting
        _error(Interrupted(signum), as_json, 128 + signum, "stopped")

    try:
        with stop_on_signals(stopped):
            return _dispatch(args)
    except ConfigError as exc:
        return _error(exc, as_json, EXIT_USAGE, "invalid configuration")
    except Interrupted as exc:
        global _interrupted
        _interrupted = exc.signum
        return _error(exc, as_json, 128 + exc.signum, "stopped")
    except Exception as exc:  # every other failure: reported, in JSON when asked, never a bare traceback
        return _error(exc, as_json, EXIT_NOT_PUBLISHED, "error")


_interrupted: int | None = None


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced by something that is not a file, or closed
        return False


def run() -> None:
    """The ``zarrchive`` command: ``main``, then exit at once after a stop signal (threads still busy with work
    that no longer matters are not waited for), and after a command that ended its own way, once the exit
    handlers have run (``exit_now``)."""
    code = main()
    if _interrupted is not None:
        _flush()
        os._exit(code)
    exit_now(code)


def exit_now(code: int) -> None:
    """End the process with ``code`` as Python would, without the interpreter's teardown: the threads that are not
    daemons are waited for and the hooks run before that (``threading._shutdown``: Prefect sends its last events
    there), then the exit handlers (logging's, Prefect's, Dask's, temporary files'), the output is flushed, and
    the process ends. The teardown freed every object of a run one by one: 1.2-1.6 s after a run of 2 to 64
    images on this project's machine, with nothing left to do (every file, server and cluster was closed by the
    command). A file left open and unflushed by a library loses its buffer, as after ``os._exit``."""
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is None or threading.current_thread() is not threading.main_thread():
        sys.exit(code)  # (not the Python this was written for, or not the main thread: the usual exit)
    shutdown()
    atexit._run_exitfuncs()
    _flush()
    os._exit(code)


def _flush() -> None:
    for stream in {id(s): s for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__) if s}.values():
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (| head), a closed stream: nothing more can be written
            pass


def _error(exc: BaseException, as_json: bool, code: int, status: str) -> int:
    text = str(exc) if isinstance(exc, (ZarrchiveError, Interrupted)) else f"{type(exc).__name__}: {exc}"
    if as_json:
        print(json.dumps({"status": status, "error": text}))
    else:
        print(f"zarrchive: {text}", file=sys.stderr)
    return code


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "ingest":
        return _ingest(args.submission, args.archive, args.config, args.json, args.codec_profile)
    if args.command == "demo":
        from zarrchive.demo import make_sample_submission

        folder = make_sample_submission(Path(args.archive).resolve().parent / "submission")
        if not args.json:
            print(f"Sample submission: {folder}")
        return _ingest(str(folder), args.archive, args.config, args.json)
    if args.command == "convert":
        return _convert(args.input, args.output, args.config, args.overwrite, args.codec_profile)
    if args.command == "validate":
        return _validate(args.submission, args.config, args.json)
    if args.command == "show":
        return _show(args.accession, args.archive, args.json)
    if args.command == "lineage":
        return _lineage(args.accession, args.archive, args.version, args.image, args.json)
    if args.command == "submission":
        return _submission_new(args.dir, args.force)
    if args.command == "verify":
        return _verify(args.target, args.archive, args.all, args.sample, args.json)
    if args.command == "clean":
        return _clean(args.config, args.json)
    if args.command == "worker-env":
        return _worker_env(args.memory_limit, args.config, args.json)
    if args.command == "deploy":
        return _deploy(args)
    if args.command == "release":
        return _release(args)
    if args.command == "withdraw":
        return _withdraw(args)
    if args.command == "embargo":
        return _embargo(args)
    if args.command == "changes":
        return _changes(args.archive, args.since, args.json)
    if args.command == "search":
        return _search(args)
    if args.command == "catalog":
        return _catalog(args)
    return EXIT_USAGE


def _settings(config: str | None):
    from zarrchive import credentials
    from zarrchive.config import load_settings

    settings = load_settings(config)
    credentials.apply(settings.storage)
    return settings


def _private(archive: str, config: str | None) -> str:
    from zarrchive.archive.versions import require_private

    return require_private(archive, _settings(config).archive.private)


def _search(args: argparse.Namespace) -> int:
    from zarrchive.units import human_size
    from zarrchive.catalog import Catalog, rows_of

    settings = _settings(args.config)
    with Catalog(args.archive, settings.catalog.url, settings.catalog.password_env) as catalog:
        found = catalog.search(args.text, args.organism, args.method, args.license)
    base = settings.publish.public_base_url or args.archive
    for row in found:
        row["url"] = f"{base.rstrip('/')}/{row['url']}"
        row["thumbnail"] = f"{base.rstrip('/')}/{row['thumbnail']}" if row["thumbnail"] else None
    if args.json:
        print(json.dumps({"status": "ok", "studies": list(rows_of(found))}))
    elif not found:
        print("No public study matches.")
    else:
        for row in found:
            print(f"{row['accession']} v{row['latest_version']}  {row['release_date']}  {row['title']}\n"
                  f"    {row['authors']}; {row['organism'] or 'organism not given'}; "
                  f"{row['imaging_method'] or 'method not given'}; {row['images']} image(s), "
                  f"{human_size(row['bytes'])}\n    {row['url']}")
    return EXIT_OK


def _catalog(args: argparse.Namespace) -> int:
    from zarrchive.archive.front import write_index
    from zarrchive.catalog import Catalog

    settings = _settings(args.config)
    with Catalog(args.archive, settings.catalog.url, settings.catalog.password_env) as catalog:
        if args.action == "rebuild":
            studies = catalog.rebuild()
            write_index(args.archive, catalog)
            result = {"status": "ok", "studies": studies, "catalog": catalog.url}
            text = f"Catalog of {catalog.archive} rebuilt: {studies} public stud(ies); front page written"
        else:
            with Catalog(args.archive, "sqlite://") as fresh:
                fresh.rebuild()
                live, truth = catalog.dump(), fresh.dump()
            differences = {table: {"missing": len(set(truth[table]) - set(live[table])),
                                   "extra": len(set(live[table]) - set(truth[table]))}
                           for table in truth if truth[table] != live[table]}
            result = {"status": "ok" if not differences else "stale", "differences": differences}
            text = ("The catalog matches the archive" if not differences else
                    "The catalog differs from the archive (rows missing/extra): " + "; ".join(
                        f"{t} {d['missing']}/{d['extra']}" for t, d in differences.items())
                    + f"; run 'zarrchive catalog rebuild --archive {args.archive}'")
    print(json.dumps(result) if args.json else text)
    return EXIT_OK if result["status"] == "ok" else EXIT_NOT_PUBLISHED


def _release(args: argparse.Namespace) -> int:
    """An early release on request: every embargoed version of the accession (or one), recorded with who and why."""
    import datetime as dt

    from zarrchive.archive.front import refresh
    from zarrchive.archive.versions import embargo, manifests, set_embargo
    from zarrchive.tasks.release import Release, release_version

    private = _private(args.archive, args.config)
    chosen = [m for m in manifests(private, args.accession) if args.version is None or m["version"] == args.version]
    found = [m["version"] for m in chosen]
    if not found:
        raise NotFound(f"{args.accession} has no embargoed version" + (f" {args.version}" if args.version else ""))
    with _lease_of(args.archive, args.accession, args.config):  # (two curators at once keep both entries)
        record = embargo(private, args.accession)  # (read once: its dates as they were before this release)
        until = {m["version"]: record.release_date(m) for m in chosen}
        set_embargo(private, args.accession, found, dt.date.today(), args.curator, args.reason,
                    "brought forward on request")
    base = _settings(args.config).publish.public_base_url
    released = []
    for number in found:
        why = Release(by=args.curator, reason=args.reason, embargoed_until=until[number])
        try:
            released.append(release_version(args.archive, private, args.accession, number, why,
                                             public_base_url=base))
        except FileNotFoundError:  # the daily release moved it meanwhile: it is public, which was asked
            if number not in {m["version"] for m in manifests(args.archive, args.accession)}:
                raise  # (an object missing from the private copy: not released, reported)
            released.append({"version": number})
    for problem in refresh(args.archive, args.accession, _settings(args.config).catalog):
        print(f"zarrchive: {problem}", file=sys.stderr)
    if args.json:
        print(json.dumps({"status": "released", "accession": args.accession,
                          "versions": [m["version"] for m in released]}))
    else:
        print(f"Released {args.accession} " + ", ".join(f"v{m['version']}" for m in released)
              + f" early, as {args.curator} asked: {args.reason}")
    return EXIT_OK


@contextlib.contextmanager
def _lease_of(archive: str, accession: str, config: str | None) -> Iterator[None]:
    """Hold the accession's publishing lease (a curator's change of what publish and release also write)."""
    from zarrchive.archive import lease

    settings = _settings(config).publish
    held = lease.acquire(archive, accession, settings.lease_seconds, settings.lease_wait_seconds)
    try:
        yield
    finally:
        held.release()


def _withdraw(args: argparse.Namespace) -> int:
    """A curator withdraws a public version: recorded once, in versions.json, the catalog, the front page and the
    changes feed; its objects and pages stay as they were published."""
    from zarrchive.archive.changes import has_event, record_change, write_feed
    from zarrchive.archive.front import refresh
    from zarrchive.archive.storage import join, resolve, write_bytes_atomic
    from zarrchive.archive.versions import MANIFEST, VERSIONS, version_index, withdraw
    from zarrchive.tasks.publish import version_url

    settings = _settings(args.config)
    with _lease_of(args.archive, args.accession, args.config):  # versions.json is rewritten by publish and release
        record, new = withdraw(args.archive, args.accession, args.version, args.curator, args.reason)
        fs, root = resolve(args.archive)
        write_bytes_atomic(fs, join(root, args.accession, VERSIONS),
                           version_index(args.archive, args.accession).to_bytes())
        if not has_event(args.archive, "withdrawn", args.accession, args.version):  # (an interrupted one finished)
            _location, url = version_url(args.archive, args.accession, args.version, settings.publish)
            record_change(args.archive, "withdrawn", args.accession, args.version, fs,
                          join(root, args.accession, f"v{args.version}", MANIFEST), url)
        write_feed(args.archive)  # (an event written by an interrupted withdrawal is in the feed too)
    for problem in refresh(args.archive, args.accession, settings.catalog):
        print(f"zarrchive: {problem}", file=sys.stderr)
    if not new:
        raise NotFound(f"{args.accession} v{args.version} was withdrawn already ({record['reason']})")
    if args.json:
        print(json.dumps({"status": "withdrawn", **{k: record[k] for k in ("accession", "version", "by", "reason",
                                                                          "at")}}))
    else:
        print(f"Withdrew {args.accession} v{args.version}, as {args.curator} asked: {args.reason}")
    return EXIT_OK


def _embargo(args: argparse.Namespace) -> int:
    import datetime as dt

    from zarrchive.archive.versions import manifests, set_embargo

    private = _private(args.archive, args.config)
    found = [m["version"] for m in manifests(private, args.accession)
             if args.version is None or m["version"] == args.version]
    if not found:
        raise NotFound(f"{args.accession} has no embargoed version"
                       + (f" {args.version}" if args.version else "") + f" in {private}")
    try:
        until = dt.date.fromisoformat(args.until)
    except ValueError:
        raise ConfigError("--until", [f"{args.until!r} is not a date written YYYY-MM-DD"]) from None
    action = "extended" if until > dt.date.today() else "brought forward"
    with _lease_of(args.archive, args.accession, args.config):
        record = set_embargo(private, args.accession, found, until, args.curator, args.reason, action)
    if args.json:
        print(json.dumps({"status": "ok", "accession": args.accession, "versions": found,
                          "release_date": until.isoformat(),
                          "history": record.history}))
    else:
        print(f"{args.accession} " + ", ".join(f"v{v}" for v in found)
              + f": released on {until} ({action} by {args.curator})")
    return EXIT_OK


def _changes(archive: str, since: str | None, as_json: bool) -> int:
    import datetime as dt

    from zarrchive.archive.changes import changes

    try:
        after = dt.datetime.fromisoformat(since) if since else None
    except ValueError:
        raise ConfigError("--since", [f"{since!r} is not an ISO time (2026-11-25T10:00:00+00:00)"]) from None
    if after is not None and after.tzinfo is None:
        after = after.replace(tzinfo=dt.timezone.utc)
    events = changes(archive, after)
    if as_json:
        print(json.dumps(events))
    else:
        for e in events:
            print(f"{e['time']}  {e['event']:<9} {e['accession']} v{e['version']}  {e['url']}")
    return EXIT_OK


def _deploy(args: argparse.Namespace) -> int:
    """``deploy register|list|remove``: against the Prefect server of ``PREFECT_API_URL``."""
    from prefect.settings import PREFECT_API_URL

    from zarrchive import consortium, deploy

    if not PREFECT_API_URL.value():
        raise ConfigError("deploy", ["PREFECT_API_URL is not set: point it at the Prefect server to register with "
                                     "(e.g. http://127.0.0.1:4200/api)"])
    if args.action == "register":
        group = consortium.read(args.file)
        done = deploy.register(group)
        if args.json:
            print(json.dumps({"status": "registered", "consortium": group.name,
                              "deployments": [vars(d) | {"full_name": d.full_name} for d in done]}))
        else:
            print(f"Registered consortium {group.name}:")
            for d in done:
                print(f"  {d.full_name}" + (f"  schedule {d.schedule} ({group.timezone})" if d.schedule else ""))
        return EXIT_OK
    if args.action == "list":
        found = deploy.listed(args.name)
        if args.json:
            print(json.dumps({name: [vars(d) | {"full_name": d.full_name} for d in ds] for name, ds in found.items()}))
        else:
            for name, ds in found.items():
                print(name)
                for d in ds:
                    print(f"  {d.full_name:<40} {d.schedule or 'no schedule':<28} next: {d.next_run or '-'}")
            if not found:
                print("no consortium is registered")
        return EXIT_OK
    if args.action == "run":
        started = deploy.start_run(args.deployment, args.submission, _params(args.param))
        if args.json:
            print(json.dumps({"status": "started", **started}))
        else:
            print(f"Started {started['name']!r} ({started['id']}): {started['url'] or 'see the Prefect UI'}")
        return EXIT_OK
    removed = deploy.remove(args.name)
    if args.json:
        print(json.dumps({"status": "removed", "consortium": args.name, "deployments": removed}))
    else:
        print(f"Removed {len(removed)} deployment(s) of {args.name}" + "".join(f"\n  {d}" for d in removed))
    return EXIT_OK if removed else EXIT_NOT_PUBLISHED


def _params(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as run parameters: a value that reads as JSON is that value, else the text."""
    found = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError("--param", [f"{pair!r}: give KEY=VALUE"])
        try:
            found[key] = json.loads(value)
        except ValueError:
            found[key] = value
    return found


def _verify(target: str | None, archive: str, every: bool, sample: float, as_json: bool) -> int:
    from zarrchive.archive import fixity

    if not target and not every:
        raise ConfigError("verify", ["name an ACCESSION (or ACCESSION/vN), or give --all"])
    if not 0 < sample <= 1:
        raise ConfigError("verify", [f"--sample {sample}: a fraction above 0 and at most 1"])
    result = fixity.audit(archive, None if every else target, sample)
    if not result.versions:
        raise ZarrchiveError(f"no published version of {target or 'any accession'} in {archive}")
    log = fixity.record_audit(archive, result)
    if as_json:
        print(json.dumps({**result.as_dict(), "audit_log": log}))
    else:
        share = f"{result.hashed} of them hashed (round {result.round} of {result.buckets})" if result.buckets > 1 \
            else "every one hashed"
        print(f"{len(result.versions)} version(s), {result.objects} objects listed, {share}: "
              + ("no problem found" if result.ok else f"{len(result.problems)} problem(s)"))
        for p in result.problems:
            print(f"  {p['version']}/{p['path']}: {p['detail']}")
        print(f"audit recorded at {log}")
    return EXIT_OK if result.ok else EXIT_NOT_PUBLISHED


def _clean(config: str | None, as_json: bool) -> int:
    from zarrchive.archive.staging import clean_stale
    from zarrchive.config import load_settings

    removed = clean_stale(load_settings(config).staging)
    if as_json:
        print(json.dumps({"status": "ok", "removed": removed}))
    else:
        print(f"removed {len(removed)} item(s) left by killed runs" + "".join(f"\n  {p}" for p in removed))
    return EXIT_OK


def _worker_env(memory_limit: str, config: str | None, as_json: bool) -> int:
    """What zarrchive gives the workers it starts (memory thresholds, glibc's allocator thresholds) and their
    scheduler (``cluster.allowed_failures``), for a cluster a facility starts itself: without the allocator's
    thresholds, a worker's pixel work spends about as long again in page faults."""
    from dask.utils import parse_bytes

    from zarrchive.cluster import export_lines, worker_environment
    from zarrchive.config import load_settings

    try:
        limit = parse_bytes(memory_limit)
    except (ValueError, TypeError) as exc:
        limit = exc
    if not isinstance(limit, int) or limit <= 0:
        raise ConfigError("--memory-limit", [f"{memory_limit!r} is not a size of memory (16GiB, 4000MB…)"])
    cluster = load_settings(config).cluster
    variables = (worker_environment(cluster.worker_memory, limit)
                 + [("DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES", str(cluster.allowed_failures))])
    if as_json:
        print(json.dumps({"status": "ok", "environment": dict(variables)}))
    else:
        print("\n".join(export_lines(variables)))
    return EXIT_OK


def _ingest(submission: str, archive: str, config: str | None, as_json: bool, profile: str | None = None) -> int:
    from zarrchive.config import load_settings

    load_settings(config, _profile(profile))  # configuration errors are usage errors: report them before a run
    from zarrchive.flows.ingest import ingest

    with prefect_api(meanwhile=preload):
        publication = ingest(submission, archive, config, profile, create_archive=True)
    _report(publication, as_json)
    return EXIT_OK if publication.ok else EXIT_NOT_PUBLISHED


def _report(pub: Publication, as_json: bool) -> None:
    from zarrchive import outcome

    if as_json:
        print(pub.model_dump_json())
        return
    if pub.created_archive:
        print(f"Created a new archive at {pub.archive}")
    headline = {
        "published": f"Published {pub.accession} v{pub.version}: {pub.version_uri}",
        "partial": f"Published {pub.accession} v{pub.version} without some images: {pub.version_uri}",
        "unchanged": f"Unchanged: {pub.accession} v{pub.version} already holds this submission: {pub.version_uri}",
        "refused": f"Submission {pub.submission} refused; nothing was published:",
        "not-published": f"Nothing published for {pub.accession}: {pub.status}",
        "busy": f"Nothing published for {pub.accession}: another run is publishing it; retry later",
        "damaged": f"Nothing published for {pub.accession}: its latest version v{pub.version} is damaged",
        "rejected": f"Nothing published for {pub.accession}: not approved",
    }[outcome.kind(pub)]
    stream = sys.stderr if pub.status == "refused" else sys.stdout
    print(headline, file=stream)
    for o in pub.images:
        where = f" -> {o.path}" if o.path else ""
        what = f"label {o.label_name or o.image_id} of {o.label_of}, " if o.label_of else ""
        labels = f", labels: {', '.join(o.labels)}" if o.labels else ""
        print(f"  {o.image_id} ({o.source_path}): {what}{o.status}, QC {o.qc}{labels}{where}"
              + (f"\n    {o.error}" if o.error else ""))
    for reason in pub.reasons:
        print(f"  {reason}" if pub.status == "refused" else f"  reason: {reason}", file=stream)


def _profile(profile: str | None) -> dict | None:
    """Settings overrides for ``--codec-profile``."""
    return {"compress": {"profile": profile}} if profile else None


def _convert(source: str, output: str, config: str | None, overwrite: bool, profile: str | None = None) -> int:
    from tqdm import tqdm

    from zarrchive.config import load_settings
    from zarrchive.standalone import convert_to_ome_zarr

    settings = load_settings(config, _profile(profile))
    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr, total=None) as bar:
        def progress(message: str, done: int | None = None, total: int | None = None) -> None:
            bar.set_description_str(message, refresh=False)
            if total is not None:  # the pixels of level 0 written so far
                if not done or bar.total != total:
                    bar.reset(total=total)
                bar.update((done or 0) - bar.n)
            else:
                bar.refresh()

        try:
            groups = convert_to_ome_zarr(source, output, settings, progress, overwrite)
        except ZarrchiveError as exc:
            bar.close()
            print(f"zarrchive: {exc}", file=sys.stderr)
            return EXIT_NOT_PUBLISHED
    print(f"Wrote {output}" + (f" ({len(groups)} series: {', '.join(groups)})" if len(groups) > 1 else ""))
    return EXIT_OK


def _validate(submission: str, config: str | None, as_json: bool) -> int:
    from zarrchive.config import load_settings
    from zarrchive.tasks.intake import check_folder

    settings = load_settings(config)
    doc, _sha, findings = check_folder(submission, settings.submission)
    findings += _probe_images(submission, doc, findings, settings)
    errors = [f for f in findings if f.severity == "error"]
    if as_json:
        print(json.dumps({"submission": submission, "valid": not errors,
                          "findings": [f.model_dump() for f in findings]}))
    else:
        for finding in findings:
            print(f"{finding.severity:<8}{finding.line()}")
        print(f"{submission}: {len(errors)} error(s), {len(findings) - len(errors)} warning(s)"
              + ("" if errors else " — ready to submit"))
    return EXIT_NOT_PUBLISHED if errors else EXIT_OK


def _probe_images(submission: str, doc, findings: list, settings) -> list:
    """Each listed image or label of a local submission opened as far as the ingest's convert would, so what it
    would fail on (empty, not an image, unsupported, over budget, truncated) is named before submitting."""
    from fsspec.implementations.local import LocalFileSystem

    from zarrchive.archive.storage import resolve
    from zarrchive.records import Finding

    fs, root = resolve(submission)
    if doc is None or not isinstance(fs, LocalFileSystem):
        return []
    from zarrchive.tasks.convert import probe_file

    bad = {f.file for f in findings if f.severity == "error" and f.file}
    out = []
    for i, entry in enumerate(doc.files):
        if entry.kind == "attachment" or entry.path in bad:
            continue
        if problem := probe_file(os.path.join(root, entry.path), entry.path, entry, settings.convert):
            out.append(Finding(severity="error", check="image_readable", field=f"files[{i}] ({entry.path})",
                               file=entry.path, message=problem))
    return out


def _show(accession: str, archive: str, as_json: bool) -> int:
    from zarrchive.units import human_size
    from zarrchive.archive.versions import is_shared, private_location, published_versions

    versions = published_versions(archive, accession, private_location(archive, None))
    if not versions:
        raise NotFound(f"no published version of {accession} in {archive}")
    if as_json:
        print(json.dumps(versions, default=str))
        return EXIT_OK
    latest = versions[-1]
    print(f"{accession}: {latest['title']}")
    print(f"  release date {latest['release_date']}" + (" (embargoed)" if latest.get("embargoed") else ""))
    for m in versions:
        size = sum(f["size"] for f in m["files"])
        stored = sum(f["size"] for f in m["files"] if not is_shared(f["path"]))
        shared = f" ({human_size(stored)} stored by it, the rest shared)" if stored < size else ""
        embargo = f"  embargoed until {m['release_date']} (private)" if m.get("embargoed") else ""
        print(f"  v{m['version']}  {m['created']}  {len(m['files'])} objects, {human_size(size)}{shared}{embargo}")
        images = {img["image_id"] for img in m["images"] if not img.get("label_of")}
        for img in m["images"]:
            if img.get("label_of") in images:  # shown under its image
                continue
            _show_image(img, m["files"], "")
            for label in sorted((x for x in m["images"] if x.get("label_of") == img["image_id"]),
                                key=lambda x: x.get("label_name") or x["image_id"]):
                _show_image(label, m["files"], f"label {label.get('label_name') or label['image_id']}")
    return EXIT_OK


def _show_image(img: dict, files: list[dict], label: str) -> None:
    from zarrchive.units import human_size

    path = img.get("path")
    nested = f"{path}/labels/"
    size = sum(f["size"] for f in files
               if path and f["path"].startswith(path + "/") and not f["path"].startswith(nested))
    name = f"  {label}" if label else img["image_id"]
    labels = f" (labels: {', '.join(img['labels'])})" if img.get("labels") else ""
    print(f"    {name:<28} {img['status']:<10} QC {img['qc']:<8} {human_size(size):>10}  "
          f"{path or img.get('error') or ''}{labels}")


def _lineage(accession: str, archive: str, version: int | None, image: str | None, as_json: bool) -> int:
    from zarrchive.archive.provenance import lineage_of

    info = lineage_of(archive, accession, version, image)  # NotFound: reported by main
    if as_json:
        print(json.dumps(info, default=str))
        return EXIT_OK
    prev = f" (based on v{info['previous_version']})" if info["previous_version"] else ""
    print(f"{accession} v{info['version']}{prev}, published {info['created']} from {info['submission']}")
    print(f"  flow run(s): {', '.join(info['flow_runs']) or '-'}")
    for img in info["images"]:
        print(f"  {img['image_id']}: {img['path']} (tree digest {img['tree_digest']})")
        print(f"    from {img['original']['path']} sha256 {img['original']['sha256']}")
        for src in img["sources"]:
            print(f"    submitted as {src['uri']}")
        print("    stages: " + " -> ".join(f"{s['stage']} ({s['started'][:19]})" for s in img["stages"]))
    wanted = ("zarrchive", "bioio", "bioio-ome-tiff", "bioio-tifffile", "zarr", "numcodecs", "dask", "prefect")
    print("  software: " + ", ".join(f"{n} {info['software'][n]}" for n in wanted if n in info["software"]))
    if info["changes"]:
        for key, items in info["changes"].items():
            if items and not key.endswith("unchanged"):
                print(f"  since v{info['previous_version']}, {key.replace('_', ' ')}: {', '.join(items)}")
    return EXIT_OK



def _submission_new(folder: str, force: bool) -> int:
    from zarrchive.tasks.intake import SUBMISSION_FILE, template_for

    target = Path(folder) / SUBMISSION_FILE
    if not Path(folder).is_dir():
        print(f"zarrchive: {folder}: not a folder", file=sys.stderr)
        return EXIT_USAGE
    if target.exists() and not force:
        print(f"zarrchive: {target} exists (use --force to overwrite)", file=sys.stderr)
        return EXIT_USAGE
    target.write_text(template_for(folder))
    print(f"Wrote {target}: complete the TODO fields, then run 'zarrchive ingest {folder} --archive ...'")
    return EXIT_OK



if __name__ == "__main__":
    run()
