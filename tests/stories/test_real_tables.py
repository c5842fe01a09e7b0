"""Real tables: the Palmer penguins (a mixed-type public data set shipped in a PyPI package) in a
schema and table whose names have spaces, capitals and non-ASCII letters, keyed by text, with
columns named like the wire format's own fields; scored on every path, on PostgreSQL and SQLite.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import bentoml
import httpx
import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pytest
from sqlalchemy import Column, Double, Engine, MetaData, Table, text
from sqlalchemy.dialects.postgresql import ENUM

from scorebox.db import Tables, make_engine
from scorebox.encoding import encode_columns, encode_records, json_value
from scorebox.migrate import upgrade
from scorebox.modelinfo import ModelInfo
from scorebox.seed import PENGUIN_COLUMNS, penguin_batches
from scorebox.settings import Settings, load_settings
from scorebox_cli.processes import BIN, serving, working
from tests.conftest import PG_HOST, process_env
from tests.scoring import env_for, wait_for
from worker.celery_app import chunk_sender, deployment_queue, make_app
from worker.client import ServiceClient
from worker.jobs import get_job, submit_job
from worker.store import make_store

SCHEMA, TABLE = "Field Study", "Pingüinos 2007-2009"
ID, TARGET = "Penguin ID", "species"
# Columns named like fields of the old wire format, which must stay plain features.
ISLANDS = ("Biscoe", "Dream", "Torgersen", "Atlantis")
COLLIDING = {"id": "Body Mass (g)", "error": "Flipper Length (mm)", "probability": "Year"}


def _frame() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The penguins plus probe rows scored but never trained on: a category never seen, every
    feature NULL, dates far from the training ones."""
    frame = next(penguin_batches()).rename(columns={"id": ID, "target": TARGET})
    for name, source in COLLIDING.items():
        frame[name] = frame[source].astype("Float64") / 7
    probes = pd.DataFrame(
        [
            {ID: "Z-unseen", "Island": "Atlantis", "Sex": "unknown", "Year": 2008},
            {ID: "Z-nulls"},
            {
                ID: "Z-dates",
                "Seen On": date(1901, 2, 3),
                "Weighed At": datetime(2099, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
                "Is Male": True,
            },
        ]
    )
    return frame, probes


@dataclass(frozen=True)
class Penguins:
    settings: Settings
    tag: str
    info: ModelInfo
    url: str
    table: pd.DataFrame  # every row, read back through psycopg (not the code under test)


def _write(engine: Engine, name: str, schema: str | None, rows: pd.DataFrame) -> None:
    """Insert ``rows`` into the penguins table (created with the example's SQL types)."""
    with engine.begin() as conn:
        metadata = MetaData()
        renames = {"id": ID, "target": TARGET}
        columns = {renames.get(k, k): t for k, t in PENGUIN_COLUMNS.items()}
        if conn.dialect.name == "postgresql":  # a category stored as an enum type
            columns["Island"] = ENUM(*ISLANDS, name="island", schema=SCHEMA, create_type=False)
        table = Table(
            name,
            metadata,
            *(Column(k, t, primary_key=k == ID) for k, t in columns.items()),
            *(Column(k, Double) for k in COLLIDING),
            schema=schema,
        )
        metadata.create_all(conn)
        plain = rows.astype(object).where(rows.notna(), None)
        conn.execute(table.insert(), plain.to_dict("records"))


def _read(dsn: str, qualified: str) -> pd.DataFrame:
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f'SELECT * FROM {qualified} ORDER BY "{ID}"')
        return pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description or []])


