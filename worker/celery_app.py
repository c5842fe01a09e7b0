"""The Celery app, configured for at-least-once delivery; the truth of a job lives in PostgreSQL.

Each deployment (a model with its service and workers) has its own queue, SCOREBOX_QUEUE
(default ``scorebox.<model name>.<the database's identity>``, :func:`deployment_queue`): its
workers consume only that queue, and every chunk task names the queue it was meant for, so
deployments sharing one Redis never take each other's work. The queue depends on which database
it is, not on how its URL names it, so it is asked of the database when a worker starts (and
when a job is submitted), never when this module is imported.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.schedules import crontab
from sqlalchemy import Engine

from scorebox.db import database_identity, make_engine
from scorebox.settings import Settings, get_settings

SCORE_CHUNK = "scorebox.score_chunk"
SCORE_NEW_ROWS = "scorebox.score_new_rows"
# What a task sent without a queue would go to: no worker consumes it (workers consume their
# deployment's queue only), so a mistake shows instead of landing in another app's `celery`.
UNROUTED = "scorebox.unrouted"

_queues: dict[tuple[str, str, str | None], str] = {}
_queues_lock = threading.Lock()


def deployment_queue(
    settings: Settings, model_name: str | None = None, engine: Engine | None = None
) -> str:
    """The queue of the deployment of ``model_name`` (default SCOREBOX_MODEL_NAME) on the
    settings' database: SCOREBOX_QUEUE, or one named after the database's identity (asked once
    a process)."""
    name = model_name or settings.model_name
    if settings.queue:
        return settings.queue
    key = (settings.database_url, name, settings.queue)
    with _queues_lock:
        if key not in _queues:
            owned = engine is None
            engine = engine or make_engine(settings.database_url, connect_timeout=5)
            try:
                _queues[key] = settings.queue_for(name, database_identity(engine))
            finally:
                if owned:
                    engine.dispose()
        return _queues[key]


def chunk_sender(app: Celery) -> Callable[[int, int, str], None]:
    """Queue chunk ``chunk_no`` of job ``job_id`` on ``queue`` through ``app`` (by task name, so
    the caller need not import the tasks)."""

    def send(job_id: int, chunk_no: int, queue: str) -> None:
        app.send_task(SCORE_CHUNK, (job_id, chunk_no, queue), queue=queue)

    return send


def make_app(settings: Settings) -> Celery:
    """A Celery app on ``settings.redis_url`` with scorebox's reliability settings."""
    app = Celery("scorebox", broker=settings.redis_url, include=["worker.tasks"])
    schedule: dict[str, dict[str, object]] = {}
    if settings.schedule_cron:
        minute, hour, day_of_month, month_of_year, day_of_week = settings.schedule_cron.split()
        schedule["score-new-rows"] = {
            "task": SCORE_NEW_ROWS,
            "schedule": crontab(minute, hour, day_of_week, day_of_month, month_of_year),
        }

    def route(name: str, *_: Any, **__: Any) -> dict[str, str] | None:
        # The scheduled run goes to this deployment's queue, asked of the database when sent.
        return {"queue": deployment_queue(settings)} if name == SCORE_NEW_ROWS else None

    transport: dict[str, object] = {"visibility_timeout": settings.broker_visibility_timeout}
    if settings.broker_folder is not None and settings.redis_url.startswith("filesystem://"):
        # The embedded broker of `scorebox demo`: messages are files in one shared folder.
        queue, processed = settings.broker_folder / "queue", settings.broker_folder / "processed"
        queue.mkdir(parents=True, exist_ok=True)
        processed.mkdir(parents=True, exist_ok=True)
        transport |= {
            "data_folder_in": str(queue),
            "data_folder_out": str(queue),
            "processed_folder": str(processed),
            "store_processed": False,
            "control_folder": str(settings.broker_folder / "control"),
        }
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        accept_content=["json"],
        task_serializer="json",
        task_ignore_result=True,
        task_default_queue=UNROUTED,
        task_routes=(route,),
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        beat_schedule=schedule,
    )
    return app


app = make_app(get_settings())
