"""The `scorebox` command line: one Typer app, its commands grouped by what they work on."""

from scorebox.cli import dashboard, data, jobs, keys, log, models, run
from scorebox.cli.app import app

__all__ = ["app", "dashboard", "data", "jobs", "keys", "log", "models", "run"]
