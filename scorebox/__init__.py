"""scorebox: train a scikit-learn model from a database table, serve it with BentoML, and
batch-score tables with Celery. This package is the shared core: the lowest of three floors
(scorebox_cli, then training, service, worker and dashboard, then scorebox), importing nothing
above it; README's Layout says which module owns which concept."""

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
