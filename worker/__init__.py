"""Batch scoring: a Celery app (Redis broker) whose tasks score a table chunk by chunk through the
service and write predictions back. `celery -A worker worker` starts a worker."""

from worker.celery_app import app

__all__ = ["app"]
