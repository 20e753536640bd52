"""The errors semdb raises on purpose.

Every error says what went wrong and, where one exists, how to fix it, so that the command
line can print a single line (``semdb: <cause>. Fix: <fix>``) instead of a traceback.
"""

from __future__ import annotations


class SemdbError(Exception):
    """Base class: a problem semdb recognised, with an optional fix for the user."""

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def one_line(self) -> str:
        """The cause and the fix on one line, as the CLI prints it."""
        text = " ".join(self.message.split())
        if self.fix:
            text = f"{text.rstrip('.')}. Fix: {' '.join(self.fix.split())}"
        return text

    def __str__(self) -> str:
        return self.one_line()


class ConfigurationError(SemdbError):
    """A setting (environment variable, argument, file) has a value semdb cannot use."""


class DatabaseUnavailableError(SemdbError):
    """The PostgreSQL server cannot be reached or refused the connection."""


class ExtensionMissingError(SemdbError):
    """pgvector is absent from the server or the database, or too old."""


class EmbeddedServerError(SemdbError):
    """The embedded PostgreSQL server could not be started, found or stopped."""


class ReplicaLagError(SemdbError):
    """A read replica had not replayed a commit within the time allowed (read-your-writes)."""


class SchemaNotReadyError(SemdbError):
    """The database has not been migrated to the revision this semdb needs."""


class DeclarationError(SemdbError):
    """An embedding column, index or sync setting is declared in a way semdb cannot use."""


class InvalidVectorError(SemdbError, ValueError):
    """A vector's values cannot be stored or searched with (see the subclasses)."""


class DimensionMismatchError(InvalidVectorError):
    """A vector does not have the dimension of the column (or model) it is meant for."""


class NonFiniteVectorError(InvalidVectorError):
    """A vector holds NaN or an infinite value."""


class ZeroVectorError(InvalidVectorError):
    """A query vector is all zeros where the distance (cosine) is undefined for it."""


class VectorTypeError(SemdbError, TypeError):
    """Something that is neither a text nor an array of real numbers was given as a vector."""


class DatasetError(SemdbError):
    """Evaluation or training data (a BEIR folder, JSON lines, a training query) that semdb
    cannot read or use."""


class SearchError(SemdbError):
    """A search cannot run as asked (no query vector, no embedder, a bad argument)."""


class SyncError(SemdbError):
    """Keeping vectors in sync failed: no embedder for a column, a model mismatch."""


class ChunkLimitError(SyncError):
    """A text needs more chunks than its chunked column's ``Chunks(max_chunks=...)``: the
    inline flush fails with it; ``semdb worker`` and ``semdb backfill`` record it in
    ``semdb.errors`` (given up at once: the same text fails the same way) and go on."""


class BundleError(SemdbError):
    """A model bundle is missing, incomplete, altered (hash mismatch) or malformed."""


class ProviderError(SemdbError):
    """An ONNX Runtime execution provider (CUDA) was asked for but cannot run here."""


class InvalidTextError(SemdbError, ValueError):
    """A text given to the embedder cannot be embedded (not valid UTF-8)."""


class TextTypeError(SemdbError, TypeError):
    """Something other than a string was given to the embedder where a text belongs."""


class BindTypeError(SemdbError, TypeError):
    """A search was given something other than the Session or Connection it runs on (an
    AsyncSession to a synchronous call, or the reverse)."""


class MonitorError(SemdbError):
    """``semdb monitor`` cannot do what was asked (a drift snapshot of too few rows, a
    database without semdb's monitoring tables)."""


class BlendError(SemdbError):
    """Two models cannot be blended (other architectures or dimensions), or a blend's
    settings cannot be used (a forgetting bound below zero, a mixing weight outside 0..1)."""


class ForgettingError(SemdbError):
    """A model lost more than the allowed bound on a general (out-of-domain) set it was
    scored on, and switching to it was not forced."""


class SelectionError(SemdbError):
    """A model selection (hyperparameter search) cannot run as asked: a search space with an
    empty or inverted range, more folds than queries, a study name already used with another
    search space."""
