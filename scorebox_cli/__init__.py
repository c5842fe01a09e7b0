"""The `scorebox` command line: one Typer app, its commands grouped by what they work on."""

from scorebox_cli import dashboard, data, jobs, keys, log, models, run
from scorebox_cli.app import app

__all__ = ["app", "dashboard", "data", "jobs", "keys", "log", "models", "run"]