@pytest.fixture(scope="module")
def penguins(
    database: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Penguins]:
    """Penguins in PostgreSQL (Island as an enum type), a model trained on them, and a service."""
    from training import train

    own = f"rt_{uuid.uuid4().hex[:8]}"
    dsn = f"host={PG_HOST} user=postgres dbname={database}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{own}"')
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"')
        labels = ", ".join(f"'{island}'" for island in ISLANDS)
        conn.execute(f'CREATE TYPE "{SCHEMA}".island AS ENUM ({labels})')
    url = f"postgresql+psycopg://postgres@{PG_HOST}:5432/{database}"
    settings = load_settings(
        database_url=f"{url}?options={quote(f'-csearch_path={own}')}",
        feature_table=f"{SCHEMA}.{TABLE}",
        id_column=ID,
        target_column=TARGET,
        model_name="penguins-test",
        redis_url=redis_url,
        chunk_size=60,
        max_categories=250,
    )
    engine = make_engine(settings.database_url)
    trained_rows, probes = _frame()
    try:
        _write(engine, TABLE, SCHEMA, trained_rows)
        upgrade(engine, settings.predictions_table)
        result = train(settings, engine)
        _write(engine, TABLE, SCHEMA, probes)  # scored, never trained on
    finally:
        engine.dispose()
    qualified = f'"{SCHEMA}"."{TABLE}"'
    log = tmp_path_factory.mktemp("penguins") / "serve.log"
    with serving(process_env(settings), log) as service_url:
        yield Penguins(
            settings.model_copy(update={"service_url": service_url}),
            result.tag,
            result.info,
            service_url,
            _read(
                dsn.replace("user=postgres", f"user=postgres options=-csearch_path={own}"),
                qualified,
            ),
        )


def test_training_learns_from_every_kind_and_says_what_it_left_out(penguins: Penguins) -> None:
    kinds = {f.name: f.kind for f in penguins.info.features}
    assert kinds == {
        "Island": "category",
        "Bill Length (mm)": "number",
        "Bill Depth (mm)": "number",
        "Flipper Length (mm)": "number",
        "Body Mass (g)": "number",
        "Sex": "category",
        "Is Male": "bool",
        "Year": "number",
        "Seen On": "date",
        "Weighed At": "datetime",
        "id": "number",
        "error": "number",
        "probability": "number",
    }
    assert list(penguins.info.left_out) == ["Field Notes"]
    assert penguins.info.left_out["Field Notes"].startswith("free text: 344 distinct values")
    island = next(f for f in penguins.info.features if f.name == "Island")
    assert sorted(island.categories) == ["Biscoe", "Dream", "Torgersen"]
    assert penguins.info.classes == ["Adelie", "Chinstrap", "Gentoo"]
    assert penguins.info.metrics["accuracy"] > 0.95
    assert penguins.info.feature_table == f"{SCHEMA}.{TABLE}"


def _expected(penguins: Penguins) -> pd.DataFrame:
    """The registered model's own predict_proba on every row of the table."""
    model = bentoml.sklearn.load_model(penguins.tag)
    proba = model.predict_proba(penguins.table[penguins.info.feature_names])
    return pd.DataFrame(proba, columns=[str(c) for c in model.classes_], index=penguins.table[ID])


def _json_records(frame: pd.DataFrame, names: list[str]) -> list[dict[str, Any]]:
    return [{n: json_value(row[n]) for n in names} for _, row in frame.iterrows()]


def _via_json(penguins: Penguins) -> pd.DataFrame:
    names = penguins.info.feature_names
    response = httpx.post(
        f"{penguins.url}/predict",
        json={"records": _json_records(penguins.table, names)},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    return pd.DataFrame([a["probabilities"] for a in answers], index=penguins.table[ID])


def _via_arrow(penguins: Penguins) -> pd.DataFrame:
    names = penguins.info.feature_names
    batch = pa.Table.from_pandas(penguins.table[names], preserve_index=False)
    with ServiceClient(penguins.url, None, 60) as client:
        _, result = client.score(batch)
    assert result.column("error").null_count == result.num_rows
    columns = {
        c.removeprefix("p:"): result.column(c).to_numpy()
        for c in result.column_names
        if c.startswith("p:")
    }
    return pd.DataFrame(columns, index=penguins.table[ID])


def _via_job(settings: Settings, engine: Engine, tmp_path: Path, source: str) -> pd.DataFrame:
    env = process_env(
        settings,
        SCOREBOX_REDIS_URL=settings.redis_url,
        SCOREBOX_SERVICE_URL=settings.service_url,
        SCOREBOX_CHUNK_SIZE=str(settings.chunk_size),
        SCOREBOX_ID_COLUMN=ID,
        SCOREBOX_QUEUE=deployment_queue(settings),
    )
    app = make_app(settings)
    with (
        working(env, tmp_path / "worker.log"),
        ServiceClient(settings.service_url, None, 60) as client,
    ):
        job_id = submit_job(engine, settings, client, chunk_sender(app), table=source)
        job = wait_for(engine, settings, job_id, timeout=120)
    app.close()
    assert job["status"] == "succeeded", job
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT row_id, probabilities FROM predictions WHERE source_table = :t"),
            {"t": job["table_name"]},
        ).all()
    assert len(rows) == job["rows_total"]
    decoded = {r[0]: r[1] if isinstance(r[1], dict) else json.loads(r[1]) for r in rows}
    return pd.DataFrame.from_dict(decoded, orient="index")


