"""`python -m training`: the same as `scorebox train`."""

from scorebox.cli import app

app(["train"], prog_name="python -m training")
