"""`python -m scorebox_cli`: the scorebox CLI."""

from scorebox_cli import app

app(prog_name="scorebox")
