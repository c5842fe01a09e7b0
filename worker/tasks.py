"""Celery tasks: thin wrappers (ids in, never rows) around the plain functions in jobs/chunks,
and the sweeper thread every worker process runs."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from celery import Task
from celery.exceptions import Reject
from celery.signals import celeryd_after_setup, worker_ready, worker_shutdown
from sqlalchemy import Engine

from scorebox import ledger
from scorebox.db import Tables, make_engine
from scorebox.errors import database_reason, one_line
from scorebox.settings import Settings, get_settings
from worker import health, schedule
from worker.celery_app import (
    SCORE_CHUNK,
    SCORE_NEW_ROWS,
    UNROUTED,
    app,
    chunk_sender,
    deployment_queue,
)
from worker.chunks import is_transient, run_chunk
from worker.client import ServiceClient
from worker.jobs import submit_job
from worker.store import Store, make_store
from worker.sweeper import Sweeper, sweep

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Context:
    """What a worker process works with: settings, database, tables, store, service client."""

    settings: Settings
    engine: Engine
    tables: Tables
    store: Store
    client: ServiceClient


_contexts: dict[int, Context] = {}


def _context() -> Context:
    """Per process (pool children are forked after the parent may have built its own)."""
    pid = os.getpid()
    if pid not in _contexts:
        settings = get_settings()
        name = f"scorebox-worker:{pid}"  # how pg_stat_activity shows this process's connections
        engine = make_engine(settings.database_url, application_name=name)
        tables = Tables.build(settings.predictions_table)
        _contexts[pid] = Context(
            settings,
            engine,
            tables,
            make_store(engine, tables, name),
            ServiceClient.from_settings(settings),
        )
    return _contexts[pid]


@app.task(
    name=SCORE_CHUNK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    max_retries=None,  # bounded below by SCOREBOX_SERVICE_RETRIES
    soft_time_limit=600,
    time_limit=660,
)
def score_chunk(self: Task, job_id: int, chunk_no: int, queue: str) -> str:
    """Score chunk ``chunk_no`` of job ``job_id``; retry with backoff on transient errors."""
    context = _context()
    settings, engine, tables = context.settings, context.engine, context.tables
    mine = deployment_queue(settings, engine=engine)
    if queue != mine:
        # Not this deployment's work: drop the message without touching the job; the right
        # deployment's sweeper sends the chunk again.
        log.error("chunk %s/%s is for queue %s, not %s: refused", job_id, chunk_no, queue, mine)
        raise Reject(f"chunk for queue {queue}", requeue=False)
    try:
        outcome = run_chunk(
            context.store,
            engine,
            tables,
            context.client,
            job_id,
            chunk_no,
            settings.chunk_lease_seconds,
        )
    except Exception as exc:
        if not is_transient(exc):
            raise
        retries = self.request.retries
        reason = one_line(exc, 300)
        if retries >= settings.service_retries:
            with engine.begin() as conn:
                ledger.fail_job(conn, tables, job_id, f"gave up after {retries} retries: {reason}")
            return "failed"
        delay = min(2**retries, 30)
        log.warning(
            "chunk %s/%s: %s; retry %s in %ss", job_id, chunk_no, reason, retries + 1, delay
        )
        raise self.retry(countdown=delay) from None
    log.info("chunk %s/%s: %s", job_id, chunk_no, outcome)
    return outcome


@app.task(name=SCORE_NEW_ROWS)
def score_new_rows() -> int | None:
    """The scheduled job (SCOREBOX_SCHEDULE_CRON): score the rows without a prediction. The
    outcome is kept (worker/schedule.py) so that `scorebox jobs list` shows a failed run."""
    context = _context()
    settings = context.settings
    try:
        job_id = submit_job(context.engine, settings, context.client, chunk_sender(app), mode="new")
    except Exception as exc:
        log.exception("scheduled job failed")
        schedule.record(settings, _queue(settings), None, one_line(exc))
        return None
    schedule.record(settings, _queue(settings), job_id, None)
    return job_id


def _queue(settings: Settings) -> str | None:
    """This deployment's queue, or None when the database cannot tell now."""
    try:
        return deployment_queue(settings)
    except Exception:  # the database away: the outcome is kept under no queue
        return None


_sweepers: list[Sweeper] = []
_probes: list[health.Readiness] = []


@celeryd_after_setup.connect
def _consume_this_deployments_queue(sender: str, instance: Any, **_: Any) -> None:
    """Consume this deployment's queue, named after the database's identity (asked now, with a
    bounded wait while the database starts), and nothing else."""
    from scorebox.errors import ScoreboxError
    from scorebox.migrate import wait_for_database

    settings = get_settings()
    engine = make_engine(settings.database_url, connect_timeout=5)
    try:
        wait_for_database(engine, waiting=lambda message: log.warning("%s", message))
        queue = deployment_queue(settings, engine=engine)
    except ScoreboxError as exc:
        raise SystemExit(f"scorebox worker: {exc}") from None
    except Exception as exc:
        first = database_reason(exc)
        raise SystemExit(
            f"scorebox worker: cannot ask the database (SCOREBOX_DATABASE_URL) which queue is "
            f"this deployment's: {first}"
        ) from None
    finally:
        engine.dispose()
    instance.app.amqp.queues.select_add(queue)
    instance.app.amqp.queues.deselect(UNROUTED)
    log.info("%s consumes queue %s", sender, queue)


@worker_ready.connect
def _start_sweeper(**_: Any) -> None:
    """Every worker sweeps (one at a time per deployment), so recovery needs no beat."""
    settings = get_settings()
    engine = make_engine(settings.database_url)
    tables = Tables.build(settings.predictions_table)
    send = chunk_sender(app)

    queue = deployment_queue(settings, engine=engine)

    def sweep_once() -> int:
        return sweep(engine, tables, queue, settings.chunk_lease_seconds, send)

    sweeper = Sweeper(sweep_once, settings.sweep_seconds)
    sweeper.start()
    _sweepers.append(sweeper)


@worker_ready.connect
def _start_probes(sender: Any, **_: Any) -> None:
    """Keep the files the pod's probes read (worker/health.py)."""
    settings = get_settings()
    _probes.extend(health.start(sender, settings, deployment_queue(settings)))


@worker_shutdown.connect
def _stop_sweeper(**_: Any) -> None:
    for sweeper in _sweepers:
        sweeper.stop()
    for readiness in _probes:
        readiness.stop()