def _sqlite_copy(penguins: Penguins, tmp_path: Path) -> tuple[Settings, Engine]:
    """The same rows in a SQLite file, with scorebox's tables."""
    url = f"sqlite:///{tmp_path / 'penguins.db'}"
    settings = penguins.settings.model_copy(
        update={"database_url": url, "feature_table": TABLE, "queue": "penguins-sqlite"}
    )
    engine = make_engine(url)
    upgrade(engine, settings.predictions_table)
    rows = penguins.table.copy()
    rows["Weighed At"] = [None if pd.isna(v) else v.to_pydatetime() for v in rows["Weighed At"]]
    _write(engine, TABLE, None, rows)
    return settings, engine


PATHS = ["json", "arrow", "postgres job", "sqlite job"]


@pytest.mark.parametrize("path", PATHS)
def test_every_path_scores_like_the_registered_model(
    penguins: Penguins, path: str, tmp_path: Path
) -> None:
    expected = _expected(penguins)
    if path == "json":
        got = _via_json(penguins)
    elif path == "arrow":
        got = _via_arrow(penguins)
    elif path == "postgres job":
        engine = make_engine(penguins.settings.database_url)
        got = _via_job(penguins.settings, engine, tmp_path, f"{SCHEMA}.{TABLE}")
        engine.dispose()
    else:
        settings, engine = _sqlite_copy(penguins, tmp_path)
        got = _via_job(settings, engine, tmp_path, TABLE)
        engine.dispose()
    got = got.loc[expected.index, list(expected.columns)].astype(float)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-9, atol=1e-15)


def test_each_kind_encodes_identically_on_every_path(penguins: Penguins, tmp_path: Path) -> None:
    """The float matrix the model reads, column by column: training's encoder on the table as
    pandas reads it, against JSON values, an Arrow batch, and the rows a job reads from
    PostgreSQL and from SQLite."""
    info, frame = penguins.info, penguins.table
    names = info.feature_names
    reference = bentoml.sklearn.load_model(penguins.tag).steps[0][1].transform(frame[names])
    records = json.loads(json.dumps(_json_records(frame, names)))
    arrow = pa.Table.from_pandas(frame[names], preserve_index=False)
    matrices = {
        "json": encode_records(info.features, records)[0],
        "arrow": encode_columns(info.features, {n: arrow.column(n) for n in names}).matrix,
    }
    postgres = make_engine(penguins.settings.database_url)
    sqlite_settings, sqlite = _sqlite_copy(penguins, tmp_path)
    for path, engine, settings, table in (
        ("postgres job", postgres, penguins.settings, f"{SCHEMA}.{TABLE}"),
        ("sqlite job", sqlite, sqlite_settings, TABLE),
    ):
        with ServiceClient(penguins.url, None, 60) as client:
            job_id = submit_job(engine, settings, client, lambda *_: None, table=table, mode="all")
        job = get_job(engine, settings, job_id)
        store = make_store(engine, Tables.build(settings.predictions_table))
        rows = store.read(job, str(frame[ID].min()), str(frame[ID].max()))
        store.close()
        assert rows.keys.to_pylist() == frame[ID].tolist()
        matrices[path] = encode_columns(
            info.features, {n: rows.table.column(n) for n in names}
        ).matrix
        engine.dispose()
    for j, feature in enumerate(info.features):
        for path, matrix in matrices.items():
            np.testing.assert_array_equal(
                matrix[:, j], reference[:, j], err_msg=f"{feature.kind} {feature.name!r} via {path}"
            )


