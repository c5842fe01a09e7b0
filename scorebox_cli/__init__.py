"""The `scorebox` command line: one Typer app, its commands grouped by what they work on.

The top floor: it drives every component (training, service, worker, dashboard) and the core,
and nothing imports it. The demo and the process runner live here for the same reason.
"""

from scorebox_cli import dashboard, data, jobs, keys, log, models, run
from scorebox_cli.app import app

__all__ = ["app", "dashboard", "data", "jobs", "keys", "log", "models", "run"]
