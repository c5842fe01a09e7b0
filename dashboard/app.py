"""`scorebox dashboard`: a small read-only web page over scorebox's tables.

Starlette serves the pages, Jinja2 writes them, matplotlib draws the charts as SVG. It reads
PostgreSQL with asyncpg on connections whose transactions are read-only
(SCOREBOX_DASHBOARD_DATABASE_URL can name a role that can only read); with SCOREBOX_API_TOKEN
set, every page needs it (dashboard/auth.py). It runs in a process of its own, never in the
prediction service's. Work that grows with the data (adding up a job's chunk counts, drawing,
reading an archive) runs off the event loop, so one big job never holds up another page.

What it shows of a model version comes from the version's signed manifest, verified with the
trusted keys (SCOREBOX_TRUSTED_KEYS); a version no trusted key signed, or whose metadata cannot be
read, is listed as refused with the reason. Its evaluation plot is read from the archive only
after that, within the archive caps, off the event loop.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from dashboard import charts, queries
from dashboard.auth import Gate, SecurityHeaders
from dashboard.profiles import Counted, JobCounts
from scorebox.archive import Limits, read_file
from scorebox.db import asyncpg_arguments
from scorebox.errors import ModelError
from scorebox.modelinfo import ModelInfo
from scorebox.profile import SCORE, bin_labels
from scorebox.settings import Settings
from scorebox.signing import MAX_SIGNATURE_BYTES, TrustedKeys, verify

REFRESH_SECONDS = 5
# How long a page waits for chunk counts still being added up before it shows what is known,
# and how soon it comes back for them.
COUNT_WAIT_SECONDS = 1.0
COUNTING_REFRESH_SECONDS = 2
_PLOT = "report/evaluation.png"
_PLOTS_KEPT = 16
_CHARTS_KEPT = 32


def described(rows: list[dict[str, Any]], trusted: TrustedKeys) -> list[dict[str, Any]]:
    """Each version row with ``info`` from its verified manifest, or ``refused`` saying why."""
    for row in rows:
        row["info"], row["refused"] = None, None
        try:
            manifest = verify(row.pop("signature"), row["tag"], trusted)
            row["info"] = ModelInfo.from_metadata(manifest.metadata, row["tag"])
            row["plot"] = _PLOT in manifest.files
        except ModelError as exc:
            row["refused"] = str(exc)
    return rows


def evaluation_plot(
    data: bytes, envelope: str | None, tag: str, trusted: TrustedKeys, limits: Limits
) -> bytes | None:
    """The evaluation plot from a version's archive, after its signature checks."""
    manifest = verify(envelope, tag, trusted)
    if _PLOT not in manifest.files:
        return None
    return read_file(data, manifest, _PLOT, limits)


def _templates() -> Environment:
    environment = Environment(
        loader=PackageLoader("dashboard", "templates"), autoescape=select_autoescape()
    )
    environment.filters["number"] = lambda v: "" if v is None else f"{v:,.0f}"
    environment.filters["when"] = lambda v: "" if v is None else f"{v:%Y-%m-%d %H:%M:%S}"
    environment.filters["feature"] = charts.label
    return environment


def _drift_charts(counted: Counted) -> dict[str, Any]:
    """The job page's charts: every PSI, and the bins of the item worth a look."""
    assert counted.drift is not None and counted.profile is not None
    found = counted.drift
    drawn: dict[str, Any] = {
        "bars": charts.drift_bars(
            [j.drift for j in found.items], [j.judged for j in found.items], found.warn
        )
    }
    top = found.top
    if top is not None:
        name = top.drift.name
        layout = counted.profile["score"] if name == SCORE else counted.profile["features"][name]
        counts = counted.counts[name]
        now = (counts / counts.sum()).tolist() if counts.sum() else []
        judged = f"PSI {top.drift.psi:.3f}" if top.judged else "too few rows to judge"
        drawn["shares"] = charts.shares(
            bin_labels(layout),
            layout["shares"],
            now,
            f"{charts.label(name)}: training against this job ({judged})",
        )
    return drawn


