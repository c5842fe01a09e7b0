"""Champion against challenger on a real survey table (statsmodels' `fair`, in a PyPI package): a
text key, a boolean target and a NULL in some feature of every row. Both versions are trained
and signed for real, score the table with their exported models, and `scorebox models compare` and
`promote` are run as a user runs them; every metric is computed here again, independently, on the
rows neither version trained on. The Palmer penguins give the multiclass case."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score
from sqlalchemy import Engine, text

from scorebox.catalog import Catalog
from scorebox.db import Tables, make_engine
from scorebox.encoding import encode_columns, label_text
from scorebox.migrate import upgrade
from scorebox.modelinfo import TRAINING_ROWS, training_row_ids
from scorebox.settings import Settings, load_settings
from scorebox_cli.processes import BIN
from service.predict import Predictor
from tests.conftest import new_schema, process_env

KEY, TARGET = "respondent", "had_affair"


@dataclass(frozen=True)
class Survey:
    settings: Settings
    engine: Engine
    table: str
    frame: pd.DataFrame
    champion: str
    challenger: str


def _fair() -> pd.DataFrame:
    """The survey with a text key, a boolean target, and a NULL in every row (education on
    even rows, occupation on odd ones)."""
    import statsmodels.api as sm

    frame = sm.datasets.fair.load_pandas().data
    frame.insert(0, KEY, [f"r-{i:05d}" for i in range(len(frame))])
    frame[TARGET] = frame.pop("affairs") > 0
    frame["educ"] = frame["educ"].where(frame.index % 2 == 1)
    frame["occupation"] = frame["occupation"].where(frame.index % 2 == 0)
    return frame


def _score(
    engine: Engine,
    catalog: Catalog,
    tag: str,
    table: str,
    frame: pd.DataFrame,
    key: str = KEY,
) -> None:
    """Write ``tag``'s predictions of every row, made by its exported model (as a job would)."""
    import pyarrow as pa

    predictor = Predictor.load(catalog.local(tag))
    arrow = pa.Table.from_pandas(frame, preserve_index=False)
    columns = {f.name: arrow.column(f.name) for f in predictor.features}
    encoded = encode_columns(predictor.features, columns)
    predicted, proba = predictor.run(encoded.matrix)
    assert proba is not None
    rows = [
        {
            "row_id": row_id,
            "model_tag": tag,
            "source_table": table,
            "predicted_label": predictor.keys[k],
            "probability": float(p.max()),
            "probabilities": dict(zip(predictor.keys, p.tolist(), strict=True)),
        }
        for row_id, k, p in zip(frame[key].astype(str), predicted.tolist(), proba, strict=True)
    ]
    predictions = Tables.build("predictions").predictions
    with engine.begin() as conn:
        conn.execute(predictions.insert(), rows)


@pytest.fixture(scope="module")
def survey(database: str) -> Iterator[Survey]:
    from training import train

    schema, url = new_schema(database, "cmp")

    table = f'{schema}."AffairSurvey"'
    settings = load_settings(
        database_url=url,
        model_name="survey",
        feature_table=table,
        id_column=KEY,
        target_column=TARGET,
    )
    engine = make_engine(settings.database_url)
    upgrade(engine, settings.predictions_table)
    frame = _fair()
    frame.to_sql("AffairSurvey", engine, schema=schema, index=False)
    # Several splits: whatever row becomes the example, a NULL in it must not stop training.
    champion = train(settings, engine).tag
    challenger = train(
        settings.model_copy(update={"estimator": "logistic_regression", "random_state": 7}), engine
    ).tag
    catalog = Catalog.from_settings(settings, engine)
    for tag in (champion, challenger):
        _score(engine, catalog, tag, f"{schema}.AffairSurvey", frame)
    yield Survey(settings, engine, table, frame, champion, challenger)
    engine.dispose()