def test_unseen_category_is_scored_and_counted(penguins: Penguins) -> None:
    record = _json_records(
        penguins.table[penguins.table[ID] == "Z-unseen"], penguins.info.feature_names
    )
    response = httpx.post(f"{penguins.url}/predict", json={"records": record})
    assert response.status_code == 200
    metrics = ""
    for _ in range(20):  # each worker process counts its own; ask until this one has reported
        httpx.post(f"{penguins.url}/predict", json={"records": record})
        metrics = httpx.get(f"{penguins.url}/metrics").text
        if 'scorebox_unseen_categories_total{feature="Island"}' in metrics:
            break
    assert 'scorebox_unseen_categories_total{feature="Island"}' in metrics
    assert 'scorebox_unseen_categories_total{feature="Sex"}' in metrics


def test_json_takes_booleans_text_dates_and_nulls_and_names_bad_values(penguins: Penguins) -> None:
    names = penguins.info.feature_names
    good = _json_records(penguins.table.head(1), names)[0]
    assert isinstance(good["Is Male"], bool) and isinstance(good["Seen On"], str)
    bad = good | {"Is Male": "yes", "Seen On": "31/12/2020", "Island": 3, "Weighed At": "soon"}
    response = httpx.post(f"{penguins.url}/predict", json={"records": [good, bad]})
    assert response.status_code == 422
    problem = response.json()["error"]
    assert "records[1].Is Male: expected true or false, got the text 'yes'" in problem
    assert "records[1].Seen On: expected an ISO 8601 date or timestamp" in problem
    assert "records[1].Island: expected text, got the number 3" in problem
    assert "records[0]" not in problem


