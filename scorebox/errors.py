"""Exceptions whose messages a user can act on; the CLI prints them without a traceback."""


class ScoreboxError(Exception):
    """Base of every error scorebox raises on purpose."""


class ConfigError(ScoreboxError):
    """A setting is missing or invalid."""


class DataError(ScoreboxError):
    """The feature table (or a row in it) cannot be used as asked."""


class ModelError(ScoreboxError):
    """The registered model is missing, inconsistent or was not trained by scorebox."""


class TrustError(ModelError):
    """A model version was refused: not signed by a trusted key, its files are not the ones
    signed, or its archive is unsafe or too large. ``reason`` names the kind, for metrics."""

    def __init__(self, message: str, reason: str = "tampered") -> None:
        super().__init__(message)
        self.reason = reason


def one_line(error: BaseException | str, limit: int = 500) -> str:
    """An error's message (or any text) on one line, at most ``limit`` characters."""
    text = " ".join(str(error).split())
    if not text and isinstance(error, BaseException):
        text = type(error).__name__
    return text[:limit]


def database_reason(error: BaseException) -> str:
    """The first line of what the database said (a DBAPI error's own message, not the statement
    SQLAlchemy adds to it), on one line."""
    said = getattr(error, "orig", None) or error
    lines = str(said).strip().splitlines()
    return one_line(lines[0] if lines else repr(said))
