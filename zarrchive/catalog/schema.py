"""The catalog's tables: public studies, their versions, images and submitted files.

Every row is derived from the archive's own documents (each version's ``manifest.json`` and
``qc/report.json``): the archive stays the source of truth and the catalog can be rebuilt from it at any time.
The migrations under ``migrations/versions`` create and change these tables; a change here needs a new one.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Date, Float, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

info = Table(  # one row per key: which archive the catalog indexes
    "catalog_info", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

studies = Table(  # an accession, as its latest public version describes it
    "studies", metadata,
    Column("accession", String(32), primary_key=True),
    Column("latest_version", Integer, nullable=False),
    Column("versions", Integer, nullable=False),
    Column("title", Text, nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("authors", Text, nullable=False, default=""),  # names, "; "-separated
    Column("orcids", Text, nullable=False, default=""),
    Column("organism", Text),
    Column("ncbi_taxon", Integer),
    Column("imaging_method", Text),
    Column("fbbi_id", String(32)),
    Column("license", String(64)),
    Column("doi", Text),
    Column("release_date", Date),
    Column("images", Integer, nullable=False),  # published images (labels not counted)
    Column("bytes", BigInteger, nullable=False),  # the latest version's objects
    Column("thumbnail", Text),  # relative to the archive root: the first image's picture
    Column("url", Text, nullable=False),  # the latest version's landing page
)

versions = Table(
    "versions", metadata,
    Column("accession", String(32), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("created", String(40), nullable=False),
    Column("release_date", Date),
    Column("fingerprint", String(64), nullable=False),
    Column("manifest_sha256", String(64), nullable=False),
    Column("files", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("released_early", Boolean, nullable=False, default=False),
    Column("url", Text, nullable=False),
)

images = Table(
    "images", metadata,
    Column("accession", String(32), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("image_id", String(255), primary_key=True),
    Column("source_path", Text, nullable=False),
    Column("kind", String(16), nullable=False),  # image or label
    Column("label_of", String(255)),
    Column("status", String(16), nullable=False),
    Column("qc", String(16), nullable=False),
    Column("path", Text),  # the store, relative to the version
    Column("axes", String(8)),
    Column("shape", Text),
    Column("dtype", String(16)),
    Column("size_x", BigInteger), Column("size_y", BigInteger), Column("size_z", BigInteger),
    Column("size_c", Integer), Column("size_t", Integer),
    Column("pixel_size_x", Float), Column("pixel_size_y", Float), Column("pixel_size_z", Float),
    Column("unit", String(32)),
    Column("channels", Text),
    Column("codec", String(64)),
    Column("bytes", BigInteger),
)

files = Table(  # the files as submitted (not the objects of the image stores)
    "files", metadata,
    Column("accession", String(32), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("path", Text, primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
)

Index("ix_studies_release_date", studies.c.release_date)
Index("ix_images_codec", images.c.codec)
