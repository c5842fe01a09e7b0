import subprocess
import sys

import pytest

from scorebox.errors import ConfigError
from scorebox.names import TableName, parse_table
from scorebox.settings import load_settings


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


def test_any_name_the_database_could_hold_is_accepted_as_written() -> None:
    settings = load_settings(
        feature_table='ml."Clinic Visits"',
        id_column="Visit ID",
        feature_columns='["größe", "a,b", "x; DROP TABLE y"]',
    )
    assert settings.feature_table == 'ml."Clinic Visits"'
    assert settings.feature_columns == ["größe", "a,b", "x; DROP TABLE y"]
    assert parse_table('ml."Clinic Visits"') == TableName("ml", "Clinic Visits")
    assert parse_table('"my.table"') == TableName(None, "my.table")
    assert parse_table('a."b""c"') == TableName("a", 'b"c')
    assert str(TableName("ml", "my.table")) == 'ml."my.table"'
    churn = load_settings(model_name="churn", database_url="postgresql://u:secret@db:5432/prod")
    staging = churn.model_copy(update={"database_url": "postgresql://u@db:5432/staging"})
    assert churn.queue_name.startswith("scorebox.churn.")
    assert staging.queue_name != churn.queue_name  # same model, another database
    assert churn.queue_for("other") != churn.queue_name
    # The worker's role and the CLI's reach one database: one queue, and no secret in its name.
    worker = churn.model_copy(update={"database_url": "postgresql://worker:pw@db:5432/prod"})
    assert worker.queue_name == churn.queue_name
    assert "secret" not in churn.queue_name
    assert churn.model_copy(update={"queue": "mine"}).queue_name == "mine"


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
