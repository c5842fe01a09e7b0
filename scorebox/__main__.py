"""`python -m scorebox`: the scorebox CLI."""

from scorebox.cli import app

app(prog_name="scorebox")
