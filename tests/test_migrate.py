import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, inspect, text

from scorebox.db import CHUNKS_TABLE, JOBS_TABLE, make_engine
from scorebox.errors import ConfigError
from scorebox.migrate import (
    create_database_if_missing,
    current_revision,
    head_revision,
    upgrade,
    wait_for_database,
)
from scorebox.settings import Settings
from scorebox_cli.processes import BIN, child_env
from tests.conftest import PG_ADMIN


def test_upgrade_from_empty_creates_tables_at_head(settings: Settings, engine: Engine) -> None:
    assert current_revision(engine) is None
    upgrade(engine, settings.predictions_table)
    assert current_revision(engine) == head_revision()
    tables = set(inspect(engine).get_table_names())
    assert {settings.predictions_table, JOBS_TABLE} <= tables
    primary_key = inspect(engine).get_pk_constraint(settings.predictions_table)
    assert primary_key["constrained_columns"] == ["row_id", "model_tag", "source_table"]


def _old_rows(engine: Engine) -> None:
    """Two jobs' predictions written by scorebox before 0003: integer ids, no source table."""
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE features (id bigint PRIMARY KEY)"))
        conn.execute(
            text(
                f"INSERT INTO {JOBS_TABLE} (id, table_name, model_tag, mode, status) VALUES "
                "(1, 'features', 'm:1', 'all', 'succeeded'), (2, 'gone', 'm:1', 'all', 'failed')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO predictions (row_id, model_tag, predicted_label, job_id) VALUES "
                "(1, 'm:1', 'a', 1), (2, 'm:1', 'b', 1), (1, 'm:2', 'c', 2), (3, 'm:1', 'd', NULL)"
            )
        )
        conn.execute(
            text(f"INSERT INTO {CHUNKS_TABLE} (job_id, chunk_no, id_lo, id_hi) VALUES (1, 0, 1, 2)")
        )


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_upgrade_from_0002_keeps_every_prediction(
    backend: str, settings: Settings, engine: Engine, tmp_path: Path
) -> None:
    if backend == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "predictions", revision="0002")
    _old_rows(engine)
    upgrade(engine, "predictions")
    assert current_revision(engine) == head_revision()
    schema = "" if backend == "sqlite" else f"{inspect(engine).default_schema_name}."
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT source_table, model_tag, row_id, predicted_label FROM predictions")
        ).all()
        chunk = conn.execute(text(f"SELECT id_lo, id_hi FROM {CHUNKS_TABLE}")).one()
        tables = dict(conn.execute(text(f"SELECT id, table_name FROM {JOBS_TABLE}")).all())
    assert sorted(rows) == sorted(
        [
            (f"{schema}features", "m:1", "1", "a"),
            (f"{schema}features", "m:1", "2", "b"),
            ("gone", "m:2", "1", "c"),
            (f"{schema}features", "m:1", "3", "d"),
        ]
    )
    assert tuple(chunk) == ("1", "2")
    assert tables == {1: f"{schema}features", 2: "gone"}
    if backend == "sqlite":
        engine.dispose()


def test_renamed_predictions_table_is_created_and_a_missing_schema_named(engine: Engine) -> None:
    upgrade(engine, "predictions")
    assert upgrade(engine, "scores_v2") is True
    assert "scores_v2" in inspect(engine).get_table_names()
    assert upgrade(engine, "scores_v2") is False
    with pytest.raises(ConfigError, match=r"schema 'ml' of SCOREBOX_PREDICTIONS_TABLE='ml\.preds'"):
        upgrade(engine, "ml.preds")


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


@pytest.mark.slow
def test_db_check_waits_for_the_migration_then_passes(
    settings: Settings, engine: Engine, env: dict[str, str]
) -> None:
    import subprocess
    import threading
    import time

    from scorebox_cli.processes import BIN

    check = [str(BIN / "scorebox"), "db", "check"]
    done = subprocess.run(check, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "scorebox's tables are missing: run `scorebox db upgrade`" in done.stderr
    # A pod's init step waits for the migration Job: the check passes once it ran.
    migration = threading.Timer(3, upgrade, (engine, settings.predictions_table))
    migration.start()
    started = time.monotonic()
    done = subprocess.run(
        [*check, "--wait", "60"], env=env, capture_output=True, text=True, timeout=90
    )
    migration.join()
    assert done.returncode == 0, done.stderr
    assert "schema is up to date" in done.stdout and "waiting:" in done.stderr
    assert 3 <= time.monotonic() - started < 30


def test_sql_ascii_database_is_one_line_naming_the_setting() -> None:
    name = f"scorebox_ascii_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE \"{name}\" ENCODING 'SQL_ASCII' TEMPLATE template0")
    try:
        env = child_env()
        env["SCOREBOX_DATABASE_URL"] = f"postgresql://postgres@127.0.0.1:5432/{name}"
        done = subprocess.run(
            [str(BIN / "scorebox"), "db", "upgrade"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "SQL_ASCII encoding" in lines[0] and "SCOREBOX_DATABASE_URL" in lines[0]
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
