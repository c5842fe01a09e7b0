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
