"""Celery tasks: thin wrappers (ids in, never rows) around the plain functions in jobs/chunks."""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import cache

from celery import Task
from sqlalchemy import Engine, or_, select, update

from scorebox.db import make_engine, utcnow
from scorebox.settings import Settings, get_settings
from worker.celery_app import SCORE_CHUNK, app
from worker.chunks import TRANSIENT, run_chunk
from worker.client import ServiceClient, ServiceUnavailable
from worker.jobs import ACTIVE, Tables, fail_job, submit_job

log = logging.getLogger(__name__)


@cache
def _context() -> tuple[Settings, Engine, Tables, ServiceClient]:
    """Per worker process (created after the fork): settings, engine, tables, service client."""
    settings = get_settings()
    client = ServiceClient.from_settings(settings)
    return settings, make_engine(settings.database_url), Tables(settings), client


def enqueue_chunk(job_id: int, chunk_no: int) -> None:
    """Queue one chunk of a job."""
    score_chunk.delay(job_id, chunk_no)


@app.task(
    name=SCORE_CHUNK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,  # bounded below by SCOREBOX_SERVICE_RETRIES
    soft_time_limit=600,
    time_limit=660,
)
def score_chunk(self: Task, job_id: int, chunk_no: int) -> str:
    """Score chunk ``chunk_no`` of job ``job_id``; retry with backoff while the service is down."""
    settings, engine, tables, client = _context()
    try:
        outcome = run_chunk(engine, tables, client, job_id, chunk_no, settings.chunk_lease_seconds)
    except (ServiceUnavailable, *TRANSIENT) as exc:
        retries = self.request.retries
        if retries >= settings.service_retries:
            with engine.begin() as conn:
                fail_job(conn, tables, job_id, f"gave up after {retries} retries: {exc}")
            return "failed"
        delay = min(2**retries, 30)
        log.warning("chunk %s/%s: %s; retry %s in %ss", job_id, chunk_no, exc, retries + 1, delay)
        raise self.retry(countdown=delay) from None
    log.info("chunk %s/%s: %s", job_id, chunk_no, outcome)
    return outcome


@app.task(name="scorebox.sweep")
def sweep() -> int:
    """Queue again the chunks of active jobs whose lease expired, or that stayed pending longer than
    a lease (their message was lost: a killed worker, a restarted Redis)."""
    settings, engine, tables, _ = _context()
    chunks, jobs = tables.chunks, tables.jobs
    now = utcnow()
    stale = now - timedelta(seconds=settings.chunk_lease_seconds)
    with engine.begin() as conn:
        due = conn.execute(
            update(chunks)
            .where(
                chunks.c.job_id.in_(select(jobs.c.id).where(jobs.c.status.in_(ACTIVE))),
                or_(
                    (chunks.c.status == "running") & (chunks.c.lease_expires_at < now),
                    (chunks.c.status == "pending") & (chunks.c.updated_at < stale),
                ),
            )
            .values(updated_at=now)
            .returning(chunks.c.job_id, chunks.c.chunk_no)
        ).all()
    for job_id, chunk_no in due:
        enqueue_chunk(job_id, chunk_no)
    if due:
        log.warning("sweep: queued %d chunk(s) again", len(due))
    return len(due)


@app.task(name="scorebox.score_new_rows")
def score_new_rows() -> int:
    """The scheduled job (SCOREBOX_SCHEDULE_CRON): score the rows without a prediction."""
    settings, engine, _, client = _context()
    return submit_job(engine, settings, client, enqueue_chunk, mode="new")
