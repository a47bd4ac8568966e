"""The first catalog: studies, versions, images and files.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("catalog_info", sa.Column("key", sa.String(64), primary_key=True),
                    sa.Column("value", sa.Text, nullable=False))
    op.create_table(
        "studies",
        sa.Column("accession", sa.String(32), primary_key=True),
        sa.Column("latest_version", sa.Integer, nullable=False), sa.Column("versions", sa.Integer, nullable=False),
        sa.Column("title", sa.Text, nullable=False), sa.Column("description", sa.Text, nullable=False),
        sa.Column("authors", sa.Text, nullable=False), sa.Column("orcids", sa.Text, nullable=False),
        sa.Column("organism", sa.Text), sa.Column("ncbi_taxon", sa.Integer), sa.Column("imaging_method", sa.Text),
        sa.Column("fbbi_id", sa.String(32)), sa.Column("license", sa.String(64)), sa.Column("doi", sa.Text),
        sa.Column("release_date", sa.Date), sa.Column("images", sa.Integer, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False), sa.Column("thumbnail", sa.Text),
        sa.Column("url", sa.Text, nullable=False))
    op.create_table(
        "versions",
        sa.Column("accession", sa.String(32), primary_key=True), sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("created", sa.String(40), nullable=False), sa.Column("release_date", sa.Date),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("files", sa.Integer, nullable=False), sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("released_early", sa.Boolean, nullable=False), sa.Column("url", sa.Text, nullable=False))
    op.create_table(
        "images",
        sa.Column("accession", sa.String(32), primary_key=True), sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("image_id", sa.String(255), primary_key=True), sa.Column("source_path", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False), sa.Column("label_of", sa.String(255)),
        sa.Column("status", sa.String(16), nullable=False), sa.Column("qc", sa.String(16), nullable=False),
        sa.Column("path", sa.Text), sa.Column("axes", sa.String(8)), sa.Column("shape", sa.Text),
        sa.Column("dtype", sa.String(16)), sa.Column("size_x", sa.BigInteger), sa.Column("size_y", sa.BigInteger),
        sa.Column("size_z", sa.BigInteger), sa.Column("size_c", sa.Integer), sa.Column("size_t", sa.Integer),
        sa.Column("pixel_size_x", sa.Float), sa.Column("pixel_size_y", sa.Float), sa.Column("pixel_size_z", sa.Float),
        sa.Column("unit", sa.String(32)), sa.Column("channels", sa.Text), sa.Column("codec", sa.String(64)),
        sa.Column("bytes", sa.BigInteger))
    op.create_table(
        "files",
        sa.Column("accession", sa.String(32), primary_key=True), sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("path", sa.Text, primary_key=True), sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False))
    op.create_index("ix_studies_release_date", "studies", ["release_date"])
    op.create_index("ix_images_codec", "images", ["codec"])


def downgrade() -> None:
    for table in ("files", "images", "versions", "studies", "catalog_info"):
        op.drop_table(table)
