"""The Celery app, configured for at-least-once delivery; the truth of a job lives in PostgreSQL.

Each deployment (a model with its service and workers) has its own queue, SCOREBOX_QUEUE
(default ``scorebox.<model name>``): its workers consume only that queue, and every chunk task
names the queue it was meant for, so deployments sharing one Redis never take each other's work.
"""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery
from celery.schedules import crontab

from scorebox.settings import Settings, get_settings

SCORE_CHUNK = "scorebox.score_chunk"


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
            "task": "scorebox.score_new_rows",
            "schedule": crontab(minute, hour, day_of_week, day_of_month, month_of_year),
            "options": {"queue": settings.queue_name},
        }
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
        task_default_queue=settings.queue_name,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        beat_schedule=schedule,
    )
    return app


app = make_app(get_settings())
