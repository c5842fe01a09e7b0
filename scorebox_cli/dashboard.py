"""`scorebox dashboard`: the read-only web dashboard (dashboard/app.py), in a process of its own."""

from __future__ import annotations

from typing import Annotated

import typer

from scorebox.errors import ConfigError
from scorebox.settings import get_settings
from scorebox_cli.app import EPILOG, app, console, friendly, ready_engine


@app.command(epilog=EPILOG)
@friendly
def dashboard(
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 in a container).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
) -> None:
    """Serve the dashboard: models and aliases, a page per version (metrics, features,
    evaluation plot), jobs with live progress, failed rows and drift per feature, the
    prediction log's volume. It only reads (SCOREBOX_DASHBOARD_DATABASE_URL may name a
    read-only role) and needs SCOREBOX_API_TOKEN when one is set."""
    import uvicorn

    from dashboard.app import make_app

    settings = get_settings()
    url = settings.dashboard_database_url or settings.database_url
    if not url.startswith("postgresql"):
        raise ConfigError("the dashboard reads PostgreSQL: set SCOREBOX_DATABASE_URL to it")
    ready_engine(settings.model_copy(update={"database_url": url}), tables=True)
    console.print(f"dashboard on http://{host}:{port}", highlight=False)
    uvicorn.run(make_app(settings), host=host, port=port, log_level="warning")
