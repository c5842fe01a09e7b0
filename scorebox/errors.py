"""Every exception scorebox raises on purpose, and the helpers that put an error on one line.

Their messages are what a user acts on: the CLI prints a ScoreboxError without a traceback, the
service answers with the status an error carries, and the worker reads from the class whether to
retry, fail the rows, or end the job.
"""


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


# The rows and values a caller sent (a ValueError: the input's fault).


class FeatureValueError(ValueError):
    """One value that cannot be used for its feature; the message names what is wrong."""


class InvalidRecordsError(ValueError):
    """Records that break the schema: the first problems (record index and field) and how many
    there were in all."""

    def __init__(self, shown: list[str], total: int) -> None:
        more = f" (and {total - len(shown)} more)" if total > len(shown) else ""
        super().__init__(f"{total} invalid field(s): {'; '.join(shown)}{more}")


# What the service answers a request with instead of predictions (an HTTP status each).


class RequestBodyError(ValueError):
    """The body cannot be read as JSON records; ``status`` is the HTTP answer it deserves."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ArrowStreamError(ValueError):
    """The stream cannot be scored; ``status`` is the HTTP answer it deserves."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class RequestRefusedError(Exception):
    """A request refused before its route runs."""

    def __init__(self, status: int, error: str) -> None:
        self.status = status
        self.error = error


class RegistryUnavailableError(ScoreboxError):
    """The registry could not be read: worth trying again (a 503)."""


# What the batch worker classifies: worth retrying, the rows' fault, or the job's end.


class ServiceUnavailableError(ScoreboxError):
    """The service did not answer, or answered 5xx: worth retrying."""


class ServiceRefusedError(ScoreboxError):
    """The service refused the request (4xx): retrying will not help. ``rows_at_fault`` when the
    refusal is about the rows sent (400, 422), not about the set-up (token, URL, size limits)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
        self.rows_at_fault = status in (400, 422)


class PermanentError(ScoreboxError):
    """An error retrying will not mend: the job fails with this one-line reason."""


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
