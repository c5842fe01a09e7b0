"""scorebox: train a scikit-learn model from a database table, serve it with BentoML, and
batch-score tables with Celery. This package is the shared core every component imports."""

from scorebox.errors import ConfigError, DataError, ModelError, ScoreboxError
from scorebox.settings import Settings, get_settings, load_settings

__all__ = [
    "ConfigError",
    "DataError",
    "ModelError",
    "ScoreboxError",
    "Settings",
    "get_settings",
    "load_settings",
]
