"""The one settings object, read from ``SCOREBOX_*`` environment variables."""

from __future__ import annotations

import hashlib
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from scorebox.errors import ConfigError
from scorebox.names import check_name, parse_table

ENV_PREFIX = "SCOREBOX_"

Task = Literal["classification", "regression"]
Estimator = Literal[
    "hist_gradient_boosting",
    "random_forest",
    "logistic_regression",
    "ridge",
    "linear_regression",
]


class Settings(BaseSettings):
    """Everything scorebox can be told; every field maps to ``SCOREBOX_<FIELD>``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", protected_namespaces=()
    )

    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/scorebox"
    redis_url: str = "redis://127.0.0.1:6379/0"
    model_name: str = "scorebox"
    model_tag: str = "latest"
    model_poll_seconds: float = Field(2.0, gt=0)
    drift_warn: float = Field(0.2, gt=0)
    drift_every_seconds: float = Field(10.0, gt=0)
    log_predictions: float = Field(0.0, ge=0, le=1)
    log_max_value_chars: int = Field(256, ge=8)
    log_buffer_bytes: int = Field(16 * 2**20, ge=2**16)
    log_retention_days: float = Field(7.0, ge=0)
    dashboard_database_url: str | None = None
    feature_table: str = "features"
    id_column: str = "id"
    feature_columns: Annotated[list[str] | None, NoDecode] = None
    target_column: str = "target"
    task: Task | None = None
    estimator: Estimator | None = None
    test_size: float = Field(0.2, gt=0, lt=1)
    random_state: int = 42
    predictions_table: str = "predictions"
    service_url: str = "http://127.0.0.1:3000"
    api_token: SecretStr | None = None
    service_workers: Annotated[int, Field(ge=1, le=64)] | Literal["cpu_count"] = "cpu_count"
    service_max_records: int = Field(10_000, ge=1)
    service_max_body_bytes: int = Field(64 * 2**20, ge=1024)
    service_max_rows: int = Field(100_000, ge=1)
    service_timeout: float = Field(60.0, gt=0)
    service_header_timeout: float = Field(10.0, gt=0)
    service_body_timeout: float = Field(60.0, gt=0)
    chunk_size: int = Field(10_000, ge=1, le=1_000_000)
    chunk_lease_seconds: float = Field(300.0, gt=0)
    service_retries: int = Field(8, ge=0)
    sweep_seconds: float = Field(30.0, gt=0)
    broker_visibility_timeout: int = Field(3600, ge=1)
    schedule_cron: str | None = None
    broker_folder: Path | None = None
    queue: str | None = None
    max_categories: int = Field(250, ge=2, le=254)
    signing_key: Path | None = None
    trusted_keys: str | None = None
    model_max_archive_bytes: int = Field(256 * 2**20, ge=2**20)
    model_max_file_bytes: int = Field(512 * 2**20, ge=2**20)
    model_max_unpacked_bytes: int = Field(2**30, ge=2**20)
    model_store_keep: int = Field(8, ge=1)
    service_pinnable: Annotated[list[str] | None, NoDecode] = None

    @field_validator("feature_table", "predictions_table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        parse_table(value)
        return value

    @field_validator("id_column", "target_column")
    @classmethod
    def _column_name(cls, value: str) -> str:
        return check_name(value, "column name")

    @field_validator("model_name")
    @classmethod
    def _model_name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,62}", value):
            raise ValueError(
                f"model name {value!r} must be lower-case letters, digits, '_', '-' or '.'"
            )
        return value

    @field_validator("feature_columns", mode="before")
    @classmethod
    def _split_columns(cls, value: Any) -> Any:
        # A JSON list names columns that contain commas; otherwise names are comma-separated.
        if isinstance(value, str) and value.lstrip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not a JSON list of column names: {exc}") from None
        elif isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list) and not value:
            return None
        return value

    @field_validator("service_pinnable", mode="before")
    @classmethod
    def _split_versions(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value or None

    @field_validator("signing_key", mode="before")
    @classmethod
    def _empty_path(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("trusted_keys", mode="before")
    @classmethod
    def _empty_keys(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def signing_key_path(self) -> Path:
        """Where training's private key is: SCOREBOX_SIGNING_KEY, or the default under
        ``$XDG_CONFIG_HOME/scorebox/signing/`` (created by the first `scorebox train`)."""
        if self.signing_key is not None:
            return self.signing_key.expanduser()
        return _config_home() / "scorebox" / "signing" / "ed25519.pem"

    @property
    def default_trust_folder(self) -> Path | None:
        """The folder of trusted ``*.pub`` keys when SCOREBOX_TRUSTED_KEYS is not set."""
        return None if self.trusted_keys else _config_home() / "scorebox" / "trusted"

    @property
    def trusted_keys_spec(self) -> str:
        """SCOREBOX_TRUSTED_KEYS, or the default folder of trusted keys."""
        return self.trusted_keys or str(self.default_trust_folder)

    @field_validator("feature_columns")
    @classmethod
    def _feature_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            for name in value:
                check_name(name, "column name")
            if len(set(value)) != len(value):
                raise ValueError("a column is listed twice")
        return value

    @field_validator("api_token", mode="before")
    @classmethod
    def _empty_token(cls, value: Any) -> Any:
        # compose passes `SCOREBOX_API_TOKEN=` when no token is wanted: that means no auth.
        return None if value == "" else value

    @field_validator("schedule_cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value and len(value.split()) != 5:
            raise ValueError(f"{value!r} is not a 5-field cron expression like '*/15 * * * *'")
        if value:
            fields = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
            for field, part in zip(fields, value.split(), strict=True):
                problem = _cron_problem(field, part)
                if problem:
                    what = field.replace("_", " ")
                    raise ValueError(f"{value!r}: the {what} field {part!r} is invalid ({problem})")
        return value or None

    def queue_for(self, model_name: str, database: str) -> str:
        """The queue of the deployment serving ``model_name`` on the database whose identity is
        ``database`` (scorebox.db.database_identity: which database, however the URL names it
        and whoever connects): deployments that share a Redis (another model, or the same model
        on a staging database) never take each other's chunks. SCOREBOX_QUEUE overrides it."""
        if self.queue:
            return self.queue
        return f"scorebox.{model_name}.{hashlib.sha256(database.encode()).hexdigest()[:8]}"

    @field_validator("queue")
    @classmethod
    def _queue(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_.:-]{1,100}", value):
            raise ValueError(f"queue name {value!r}: use letters, digits, '_', '.', ':' or '-'")
        return value or None

    @model_validator(mode="after")
    def _broker_folder(self) -> Settings:
        if self.redis_url.startswith("filesystem://") and self.broker_folder is None:
            raise ValueError(
                "SCOREBOX_REDIS_URL is filesystem://, "
                "so SCOREBOX_BROKER_FOLDER must name a directory"
            )
        return self

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        if not value.startswith(("postgresql", "sqlite")):
            raise ValueError("must be a postgresql:// or sqlite:// URL")
        return value

    @field_validator("dashboard_database_url")
    @classmethod
    def _dashboard_url(cls, value: str | None) -> str | None:
        if value and not value.startswith("postgresql"):
            raise ValueError("must be a postgresql:// URL (the dashboard reads PostgreSQL)")
        return value or None


