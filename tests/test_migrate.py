import uuid

import psycopg
import pytest
from sqlalchemy import Engine, inspect

from scorebox.db import JOBS_TABLE, make_engine
from scorebox.errors import ConfigError
from scorebox.migrate import (
    create_database_if_missing,
    current_revision,
    head_revision,
    upgrade,
    wait_for_database,
)
from scorebox.settings import Settings
from tests.conftest import PG_ADMIN


def test_upgrade_from_empty_creates_tables_at_head(settings: Settings, engine: Engine) -> None:
    assert current_revision(engine) is None
    upgrade(engine, settings.predictions_table)
    assert current_revision(engine) == head_revision()
    tables = set(inspect(engine).get_table_names())
    assert {settings.predictions_table, JOBS_TABLE} <= tables
    primary_key = inspect(engine).get_pk_constraint(settings.predictions_table)
    assert primary_key["constrained_columns"] == ["row_id", "model_tag"]


def test_upgrade_twice_changes_nothing(settings: Settings, engine: Engine) -> None:
    upgrade(engine, settings.predictions_table)
    upgrade(engine, settings.predictions_table)
    assert current_revision(engine) == head_revision()


def test_missing_postgres_database_is_created_once() -> None:
    name = f"scorebox_new_{uuid.uuid4().hex[:8]}"
    engine = make_engine(f"postgresql://postgres@127.0.0.1:5432/{name}")
    try:
        assert create_database_if_missing(engine) is True
        assert create_database_if_missing(engine) is False
        upgrade(engine, "predictions")
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_unreachable_database_is_a_clear_error() -> None:
    engine = make_engine("postgresql://postgres@127.0.0.1:1/scorebox")
    expected = r"cannot reach the database at .*:1/scorebox \(SCOREBOX_DATABASE_URL\): .*refused"
    with pytest.raises(ConfigError, match=expected):
        wait_for_database(engine, timeout=0.5, interval=0.1)
    engine.dispose()
