"""The catalog of public studies, search, and the archive's front page.

Studies are ingested through the flow (which keeps the catalog current after each publish), one of them
embargoed and one published twice; the catalog kept live must equal one rebuilt from the archive, on SQLite
and on a real PostgreSQL server, and nothing embargoed is ever found.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from builders import ome_tiff, random_image, submission
from zarrchive.catalog import Catalog, migrate, schema
from zarrchive.cli import main
from zarrchive.errors import ConfigError
from zarrchive.flows.ingest import ingest

pytestmark = pytest.mark.usefixtures("prefect_server")

ZEBRAFISH = "Zebrafish heart regeneration under embargo until the paper appears"


def study(folder: Path, title: str, channels: list[str], images: int = 1, **fields) -> Path:
    files = [{"path": f"img{i}.ome.tif"} for i in range(images)]
    sub = submission(folder, files, title=title, **fields)
    for i in range(images):
        data = (np.add.outer(np.arange(48), np.arange(40)) * (i + 3)).astype("uint16")[np.newaxis, np.newaxis]
        ome_tiff(sub / f"img{i}.ome.tif", np.repeat(data, len(channels), axis=0) + random_image(
            (len(channels), 1, 48, 40), seed=i) % 7, "CZYX", {"x": 0.25, "y": 0.25}, channels=channels)
    return sub


@pytest.fixture(scope="module")
def archive(tmp_path_factory, scheduler, prefect_server):
    """A folder archive of three public studies (one with two versions) and one embargoed study."""
    import yaml

    from conftest import WORK

    root = tmp_path_factory.mktemp("catalog")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({"cluster": {"address": scheduler}, "staging": {"work": WORK}}))
    archive = str(root / "archive")
    subs = {
        "cells": study(root / "cells", "Nuclear pores of HeLa cells by confocal microscopy", ["DAPI", "Nup153-GFP"],
                       organism={"scientific_name": "Homo sapiens", "ncbi_taxon": 9606},
                       imaging_method={"name": "confocal microscopy", "fbbi_id": "FBbi:00000251"},
                       publication={"doi": "10.1038/s41592-018-0195-8"}),
        "mouse": study(root / "mouse", "Whole mouse brain vasculature, cleared and imaged", ["Lectin"], images=2,
                       license="CC0-1.0", organism={"scientific_name": "Mus musculus", "ncbi_taxon": 10090},
                       imaging_method={"name": "light sheet fluorescence microscopy", "fbbi_id": "FBbi:00000369"}),
        "yeast": study(root / "yeast", "Budding yeast mitochondria in time", ["MitoTracker"],
                       organism={"scientific_name": "Saccharomyces cerevisiae"}),
        "fish": study(root / "fish", ZEBRAFISH, ["cmlc2-GFP"],
                      release_date=(dt.date.today() + dt.timedelta(days=300)).isoformat(),
                      organism={"scientific_name": "Danio rerio", "ncbi_taxon": 7955}),
    }
    pubs = {name: ingest(str(sub), archive, str(config)) for name, sub in subs.items()}
    assert all(p.status == "published" for p in pubs.values()) and pubs["fish"].embargoed_until
    text = (subs["cells"] / "submission.yaml").read_text()  # a corrected title: version 2
    (subs["cells"] / "submission.yaml").write_text(text.replace("by confocal microscopy", "(corrected title)"))
    pubs["cells2"] = ingest(str(subs["cells"]), archive, str(config))
    assert pubs["cells2"].version == 2
    return archive, pubs, str(config)


def test_the_live_catalog_equals_one_rebuilt_from_the_archive(archive):
    root, pubs, _ = archive
    assert Path(root, "_catalog", "catalog.sqlite").is_file()  # SQLite beside the studies, nothing to run
    with Catalog(root) as live, Catalog(root, "sqlite://") as fresh:
        assert fresh.rebuild() == 3
        assert live.dump() == fresh.dump()
        studies = {s["accession"]: s for s in live.studies()}
    assert set(studies) == {pubs[n].accession for n in ("cells", "mouse", "yeast")}  # never the embargoed one
    cells = studies[pubs["cells"].accession]
    assert (cells["latest_version"], cells["versions"]) == (2, 2) and "(corrected title)" in cells["title"]
    assert cells["authors"] == "Jane Doe" and cells["orcids"] == "0000-0002-1825-0097"
    assert (cells["organism"], cells["ncbi_taxon"], cells["fbbi_id"]) == ("Homo sapiens", 9606, "FBbi:00000251")
    assert cells["doi"] == "10.1038/s41592-018-0195-8" and cells["release_date"] == dt.date(2026, 1, 1)
    assert cells["url"] == f"{pubs['cells'].accession}/v2/index.html"
    assert "jane@example.org" not in json.dumps(json.loads(Path(pubs["cells2"].version_uri, "manifest.json")
                                                           .read_text())["study"])  # no e-mail made public


def test_image_rows_hold_dimensions_sizes_channels_codec_and_bytes(archive):
    root, pubs, _ = archive
    vdir = Path(pubs["mouse"].version_uri)
    manifest = json.loads((vdir / "manifest.json").read_text())
    with Catalog(root) as catalog:
        rows = catalog.images(pubs["mouse"].accession)
    assert [r["image_id"] for r in rows] == ["img0", "img1"]
    for row in rows:
        assert (row["axes"], row["size_x"], row["size_y"], row["size_c"], row["dtype"]) == ("cyx", 40, 48, 1,
                                                                                          "uint16")
        assert row["pixel_size_x"] == pytest.approx(0.25) and row["unit"] == "micrometer"
        assert row["channels"] == "Lectin" and row["status"] == "published" and row["qc"] == "ok"
        store = [f["size"] for f in manifest["files"] if f["path"].startswith(f"images/{row['image_id']}.ome.zarr/")]
        assert row["bytes"] == sum(store) and row["codec"]
    with Catalog(root) as catalog, catalog.engine.connect() as db:
        originals = db.execute(sa.select(schema.files.c.path).where(
            schema.files.c.accession == pubs["mouse"].accession)).scalars().all()
    assert sorted(originals) == ["originals/img0.ome.tif", "originals/img1.ome.tif"]


@pytest.mark.parametrize("query, expected", [
    ({"text": "mouse brain"}, ["mouse"]),
    ({"text": "HELA corrected"}, ["cells"]),  # any case, every word
    ({"text": "Nup153"}, ["cells"]),  # a channel name
    ({"text": "Doe"}, ["cells", "mouse", "yeast"]),
    ({"text": "0000-0002-1825-0097"}, ["cells", "mouse", "yeast"]),
    ({"text": "10.1038/s41592-018-0195-8"}, ["cells"]),
    ({"organism": "mus"}, ["mouse"]),
    ({"organism": "9606"}, ["cells"]),
    ({"method": "FBbi:00000369"}, ["mouse"]),
    ({"method": "confocal"}, ["cells"]),
    ({"license": "cc0-1.0"}, ["mouse"]),
    ({"text": "mitochondria", "license": "CC0-1.0"}, []),
    ({"text": "zebrafish"}, []),  # embargoed: never found
    ({"organism": "Danio"}, []),
    ({"text": "100%_"}, []),  # LIKE's wildcards are words like any other
])
def test_search_finds_public_studies_and_never_an_embargoed_one(archive, query, expected):
    root, pubs, _ = archive
    with Catalog(root) as catalog:
        found = [s["accession"] for s in catalog.search(**query)]
    assert sorted(found) == sorted(pubs[n].accession for n in expected)


def test_search_from_the_command_line(archive, capsys):
    root, pubs, config = archive
    assert main(["search", "vasculature", "--archive", root, "--config", config, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["accession"] for s in out["studies"]] == [pubs["mouse"].accession]
    assert out["studies"][0]["url"] == f"{root}/{pubs['mouse'].accession}/v1/index.html"
    assert main(["search", "--archive", root, "--config", config, "--organism", "Homo sapiens"]) == 0
    text = capsys.readouterr().out
    assert pubs["cells"].accession in text and "Homo sapiens" in text
    assert main(["search", ZEBRAFISH, "--archive", root, "--config", config]) == 0
    assert "No public study matches" in capsys.readouterr().out


def test_check_finds_a_stale_catalog_and_rebuild_makes_it_whole(archive, tmp_path, capsys):
    import shutil

    root, pubs, config = archive
    copy = tmp_path / "archive"
    shutil.copytree(root, copy)
    assert main(["catalog", "check", "--archive", str(copy), "--config", config, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "ok"
    with Catalog(str(copy)) as catalog, catalog.engine.begin() as db:
        db.execute(schema.images.delete().where(schema.images.c.accession == pubs["mouse"].accession))
        db.execute(schema.studies.update().values(title="tampered"))
    assert main(["catalog", "check", "--archive", str(copy), "--config", config, "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["status"] == "stale" and set(out["differences"]) == {"studies", "images"}
    assert main(["catalog", "rebuild", "--archive", str(copy), "--config", config, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["studies"] == 3
    assert main(["catalog", "check", "--archive", str(copy), "--config", config]) == 0


def test_a_catalog_serves_one_archive_and_takes_no_password_in_its_url(archive, tmp_path, monkeypatch):
    root, _, _ = archive
    url = f"sqlite:///{tmp_path / 'one.sqlite'}"
    Catalog(root, url).close()
    with pytest.raises(ConfigError, match="is the catalog of"):
        Catalog(str(tmp_path / "another-archive"), url)
    with pytest.raises(ConfigError, match="password"):
        Catalog(root, "postgresql+psycopg://user:secret@127.0.0.1/db")
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        Catalog(root, "postgresql+psycopg://user@127.0.0.1/db", password_env="NOT_SET_ANYWHERE")


def test_the_migrations_make_exactly_the_schema_the_code_expects(tmp_path, postgres):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    for url in (f"sqlite:///{tmp_path / 'c.sqlite'}", postgres):
        engine = sa.create_engine(url)
        migrate(engine)
        migrate(engine)  # opening it again changes nothing
        with engine.connect() as db:
            assert compare_metadata(MigrationContext.configure(db), schema.metadata) == []
            assert db.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0001"
        engine.dispose()


def test_on_postgresql_the_catalog_is_the_same_and_so_are_the_answers(archive, postgres):
    root, pubs, _ = archive
    with Catalog(root, postgres) as pg, Catalog(root) as lite:
        with pg.engine.begin() as db:  # a fresh start for this archive
            for table in (schema.files, schema.images, schema.versions, schema.studies):
                db.execute(table.delete())
        for accession in sorted({p.accession for p in pubs.values()}):  # kept live, one accession at a time
            pg.index_accession(accession)
        assert pg.dump() == lite.dump()
        assert pg.rebuild() == 3 and pg.dump() == lite.dump()
        for query in ({"text": "mouse"}, {"organism": "9606"}, {"method": "confocal"}, {"text": "zebrafish"},
                      {"text": "doe", "license": "CC-BY-4.0"}):
            assert pg.search(**query) == lite.search(**query)


def test_the_front_page_lists_the_public_studies_with_relative_links(archive):
    root, pubs, _ = archive
    page = Path(root, "index.html").read_text()
    for name in ("cells2", "mouse", "yeast"):
        assert f"href='{pubs[name].accession}/v{pubs[name].version}/index.html'" in page
    assert ZEBRAFISH not in page and pubs["fish"].accession not in page
    for link in re.findall(r"(?:href|src)='([^'#:]+)'", page):
        assert Path(root, link).is_file(), link


# ---------------------------------------------------------------- in a browser, from a folder and from S3


def visit(browser, url: str) -> dict:
    """Open ``url``; what a visitor sees: the title, the pictures' natural widths, the console's errors and
    the address of every link (relative ones resolved)."""
    page = browser.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(url, wait_until="load")
    page.wait_for_function("Array.from(document.images).every((i) => i.complete)")
    seen = page.evaluate("""() => ({
        title: document.querySelector('h1').innerText,
        widths: Array.from(document.images).map((i) => i.naturalWidth),
        links: Array.from(document.querySelectorAll('a[href], img[src]')).map((a) => a.href || a.src)})""")
    seen["errors"], seen["page"] = errors, page
    from conftest import SESSION_DIR

    page.screenshot(path=str(SESSION_DIR / f"page-{re.sub(r'[^A-Za-z0-9]+', '-', url)[-60:]}.png"), full_page=True)
    return seen


def reachable(link: str) -> bool:
    import urllib.parse
    import urllib.request

    if link.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(link).path)).is_file()
    with urllib.request.urlopen(link, timeout=30) as response:
        return response.status == 200


def check_pages(browser, front: str, local: str, studies: int, word: str, organism: str) -> None:
    """The front page at ``front`` and the landing page of the study found by ``word``: seen whole, every
    link of the archive's own (under ``local``) resolving, the front page's filters working."""
    index = visit(browser, front)
    assert index["title"] == "Public studies" and not index["errors"]
    assert len(index["widths"]) == studies and all(w > 0 for w in index["widths"])  # every thumbnail loaded
    own = [link for link in index["links"] if link.startswith(local)]
    assert own and all(reachable(link) for link in own)
    page = index["page"]
    rows = "#studies tr:not([hidden])"
    assert page.locator(rows).count() == studies
    assert "Danio rerio" not in page.inner_text("#organism")  # the embargoed study's organism is not offered
    page.fill("#q", "no such study at all")
    assert page.locator(rows).count() == 0 and f"0 of {studies} shown" in page.inner_text("#count")
    page.fill("#q", word)
    page.select_option("#organism", organism)
    assert page.locator(rows).count() == 1
    landing_url = page.locator(f"{rows} a").first.get_attribute("href")
    landing = visit(browser, front.rsplit("/", 1)[0] + "/" + landing_url)
    assert word.lower() in landing["title"].lower() and not landing["errors"]
    assert landing["widths"] and all(w > 0 for w in landing["widths"])
    own = [link for link in landing["links"] if link.startswith(local)]
    assert any(link.endswith(".ome.zarr/zarr.json") for link in own) and all(reachable(link) for link in own)


def test_a_visitor_reads_the_front_page_and_a_landing_page_from_the_folder(archive, browser):
    root, _, _ = archive
    check_pages(browser, Path(root, "index.html").as_uri(), Path(root).as_uri(), 3, "vasculature", "Mus musculus")


@pytest.fixture()
def s3_archive(s3_endpoint, tmp_path, config_file):
    """An object-store archive of one study (ingested before the browser starts: Playwright's sync API holds an
    event loop, under which a flow would be returned as a coroutine), readable by anyone through a bucket
    policy."""
    import fsspec

    bucket = s3_endpoint()
    archive = f"s3://{bucket}/archive"
    sub = study(tmp_path / "mouse", "Whole mouse brain vasculature, cleared and imaged", ["Lectin"],
                organism={"scientific_name": "Mus musculus"})
    assert ingest(str(sub), archive, config_file()).status == "published"
    policy = {"Version": "2012-10-17", "Statement": [{  # as a public archive's bucket serves its archive prefix
        "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/archive/*"}]}
    fsspec.filesystem("s3").call_s3("put_bucket_policy", Bucket=bucket, Policy=json.dumps(policy))
    return bucket, archive


def test_on_an_object_store_archive_the_pages_and_catalog_are_kept_and_read_over_http(s3_archive, browser):
    import fsspec

    bucket, archive = s3_archive
    s3 = fsspec.filesystem("s3")
    s3.invalidate_cache()
    assert s3.info(f"{bucket}/archive/index.html")["ContentType"] == "text/html; charset=utf-8"
    with Catalog(archive) as catalog:  # SQLite in zarrchive's data folder: an object store holds no database
        assert catalog.url.startswith("sqlite:///") and "zarrchive/catalogs/" in catalog.url
        assert [s["title"] for s in catalog.search("vasculature")] == [
            "Whole mouse brain vasculature, cleared and imaged"]
    endpoint = fsspec.config.conf["s3"]["endpoint_url"]
    check_pages(browser, f"{endpoint}/{bucket}/archive/index.html", f"{endpoint}/{bucket}/archive/", 1,
                "vasculature", "Mus musculus")


def test_each_store_counts_its_own_objects_a_label_its_own_and_a_shared_store_its_earlier_version_s():
    """The bytes of each published store, from the manifest: an object belongs to the longest of its folders that
    is a store (a label's objects are the label's, not its image's), a name that only begins like another store's
    is not that store's, and a store shared from an earlier version counts the objects listed under its path."""
    from zarrchive.catalog import _store_sizes

    images = ["images/a.ome.zarr", "images/a.ome.zarr/labels/nuclei", "images/a.ome.zarr.bak", "../v1/images/b.ome.zarr",
              "plates/p.ome.zarr/A/1/0"]
    files = {"images/a.ome.zarr/zarr.json": 10, "images/a.ome.zarr/0/c/0/0": 100,
             "images/a.ome.zarr/labels/zarr.json": 1, "images/a.ome.zarr/labels/nuclei/zarr.json": 20,
             "images/a.ome.zarr/labels/nuclei/0/c/0": 200, "images/a.ome.zarr.bak/zarr.json": 3000,
             "../v1/images/b.ome.zarr/zarr.json": 40000, "plates/p.ome.zarr/zarr.json": 7,
             "plates/p.ome.zarr/A/1/0/0/c/0": 500000, "manifest.json": 9, "images/a.ome.zarrx": 8}
    manifest = {"images": [{"path": p} for p in images] + [{"path": None}],
                "files": [{"path": p, "size": n} for p, n in files.items()]}
    assert _store_sizes(manifest) == {"images/a.ome.zarr": 111, "images/a.ome.zarr/labels/nuclei": 220,
                                      "images/a.ome.zarr.bak": 3000, "../v1/images/b.ome.zarr": 40000,
                                      "plates/p.ome.zarr/A/1/0": 500000}