# What each cron field may hold (Celery's crontab reads the same: numbers, *, ranges, steps,
# lists, ranges that wrap around, and names of months and week days).
_CRON_RANGES = {
    "minute": (0, 59),
    "hour": (0, 23),
    "day_of_month": (1, 31),
    "month_of_year": (1, 12),
    "day_of_week": (0, 6),
}
_CRON_NAMES = {
    "month_of_year": [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"
    ],
    "day_of_week": ["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
}  # fmt: skip


def _cron_problem(field: str, part: str) -> str | None:
    """Why one cron field cannot be read, if it cannot."""
    low, high = _CRON_RANGES[field]
    names = _CRON_NAMES.get(field, [])

    def number(text: str) -> int:
        if text.lower() in names:
            return names.index(text.lower()) + (1 if field == "month_of_year" else 0)
        if not text.isdigit():
            raise ValueError(f"{text!r} is not a number")
        found = int(text)
        if not low <= found <= high:
            raise ValueError(f"{found} is not within {low}-{high}")
        return found

    try:
        for item in part.split(","):
            span, _, step = item.partition("/")
            if step and (not step.isdigit() or int(step) == 0):
                raise ValueError(f"step {step!r} is not a positive number")
            if span == "*":
                continue
            first, dash, last = span.partition("-")
            number(first)
            if dash:
                number(last)  # a range may wrap around, as Celery reads it: 22-2 is 22, 23, 0-2
    except ValueError as exc:
        return str(exc)
    return None


def _config_home() -> Path:
    configured = os.environ.get("XDG_CONFIG_HOME")
    return Path(configured) if configured else Path.home() / ".config"


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as the SCOREBOX_* variables that give them to another process."""
    env = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, list):
            value = ",".join(value)
        env[f"{ENV_PREFIX}{name.upper()}"] = str(value)
    return env


def described(settings: Settings) -> list[tuple[str, str, str]]:
    """(variable, value as shown, where it came from) for every setting: ``environment``,
    ``.env`` or ``default``. The API token and database password are masked."""
    from dotenv import dotenv_values
    from sqlalchemy.engine import make_url

    env_file = settings.model_config.get("env_file")
    dotenv = {k.upper(): v for k, v in dotenv_values(str(env_file)).items()} if env_file else {}
    environment = {k.upper() for k in os.environ}
    rows = []
    for name in Settings.model_fields:
        variable = f"{ENV_PREFIX}{name.upper()}"
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            shown = "********"
        elif name in ("database_url", "dashboard_database_url") and value:
            shown = make_url(value).render_as_string(hide_password=True)
        elif isinstance(value, list):
            shown = ",".join(value)
        else:
            shown = "" if value is None else str(value)
        if variable in environment:
            source = "environment"
        elif variable in dotenv:
            source = ".env"
        else:
            source = "default"
        rows.append((variable, shown, source))
    return rows


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment (and ``overrides``), or raise one clear ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{ENV_PREFIX}{field.upper()}: {message}")
        raise ConfigError("invalid settings:\n  " + "\n  ".join(problems)) from None


# SCOREBOX_* names that are not settings of scorebox's processes: compose.yaml reads the first
# two from .env, the test suite the others.
NOT_SETTINGS = frozenset(
    {
        "SCOREBOX_WORKERS",
        "SCOREBOX_TRAIN_OPTIONS",
        "SCOREBOX_TEST_PG_HOST",
        "SCOREBOX_SCREENSHOTS",
    }
)


def unknown_names(settings: Settings) -> list[tuple[str, str, str | None]]:
    """(name, where: ``environment`` or ``.env``, the closest setting or None) of every
    ``SCOREBOX_*`` name that is no setting: a typo that would otherwise be silently ignored."""
    import difflib

    from dotenv import dotenv_values

    known = sorted(f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields)
    env_file = settings.model_config.get("env_file")
    sources = [("environment", list(os.environ))]
    if env_file and Path(str(env_file)).is_file():
        sources.append((".env", list(dotenv_values(str(env_file)))))
    found = []
    for where, names in sources:
        for name in names:
            upper = name.upper()
            if upper.startswith(ENV_PREFIX) and upper not in known and upper not in NOT_SETTINGS:
                close = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
                found.append((name, where, close[0] if close else None))
    return found


def warn_unknown(settings: Settings) -> None:
    """Log a warning for each SCOREBOX_* name that is no setting (see :func:`unknown_names`)."""
    import logging

    for name, where, close in unknown_names(settings):
        hint = f"; did you mean {close}?" if close else ""
        logging.getLogger("scorebox.settings").warning(
            "%s (%s) is not a scorebox setting and is ignored%s", name, where, hint
        )


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, with a warning for each SCOREBOX_* name that is no setting;
    only entry points call this, code takes settings as arguments."""
    settings = load_settings()
    warn_unknown(settings)
    return settings
