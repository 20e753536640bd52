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


class SchemaNotReadyError(SemdbError):
    """The database has not been migrated to the revision this semdb needs."""


class BundleError(SemdbError):
    """A model bundle is missing, incomplete, altered (hash mismatch) or malformed."""


class ProviderError(SemdbError):
    """An ONNX Runtime execution provider (CUDA) was asked for but cannot run here."""


class InvalidTextError(SemdbError, ValueError):
    """A text given to the embedder cannot be embedded (not valid UTF-8)."""


class TextTypeError(SemdbError, TypeError):
    """Something other than a string was given to the embedder where a text belongs."""