class _Dashboard(Starlette):
    """Starlette with the security headers outside its whole stack: on its own error pages too
    (ServerErrorMiddleware, outermost in Starlette's stack, answers a 500 past any middleware)."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


def make_app(settings: Settings) -> Starlette:
    """The dashboard for ``settings``' database."""
    token = settings.api_token.get_secret_value() if settings.api_token else None
    templates = _templates()
    url = settings.dashboard_database_url or settings.database_url
    state: dict[str, Any] = {}
    trusted = TrustedKeys(settings.trusted_keys_spec)
    limits = Limits(
        settings.model_max_archive_bytes,
        settings.model_max_file_bytes,
        settings.model_max_unpacked_bytes,
    )
    plots: OrderedDict[str, bytes] = OrderedDict()  # verified plots, by tag
    # Drift charts by job (id, creation) and chunks counted: a live page's refresh draws again
    # only when a chunk was added.
    drawn: OrderedDict[tuple[int, Any, int], dict[str, Any]] = OrderedDict()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        import asyncpg

        arguments = connect_arguments(url)
        state["pool"] = await asyncpg.create_pool(min_size=1, max_size=6, **arguments)
        state["counts"] = JobCounts(state["pool"], settings.drift_warn)
        try:
            yield
        finally:
            await state["pool"].close()

    def page(name: str, **context: Any) -> HTMLResponse:
        html = templates.get_template(name).render(warn=settings.drift_warn, **context)
        return HTMLResponse(html)

    async def models_page(request: Request) -> Response:
        async with state["pool"].acquire() as conn:
            found = await queries.models(conn, MAX_SIGNATURE_BYTES)
        found = await asyncio.to_thread(described, found, trusted)
        return page("models.html", models=found, active="models")

    async def model_page(request: Request) -> Response:
        tag = request.path_params["tag"]
        async with state["pool"].acquire() as conn:
            found = await queries.model(conn, tag, MAX_SIGNATURE_BYTES)
        if found is None:
            return PlainTextResponse(f"no model version {tag}", status_code=404)
        (model,) = await asyncio.to_thread(described, [found], trusted)
        return page("model.html", model=model, active="models")

    async def evaluation(request: Request) -> Response:
        tag = request.path_params["tag"]
        png = plots.get(tag)
        if png is None:
            async with state["pool"].acquire() as conn:
                known, envelope = await queries.signature(conn, tag, MAX_SIGNATURE_BYTES)
                data = await queries.archive(conn, tag, limits.archive_bytes) if known else None
            if data is None:
                return PlainTextResponse("no evaluation plot for this version", status_code=404)
            try:
                png = await asyncio.to_thread(
                    evaluation_plot, bytes(data), envelope, tag, trusted, limits
                )
            except ModelError as exc:
                return PlainTextResponse(f"refused: {exc}", status_code=409)
            if png is None:
                return PlainTextResponse("no evaluation plot for this version", status_code=404)
            plots[tag] = png
            while len(plots) > _PLOTS_KEPT:
                plots.popitem(last=False)
        return Response(png, media_type="image/png")

    async def jobs_page(request: Request) -> Response:
        async with state["pool"].acquire() as conn:
            found = await queries.jobs(conn)
        counted = await state["counts"].get(found, COUNT_WAIT_SECONDS)
        live = any(j["status"] in ("queued", "running") for j in found)
        return page(
            "jobs.html",
            jobs=list(zip(found, counted, strict=True)),
            active="jobs",
            refresh=REFRESH_SECONDS if live else None,
        )

    async def job_page(request: Request) -> Response:
        job_id = int(request.path_params["job_id"])
        async with state["pool"].acquire() as conn:
            job = await queries.job(conn, job_id) if job_id < 2**31 else None
            if job is None:
                return PlainTextResponse(f"no job {job_id}", status_code=404)
            failed = await queries.failed_rows(conn, job_id)
        (counted,) = await state["counts"].get([job], COUNT_WAIT_SECONDS)
        key = (job_id, job["created_at"], counted.chunks)
        shown = drawn.get(key, {})
        if not shown and counted.drift is not None and counted.drift.items:
            shown = drawn[key] = await asyncio.to_thread(_drift_charts, counted)
            while len(drawn) > _CHARTS_KEPT:
                drawn.popitem(last=False)
        live = job["status"] in ("queued", "running")
        # While the first count runs the page comes back for it soon, live job or not.
        refresh = REFRESH_SECONDS if live else None
        if counted.counting:
            refresh = COUNTING_REFRESH_SECONDS
        return page(
            "job.html",
            job=job,
            failed=failed,
            counted=counted,
            charts=shown,
            active="jobs",
            refresh=refresh,
        )

    async def log_page(request: Request) -> Response:
        async with state["pool"].acquire() as conn:
            points, now = await queries.log_volume(conn)
        chart = await asyncio.to_thread(charts.volume, points, now)
        total = sum(n for _, n in points)
        return page("log.html", chart=chart, total=total, active="log")

    return _Dashboard(
        routes=[
            Route("/", models_page),
            Route("/models/{tag:str}", model_page),
            Route("/models/{tag:str}/evaluation.png", evaluation),
            Route("/jobs", jobs_page),
            Route("/jobs/{job_id:int}", job_page),
            Route("/log", log_page),
        ],
        middleware=[Middleware(Gate, token=token)],
        lifespan=lifespan,
    )


def connect_arguments(database_url: str) -> dict[str, Any]:
    """asyncpg arguments for the dashboard: every transaction read-only."""
    arguments = asyncpg_arguments(database_url, "scorebox-dashboard")
    arguments["server_settings"]["default_transaction_read_only"] = "on"
    return arguments
