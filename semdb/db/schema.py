"""semdb's own tables, in the ``semdb`` schema. Alembic (``migrations/``) creates them.

The user's tables live wherever the user puts them; semdb only adds vector columns to them
(see :mod:`semdb.orm`). What semdb itself must remember lives here.
"""

from __future__ import annotations

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Sequence,
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


# Every vector column semdb keeps in sync, as written by the migration that set it up
# (semdb.alembic's create_embedding_sync). Workers on any host read what to embed from here,
# and the SQL functions (semdb.hybrid_search) read the text columns and distance.
vector_columns = Table(
    "vector_columns",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("table_schema", Text, nullable=False),
    Column("table_name", Text, nullable=False),
    Column("column_name", Text, nullable=False),
    Column("key_columns", ARRAY(Text), nullable=False),
    Column("sources", ARRAY(Text), nullable=False),
    Column("model", Text, nullable=False),
    Column("dimension", Integer, nullable=False),
    Column("distance", Text, nullable=False),
    Column("storage", Text, nullable=False),
    Column("index_storage", Text, nullable=False),
    Column("sync", Text, nullable=False),
    Column("fulltext", Text, nullable=True),
    Column("model_column", Text, nullable=False),
    Column("hash_column", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The version of ``model`` the column's vectors are made by, once an activation pinned
    # it (NULL: any version of ``model``, as a migration registers it).
    Column("model_version", Text, nullable=True),
    # Set on the shadow column of an activation in progress: the id of the live column it
    # will replace (see semdb.sync.activation).
    Column("shadow_of", Integer, nullable=True),
    # A chunked column's chunking ({"max_tokens", "overlap", "max_chunks"}; migration 0007):
    # workers split its texts alike (see semdb.orm.chunks).
    Column("chunking", JSONB, nullable=True),
    UniqueConstraint("table_schema", "table_name", "column_name"),
)

# Switching a vector column to another model (``semdb model activate``): the new model's
# vectors are made into a shadow column by the workers, then swapped in at once. One row per
# activation; at most one is ``filling`` per column; ``switched`` and ``cancelled`` stay as
# the column's history.
activations = Table(
    "activations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("column_id", Integer, nullable=False),
    Column("shadow_column_id", Integer, nullable=True),
    Column("from_model", Text, nullable=False),
    Column("to_model", Text, nullable=False),
    Column("dimension", Integer, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'filling'")),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("finished_at", DateTime(timezone=True), nullable=True),
)
Index(
    "ix_activations_one_filling_per_column",
    activations.c.column_id,
    unique=True,
    postgresql_where=activations.c.status == "filling",
)

# Rows whose text changed and whose vector must be (re)made. Triggers insert here (never
# blocking: ON CONFLICT DO NOTHING); workers claim rows with FOR UPDATE SKIP LOCKED inside
# the transaction that writes the vectors, so a killed worker's claims simply reappear.
queue = Table(
    "queue",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("column_id", Integer, nullable=False),
    Column("key", JSONB, nullable=False),
    Column("enqueued_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("not_before", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_error", Text, nullable=True),
    UniqueConstraint("column_id", "key"),
)

# Every failed attempt to embed a row; ``gave_up`` marks the last one, after which the row
# leaves the queue (a later change to its text, or semdb backfill, tries again).
errors = Table(
    "errors",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("column_id", Integer, nullable=False),
    Column("key", JSONB, nullable=False),
    Column("error", Text, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("worker", Text, nullable=False),
    Column("gave_up", Boolean, nullable=False, server_default=text("false")),
    Column("failed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
Index("ix_errors_column_id_failed_at", errors.c.column_id, errors.c.failed_at)
Index("ix_queue_column_id_id", queue.c.column_id, queue.c.id)

# BM25 corpus statistics of a vector column's text (semdb.keyword_search), kept exact by
# statement-level triggers in the writer's transaction (see semdb.sync.keyword_stats): the
# number of documents, their total length (distinct terms after the column's text search
# configuration), and per term the number of documents holding it. A row here is what
# makes a column keyword-searchable.
bm25_stats = Table(
    "bm25_stats",
    metadata,
    Column("column_id", Integer, primary_key=True, autoincrement=False),
    Column("config", Text, nullable=False),
    Column("documents", BigInteger, nullable=False, server_default=text("0")),
    Column("total_length", BigInteger, nullable=False, server_default=text("0")),
    # The column's postings table in schema semdb (term, key_1.., tf, length), kept by the
    # same triggers (migration 0009_bm25_postings); NULL: statistics without postings.
    Column("postings", Text, nullable=True),
)
bm25_terms = Table(
    "bm25_terms",
    metadata,
    Column("column_id", Integer, primary_key=True, autoincrement=False),
    Column("term", Text, primary_key=True),
    Column("documents", BigInteger, nullable=False),
)

# The fusion hybrid_search uses for a column by default, as ``semdb tune-hybrid`` chose it
# on validation queries (no row: reciprocal rank fusion, equal weights, k 60).
hybrid_fusion = Table(
    "hybrid_fusion",
    metadata,
    Column("column_id", Integer, primary_key=True, autoincrement=False),
    Column("method", Text, nullable=False),
    Column("semantic_weight", Float, nullable=False),
    Column("keyword_weight", Float, nullable=False),
    Column("rrf_k", Integer, nullable=False),
    Column("metrics", JSONB, nullable=False, server_default=text("'{}'::jsonb")),
    Column("tuned_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# -- monitoring (semdb monitor, the query log; migration 0006_monitor) ------------------------

# What the workers embedded, per column, worker and minute: one upsert per batch, so that
# ``semdb monitor`` (any host) can say how many rows a second were embedded lately. Rows
# older than a day are deleted by the workers as they go.
sync_activity = Table(
    "sync_activity",
    metadata,
    Column("column_id", Integer, primary_key=True),
    Column("worker", Text, primary_key=True),
    Column("minute", DateTime(timezone=True), primary_key=True),
    Column("embedded", Integer, nullable=False, server_default=text("0")),
    Column("failed", Integer, nullable=False, server_default=text("0")),
    Column("batches", Integer, nullable=False, server_default=text("0")),
    Column("batch_seconds", Float, nullable=False, server_default=text("0")),
)

# The opt-in sampled query log (semdb.monitor.query_log): a ring of ``capacity`` slots, the
# slot of an entry being its sequence number modulo the capacity, so the table never
# outgrows it (the oldest entry is overwritten). ``id``: the entry's name for relevance
# feedback, chosen by the application's process (``result.query_id``). The query vector is
# stored as float32 bytes (any dimension); ``results``: the keys of the rows returned, best
# first (when the search selected them).
query_log = Table(
    "query_log",
    metadata,
    Column("slot", Integer, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("id", BigInteger, nullable=False),
    Column("logged_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("column_id", Integer, nullable=True),
    Column("column_name", Text, nullable=False),
    Column("query", LargeBinary, nullable=True),
    Column("filter", Text, nullable=True),
    Column("plan", Text, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("k", Integer, nullable=False),
    Column("rows", Integer, nullable=False),
    Column("results", JSONB, nullable=True),
)
Index("ix_query_log_seq", query_log.c.seq, unique=True)
Index("ix_query_log_id", query_log.c.id, unique=True)
Index("ix_query_log_column_id_logged_at", query_log.c.column_id, query_log.c.logged_at)
query_log_ids = Sequence("query_log_ids", metadata=metadata)

# Relevance feedback on logged queries: which returned (or other) rows a user clicked or
# accepted. nDCG in production is computed from these and the logged result keys.
query_feedback = Table(
    "query_feedback",
    metadata,
    Column("query_id", BigInteger, primary_key=True),
    Column("key", JSONB, primary_key=True),
    Column("relevance", Integer, nullable=False, server_default=text("1")),
    Column("given_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Reference snapshots for drift (semdb monitor --snapshot): a sample of the column's vectors
# and the distribution of nearest-neighbour distances at the time, for the model then active.
drift_snapshots = Table(
    "drift_snapshots",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("column_id", Integer, nullable=False),
    Column("model", Text, nullable=False),
    Column("taken_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # pg_snapshot_xmax(pg_current_snapshot()) when taken: rows written later have newer xmin
    Column("snapshot_xmax", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("dimension", Integer, nullable=False),
    Column("reference", LargeBinary, nullable=False),  # float32 matrix, rows x dimension
    Column("row_distances", LargeBinary, nullable=False),  # float32, sorted
    Column("query_distances", LargeBinary, nullable=True),  # float32, sorted (query log)
)
Index(
    "ix_drift_snapshots_column_id_taken_at", drift_snapshots.c.column_id, drift_snapshots.c.taken_at
)