def _cli(survey: Survey, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "scorebox"), *args],
        env=process_env(
            survey.settings,
            SCOREBOX_FEATURE_TABLE=survey.table,
            SCOREBOX_ID_COLUMN=KEY,
            SCOREBOX_TARGET_COLUMN=TARGET,
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_a_null_in_the_example_row_is_kept_as_null(survey: Survey) -> None:
    catalog = Catalog.from_settings(survey.settings, survey.engine)
    for tag in (survey.champion, survey.challenger):
        example = catalog.info(tag).example
        assert set(example) == set(survey.frame.columns) - {KEY, TARGET}
        assert None in (example["educ"], example["occupation"])


@pytest.mark.slow
def test_boolean_labels_get_every_metric_on_rows_neither_version_trained_on(
    survey: Survey, tmp_path: Path
) -> None:
    catalog = Catalog.from_settings(survey.settings, survey.engine)
    trained: set[str] = set()
    for tag in (survey.champion, survey.challenger):
        trained |= training_row_ids(catalog.local(tag).read(TRAINING_ROWS))
    assert 0 < len(trained) < len(survey.frame)
    done = _cli(
        survey,
        "models",
        "compare",
        survey.champion,
        survey.challenger,
        "--labels",
        TARGET,
        "--out",
        str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    fresh = survey.frame[~survey.frame[KEY].isin(trained)]
    assert f"{len(fresh):,} rows of " in done.stdout
    assert f"after leaving out {len(survey.frame) - len(fresh):,} rows" in done.stdout
    assert "nan" not in done.stdout.lower() and "Warning" not in done.stderr

    with survey.engine.connect() as conn:
        predicted = pd.read_sql(
            text("SELECT row_id, model_tag, predicted_label, probabilities FROM predictions"),
            conn,
        )
    truth = fresh.set_index(KEY)[TARGET].map(label_text)
    for tag, column in ((survey.champion, 0), (survey.challenger, 1)):
        mine = predicted[predicted.model_tag == tag].set_index("row_id").loc[truth.index]
        positive = [p["true"] for p in mine["probabilities"]]
        proba = np.column_stack([1 - np.array(positive), positive])
        expected = {
            "roc_auc": roc_auc_score(truth == "true", positive),
            "accuracy": accuracy_score(truth, mine["predicted_label"]),
            "log_loss": log_loss(truth, proba, labels=["false", "true"]),
        }
        for metric, value in expected.items():
            line = next(r for r in done.stdout.splitlines() if r.startswith(f"{metric}:"))
            shown = re.match(rf"{metric}: ([0-9.]+) -> ([0-9.]+)", line)
            assert shown is not None, line
            assert float(shown.group(column + 1)) == pytest.approx(value, abs=1e-4), metric

    gate = _cli(
        survey,
        "models",
        "promote",
        survey.challenger,
        "--to",
        "champion",
        "--if",
        "log_loss <= 10",
        "--labels",
        TARGET,
    )
    assert gate.returncode == 0, gate.stdout + gate.stderr
    assert "promoted" in gate.stdout
    for metric in ("roc_auc", "accuracy", "log_loss"):
        again = _cli(
            survey,
            "models",
            "promote",
            survey.champion,
            "--to",
            "champion",
            "--if",
            f"{metric} >= champion + 100",
            "--labels",
            TARGET,
        )
        assert again.returncode == 1 and f"not promoted: {metric} " in again.stdout, again.stderr


@pytest.mark.slow
def test_compare_on_training_rows_only_when_asked_and_warns_when_nothing_else_is_left(
    survey: Survey, tmp_path: Path
) -> None:
    every = _cli(
        survey,
        "models",
        "compare",
        survey.champion,
        survey.challenger,
        "--training-rows",
        "--out",
        str(tmp_path),
    )
    assert every.returncode == 0, every.stderr
    assert f"{len(survey.frame):,} rows of " in every.stdout

    # Only training rows scored by both: compared, and said loudly.
    catalog = Catalog.from_settings(survey.settings, survey.engine)
    learnt = training_row_ids(catalog.local(survey.champion).read(TRAINING_ROWS))
    with survey.engine.begin() as conn:
        conn.execute(
            text("DELETE FROM predictions WHERE model_tag = :t AND NOT (row_id = ANY(:keep))"),
            {"t": survey.challenger, "keep": sorted(learnt)},
        )
    try:
        flagged = _cli(
            survey, "models", "compare", survey.champion, survey.challenger, "--out", str(tmp_path)
        )
        assert flagged.returncode == 0, flagged.stderr
        assert "WARNING: every compared row is a training row" in flagged.stderr
        assert "ALL OF THEM TRAINING ROWS" in flagged.stdout
    finally:
        catalog_engine = survey.engine
        with catalog_engine.begin() as conn:
            conn.execute(
                text("DELETE FROM predictions WHERE model_tag = :t"), {"t": survey.challenger}
            )
        _score(
            survey.engine,
            catalog,
            survey.challenger,
            survey.table.replace('"', ""),
            survey.frame,
        )

    occupied = tmp_path / "a-file"
    occupied.write_text("x")
    for out in (occupied, Path("/proc/no-such-place")):
        refused = _cli(
            survey, "models", "compare", survey.champion, survey.challenger, "--out", str(out)
        )
        assert refused.returncode == 1 and "(--out)" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_multiclass_labels_get_roc_auc_one_vs_rest_and_log_loss(
    database: str, tmp_path: Path
) -> None:

    from scorebox.seed import seed
    from training import train

    schema, url = new_schema(database, "cmp")
    settings = load_settings(
        database_url=url,
        model_name="penguins",
        feature_table="penguins",
    )
    engine = make_engine(settings.database_url)
    try:
        upgrade(engine, settings.predictions_table)
        with engine.begin() as conn:
            seed(conn, "penguins", id_column="id", target_column="target", example="penguins")
        a = train(settings, engine).tag
        b = train(settings.model_copy(update={"estimator": "random_forest"}), engine).tag
        catalog = Catalog.from_settings(settings, engine)
        frame = pd.read_sql_table("penguins", engine, schema=schema)
        for tag in (a, b):
            _score(engine, catalog, tag, f"{schema}.penguins", frame, key="id")
        command = ["models", "compare", a, b, "--labels", "target", "--table", "penguins"]
        done = subprocess.run(
            [str(BIN / "scorebox"), *command, "--out", str(tmp_path)],
            env=process_env(settings),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        trained = set()
        for tag in (a, b):
            trained |= training_row_ids(catalog.local(tag).read(TRAINING_ROWS))
        fresh = frame[~frame["id"].astype(str).isin(trained) & frame["target"].notna()]
        with engine.connect() as conn:
            predicted = pd.read_sql(
                text("SELECT row_id, model_tag, probabilities FROM predictions"), conn
            )
        keys = sorted(frame["target"].dropna().unique())
        for tag, column in ((a, 1), (b, 2)):
            mine = predicted[predicted.model_tag == tag].set_index("row_id").loc[fresh["id"]]
            proba = np.array([[p[k] for k in keys] for p in mine["probabilities"]])
            expected = {
                "roc_auc": roc_auc_score(fresh["target"], proba, multi_class="ovr", labels=keys),
                "log_loss": log_loss(fresh["target"], proba, labels=keys),
            }
            for metric, value in expected.items():
                line = next(r for r in done.stdout.splitlines() if r.startswith(f"{metric}:"))
                shown = re.match(rf"{metric}: ([0-9.]+) -> ([0-9.]+)", line)
                assert shown is not None, line
                assert float(shown.group(column)) == pytest.approx(value, abs=1e-4), metric
    finally:
        engine.dispose()