def test_cli_trains_on_odd_names_and_prints_what_it_used(penguins: Penguins) -> None:
    env = process_env(
        penguins.settings,
        SCOREBOX_FEATURE_TABLE=f"{SCHEMA}.{TABLE}",
        SCOREBOX_ID_COLUMN=ID,
        SCOREBOX_TARGET_COLUMN="Is Male",
        SCOREBOX_MODEL_NAME="penguins-cli",
    )
    done = subprocess.run(
        [str(BIN / "scorebox"), "train"], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "classification" in done.stdout
    assert "left out: Field Notes: free text" in done.stdout
    # the 11 penguins of unknown sex, and two probe rows
    assert "rows dropped null target: 13" in done.stdout
    assert "Sex (category)" in done.stdout


# --- keys, outcomes, many tables and deployments (the example model) -------------------------


def _rekey(engine: Engine, table: str, expression: str, kind: str) -> None:
    """A copy of the example table keyed by ``expression`` (a column of type ``kind``)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE TABLE {table} AS SELECT {expression} AS key, * FROM features; "
                f"ALTER TABLE {table} ALTER COLUMN key TYPE {kind}; "
                f"ALTER TABLE {table} ADD PRIMARY KEY (key)"
            )
        )


@pytest.mark.parametrize(
    ("expression", "kind"),
    [
        ("(id - 285) * 32000000000000000", "bigint"),  # negative, sparse, up to bigint
        ("'row ' || id", "text"),  # text order: 'row 10' sorts before 'row 2'
        ("gen_random_uuid()", "uuid"),
    ],
)
def test_any_integer_text_or_uuid_key_scores_each_row_once_in_even_chunks(
    scoring: Settings,
    engine: Engine,
    client: ServiceClient,
    enqueue: Callable[[int, int, str], None],
    tmp_path: Path,
    expression: str,
    kind: str,
) -> None:
    _rekey(engine, "rekeyed", expression, kind)
    settings = scoring.model_copy(update={"id_column": "key"})
    with working(env_for(settings, SCOREBOX_ID_COLUMN="key"), tmp_path / "worker.log"):
        job_id = submit_job(engine, settings, client, enqueue, table="rekeyed")
        job = wait_for(engine, settings, job_id)
    assert (job["status"], job["rows_scored"], job["key_kind"]) == (
        "succeeded",
        569,
        kind.replace("bigint", "integer"),
    )
    with engine.connect() as conn:
        sizes = [
            r[0]
            for r in conn.execute(text("SELECT rows_scored FROM scorebox_chunks ORDER BY chunk_no"))
        ]
        keys = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT p.row_id) FROM predictions p JOIN rekeyed r "
                "ON p.row_id = CAST(r.key AS text) WHERE p.source_table LIKE '%.rekeyed'"
            )
        ).one()
    assert sizes == [100, 100, 100, 100, 100, 69]
    assert tuple(keys) == (569, 569)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("UPDATE features SET id = 1 WHERE id IN (2, 3)", "is not unique: 1 (3 times)"),
        ("UPDATE features SET id = NULL WHERE id = 5", "is NULL in 1 row(s)"),
    ],
)
def test_repeated_or_null_ids_are_one_line_at_score_and_train(
    scoring: Settings, engine: Engine, change: str, message: str
) -> None:
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE features DROP CONSTRAINT features_pkey"))
        conn.execute(text("ALTER TABLE features ALTER COLUMN id DROP NOT NULL"))
        conn.execute(text(change))
    env = env_for(scoring)
    for command in (["score"], ["train"]):
        done = subprocess.run(
            [sys.executable, "-m", "scorebox", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 1, done.stdout + done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_rows_the_service_refuses_fail_at_once_without_retries(
    scoring: Settings,
    engine: Engine,
    client: ServiceClient,
    enqueue: Callable[[int, int, str], None],
    tmp_path: Path,
) -> None:
    job_id = submit_job(engine, scoring, client, lambda *_: None)
    with engine.begin() as conn:  # a job asking for a column the model does not know: a 422
        conn.execute(
            text(
                "UPDATE scorebox_jobs SET features = CAST(CAST(features AS jsonb) || "
                """'[{"name": "id", "kind": "number", "read": "number"}]' AS json) WHERE id = :j"""
            ),
            {"j": job_id},
        )
    with working(env_for(scoring), tmp_path / "worker.log"):
        for chunk in range(6):
            enqueue(job_id, chunk, deployment_queue(scoring))
        job = wait_for(engine, scoring, job_id, timeout=60)
    assert (job["status"], job["rows_failed"], job["rows_scored"]) == (
        "succeeded_with_errors",
        569,
        0,
    )
    with engine.connect() as conn:
        attempts = {r[0] for r in conn.execute(text("SELECT attempt FROM scorebox_chunks"))}
        reasons = {r[0] for r in conn.execute(text("SELECT reason FROM scorebox_failed_rows"))}
    assert attempts == {1}
    assert reasons == {
        "service answered 422 to /v1/predict/arrow: batch has column(s) that are not features: id"
    }


def test_exit_codes_tell_how_the_job_ended(
    scoring: Settings, engine: Engine, tmp_path: Path
) -> None:
    with engine.begin() as conn:
        conn.execute(text("UPDATE features SET mean_area = 'Infinity' WHERE id IN (7, 300, 301)"))
    env = env_for(scoring)

    def score(*options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "scorebox", "score", "--wait", *options],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    with working(env, tmp_path / "worker.log"):
        some_failed = score()
        over_limit = score("--max-failed-rows", "2")
        within = score("--max-failed-rows", "1%")
        bad_limit = score("--max-failed-rows", "lots")
    assert some_failed.returncode == 3, some_failed.stdout
    assert "succeeded_with_errors - 566 scored, 3 failed of 569 rows" in some_failed.stdout
    assert over_limit.returncode == 1
    assert "3 rows failed, more than --max-failed-rows 2" in over_limit.stdout
    assert within.returncode == 3
    assert bad_limit.returncode == 1 and "--max-failed-rows 'lots'" in bad_limit.stderr


def test_tables_with_the_same_ids_keep_their_own_predictions(
    scoring: Settings,
    engine: Engine,
    client: ServiceClient,
    enqueue: Callable[[int, int, str], None],
    tmp_path: Path,
) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE other AS SELECT * FROM features WHERE id <= 300"))
        conn.execute(text("UPDATE other SET mean_radius = mean_radius * 2"))
    with working(env_for(scoring), tmp_path / "worker.log"):
        first = wait_for(engine, scoring, submit_job(engine, scoring, client, enqueue))
        second = wait_for(
            engine, scoring, submit_job(engine, scoring, client, enqueue, table="other", mode="new")
        )
        again = wait_for(
            engine, scoring, submit_job(engine, scoring, client, enqueue, table="other", mode="new")
        )
    assert (first["rows_scored"], second["rows_scored"], again["rows_total"]) == (569, 300, 0)
    with engine.connect() as conn:
        counts = dict(
            conn.execute(text("SELECT source_table, count(*) FROM predictions GROUP BY 1")).all()
        )
        differ = conn.execute(
            text(
                "SELECT count(*) FROM predictions a JOIN predictions b USING (row_id, model_tag) "
                "WHERE a.source_table LIKE '%.features' AND b.source_table LIKE '%.other' "
                "AND a.probability <> b.probability"
            )
        ).scalar()
    assert sorted(counts.values()) == [300, 569] and len(counts) == 2
    assert differ > 0  # the second table's rows did not overwrite the first's


def test_two_deployments_share_redis_and_database_without_taking_each_others_work(
    scoring: Settings, engine: Engine, client: ServiceClient, penguins: Penguins, tmp_path: Path
) -> None:
    """The example model and the penguins model, each with its own service and worker, over one
    Redis database and one PostgreSQL schema, scoring at the same time."""
    fast = {"SCOREBOX_CHUNK_LEASE_SECONDS": "3", "SCOREBOX_SWEEP_SECONDS": "1"}
    birds = penguins.settings.model_copy(
        update={"database_url": scoring.database_url, "redis_url": scoring.redis_url}
    )
    env_a = env_for(scoring, **fast)
    env_b = env_for(birds, SCOREBOX_ID_COLUMN=ID, **fast)
    assert deployment_queue(scoring) != deployment_queue(birds)
    app = make_app(scoring)
    send = chunk_sender(app)
    with (
        working(env_a, tmp_path / "a.log"),
        working(env_b, tmp_path / "b.log"),
        ServiceClient(penguins.url, None, 60) as birds_client,
    ):
        job_a = submit_job(engine, scoring, client, send)
        job_b = submit_job(engine, birds, birds_client, send, table=f"{SCHEMA}.{TABLE}")
        done_a, done_b = wait_for(engine, scoring, job_a), wait_for(engine, birds, job_b)
        # A chunk of the example deployment sent to the penguins' queue: refused untouched, then
        # sent again by the example deployment's own sweeper.
        stray = submit_job(engine, scoring, client, lambda *_: None)
        app.send_task(
            "scorebox.score_chunk",
            (stray, 0, deployment_queue(scoring)),
            queue=deployment_queue(birds),
        )
        deadline = time.monotonic() + 30
        while "refused" not in (tmp_path / "b.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert get_job(engine, scoring, stray)["status"] == "queued"
        done_stray = wait_for(engine, scoring, stray, timeout=60)
    app.close()
    assert "refused" in (tmp_path / "b.log").read_text()
    assert (done_a["status"], done_a["rows_scored"]) == ("succeeded", 569)
    assert (done_b["status"], done_b["rows_scored"]) == ("succeeded", 347)
    assert done_stray["status"] == "succeeded"
    with engine.connect() as conn:
        tags = dict(
            conn.execute(text("SELECT model_tag, count(*) FROM predictions GROUP BY 1")).all()
        )
    assert tags == {done_a["model_tag"]: 569, penguins.tag: 347}
