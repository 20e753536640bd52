"""semdb's own tables, in the ``semdb`` schema. Alembic (``migrations/``) creates them.

The user's tables live wherever the user puts them; semdb only adds vector columns to them
(see :mod:`semdb.orm`). What semdb itself must remember lives here.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

SCHEMA = "semdb"

metadata = MetaData(
    schema=SCHEMA,
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    },
)

# The model registry: every model bundle that may have written vectors into this database.
# A bundle is identified by (name, version); its ONNX file hash pins the exact weights.
models = Table(
    "models",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False),
    Column("version", Text, nullable=False),
    Column("dimension", Integer, nullable=False),
    Column("pooling", Text, nullable=False),
    Column("normalize", Boolean, nullable=False),
    Column("max_tokens", Integer, nullable=False),
    Column("onnx_sha256", Text, nullable=False),
    Column("metrics", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("active", Boolean, nullable=False, server_default=text("false")),
    UniqueConstraint("name", "version"),
)
# At most one active version per model name.
Index(
    "ix_models_one_active_per_name",
    models.c.name,
    unique=True,
    postgresql_where=models.c.active,
)
