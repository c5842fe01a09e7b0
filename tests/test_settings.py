import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, text

from scorebox.db import make_engine
from scorebox.errors import ConfigError
from scorebox.migrate import upgrade
from scorebox.settings import Settings, load_settings
from scorebox_cli.processes import BIN, child_env


def test_settings_read_from_prefixed_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCOREBOX_FEATURE_TABLE", "analytics.customers")
    monkeypatch.setenv("SCOREBOX_FEATURE_COLUMNS", "age, income,tenure")
    monkeypatch.setenv("SCOREBOX_TASK", "regression")
    monkeypatch.setenv("SCOREBOX_API_TOKEN", "s3cret")
    settings = load_settings()
    assert settings.feature_table == "analytics.customers"
    assert settings.feature_columns == ["age", "income", "tenure"]
    assert settings.task == "regression"
    assert settings.api_token is not None and settings.api_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)


def test_empty_values_mean_unset() -> None:
    settings = load_settings(feature_columns="", api_token="", schedule_cron="")
    assert settings.feature_columns is None
    assert settings.api_token is None
    assert settings.schedule_cron is None


@pytest.mark.parametrize(
    ("field", "value", "variable"),
    [
        ("feature_table", "features\n", "SCOREBOX_FEATURE_TABLE"),
        ("feature_table", '"unclosed', "SCOREBOX_FEATURE_TABLE"),
        ("feature_table", "x" * 64, "SCOREBOX_FEATURE_TABLE"),
        ("predictions_table", "a.b.c", "SCOREBOX_PREDICTIONS_TABLE"),
        ("id_column", "id\x00", "SCOREBOX_ID_COLUMN"),
        ("id_column", " ", "SCOREBOX_ID_COLUMN"),
        ("feature_columns", "ok,bad\tcolumn", "SCOREBOX_FEATURE_COLUMNS"),
        ("feature_columns", "a,a", "SCOREBOX_FEATURE_COLUMNS"),
        ("feature_columns", '["a", ', "SCOREBOX_FEATURE_COLUMNS"),
        ("model_name", "scorebox\n", "SCOREBOX_MODEL_NAME"),
        ("queue", "a queue", "SCOREBOX_QUEUE"),
        ("task", "clustering", "SCOREBOX_TASK"),
        ("estimator", "xgboost", "SCOREBOX_ESTIMATOR"),
        ("database_url", "mysql://x", "SCOREBOX_DATABASE_URL"),
        ("model_name", "Bad Name", "SCOREBOX_MODEL_NAME"),
        ("test_size", "1.5", "SCOREBOX_TEST_SIZE"),
        ("schedule_cron", "every hour", "SCOREBOX_SCHEDULE_CRON"),
        ("schedule_cron", "0 25 * * *", "SCOREBOX_SCHEDULE_CRON.*hour field '25'"),
        ("schedule_cron", "*/15 * * 13 *", "SCOREBOX_SCHEDULE_CRON.*month of year field '13'"),
        ("schedule_cron", "0 0 * * someday", "SCOREBOX_SCHEDULE_CRON.*day of week field"),
        ("service_workers", "many", "SCOREBOX_SERVICE_WORKERS"),
    ],
)
def test_invalid_setting_names_its_variable(field: str, value: str, variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings(**{field: value})


@pytest.mark.parametrize(
    "cron",
    [
        "*/15 * * * *", "0 3 * * *", "0 0 1 * *", "30 2 * * mon-fri", "0 9 * jan,jul sun",
        "5,35 */2 1-15/3 * 0", "0 22-2 * * sat-mon", "5-1 * * * *", "0 0 * * 7",
        "0-59/20 0-23 1-31 1-12 0-6",
        "60 * * * *", "* 24 * * *", "* * 0 * *", "* * * 0 *", "* * * * 8", "*/0 * * * *",
        "a * * * *", "* * * * funday", "1,,2 * * * *",
    ],
)  # fmt: skip
def test_the_cron_check_agrees_with_celerys_crontab(cron: str) -> None:
    """The settings read a schedule without importing Celery; beat must accept what they accept."""
    from celery.schedules import crontab

    fields = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")
    try:
        for field, part in zip(fields, cron.split(), strict=True):
            crontab(**{field: part})
        celery_accepts = True
    except Exception:  # ValueError and Celery's own ParseException
        celery_accepts = False
    try:
        load_settings(schedule_cron=cron)
        settings_accept = True
    except ConfigError:
        settings_accept = False
    assert settings_accept == celery_accepts, cron


def test_any_name_the_database_could_hold_is_accepted_as_written() -> None:
    settings = load_settings(
        feature_table='ml."Clinic Visits"',
        id_column="Visit ID",
        feature_columns='["größe", "a,b", "x; DROP TABLE y"]',
    )
    assert settings.feature_table == 'ml."Clinic Visits"'
    assert settings.feature_columns == ["größe", "a,b", "x; DROP TABLE y"]


def test_the_queue_is_the_databases_however_its_url_names_it(
    database: str, schema: str, engine: Engine
) -> None:
    from worker.celery_app import deployment_queue

    upgrade(engine, "predictions")
    path = quote(f"-csearch_path={schema}")

    def settings(url: str, **more: str) -> Settings:
        return load_settings(model_name="churn", database_url=f"{url}?options={path}", **more)

    here = settings(f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}")
    queue = deployment_queue(here)
    assert queue.startswith("scorebox.churn.")
    # The same tables by another host name, driver spelling or role: the same queue.
    for same in (
        f"postgresql://postgres@localhost:5432/{database}",
        f"postgresql+psycopg://postgres:ignored@localhost/{database}",
    ):
        assert deployment_queue(settings(same)) == queue, same
    assert deployment_queue(here, "other") != queue  # another model
    assert (
        deployment_queue(settings(f"postgresql://postgres@localhost/{database}", queue="q")) == "q"
    )
    # Another installation (the tables of another schema): another queue; none yet: one line.
    other = f"t_{uuid.uuid4().hex[:8]}"
    with engine.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{other}"'))
    elsewhere = load_settings(
        model_name="churn",
        database_url=f"postgresql://postgres@127.0.0.1/{database}?options="
        + quote(f"-csearch_path={other}"),
    )
    with pytest.raises(ConfigError, match="has no scorebox_jobs table"):
        deployment_queue(elsewhere)
    other_engine = make_engine(elsewhere.database_url)
    try:
        upgrade(other_engine, "predictions")
    finally:
        other_engine.dispose()
    assert deployment_queue(elsewhere) != queue


def test_cli_reports_invalid_setting_without_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "scorebox", "train"],
        env={"SCOREBOX_FEATURE_TABLE": "features\n", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "SCOREBOX_FEATURE_TABLE" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_misspelt_names_are_warned_about_with_the_closest_setting(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SCOREBOX_FEATURE_TABEL=customers\nSCOREBOX_WORKERS=2\n")
    env = child_env() | {
        "SCOREBOX_CHUNKSIZE": "100",
        "SCOREBOX_API_TOKN": "s3cret",
    }
    shown = subprocess.run(
        [str(BIN / "scorebox"), "config"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    expected = {
        "SCOREBOX_CHUNKSIZE": ("environment", "SCOREBOX_CHUNK_SIZE"),
        "SCOREBOX_API_TOKN": ("environment", "SCOREBOX_API_TOKEN"),
        "SCOREBOX_FEATURE_TABEL": (".env", "SCOREBOX_FEATURE_TABLE"),
    }
    for name, (where, close) in expected.items():
        line = next(r for r in shown.stdout.splitlines() if r.startswith(name))
        assert f"not a setting, ignored ({where}); did you mean {close}?" in line
        assert any(name in w and close in w for w in shown.stderr.splitlines()), shown.stderr
    assert "SCOREBOX_WORKERS" not in shown.stdout + shown.stderr  # compose's, not scorebox's
    # The worker, too, says so when it starts.
    started = subprocess.run(
        [str(BIN / "python"), "-c", "import worker.celery_app"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    assert "SCOREBOX_CHUNKSIZE (environment) is not a scorebox setting" in started.stderr
