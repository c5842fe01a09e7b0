import hashlib
import json
import subprocess
import sys
from pathlib import Path

import bentoml
import numpy as np
import pandas as pd
import psycopg
import pytest
from sklearn.datasets import load_diabetes, load_iris
from sklearn.metrics import accuracy_score, log_loss, mean_absolute_error, r2_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sqlalchemy import Engine, text

from scorebox.errors import ConfigError, DataError
from scorebox.modelinfo import ModelInfo
from scorebox.seed import seed
from scorebox.settings import Settings, load_settings
from training import train


def _seed_example(engine: Engine, settings: Settings) -> None:
    with engine.begin() as conn:
        seed(conn, settings.feature_table, id_column="id", target_column="target")


def _load_table(settings: Settings, query: str) -> pd.DataFrame:
    """Read straight through psycopg, not through the code under test."""
    dsn = settings.database_url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(query)
        names = [d.name for d in cur.description or []]
        return pd.DataFrame(cur.fetchall(), columns=names)


def _write_frame(engine: Engine, name: str, frame: pd.DataFrame) -> None:
    frame.to_sql(name, engine, index=False)


def test_training_registers_model_with_metadata_and_true_metrics(
    settings: Settings, engine: Engine
) -> None:
    _seed_example(engine, settings)
    result = train(settings, engine)

    model = bentoml.models.get(result.tag)
    info = ModelInfo.from_metadata(model.info.metadata, result.tag)
    assert model.info.labels["task"] == "classification"
    assert info.task == "classification"
    assert info.classes == [0, 1]
    assert (info.id_column, info.target_column) == ("id", "target")
    frame = _load_table(settings, "SELECT * FROM features ORDER BY id")
    expected_features = [c for c in frame.columns if c not in ("id", "target")]
    assert info.feature_names == expected_features
    assert {f.kind for f in info.features} == {"number"}
    assert info.left_out == {}
    assert info.training_rows + info.holdout_rows == 569
    assert set(info.versions) >= {"scikit-learn", "bentoml", "pandas"}

    # Metrics recomputed from the stored model on the same holdout split.
    features = frame[expected_features].astype(float)
    target = frame["target"].astype(int)
    _, x_test, _, y_test = train_test_split(
        features, target, test_size=0.2, random_state=42, stratify=target
    )
    pipeline = bentoml.sklearn.load_model(result.tag)
    proba = pipeline.predict_proba(x_test)
    assert info.holdout_rows == len(y_test)
    assert info.metrics["roc_auc"] == pytest.approx(roc_auc_score(y_test, proba[:, 1]))
    assert info.metrics["accuracy"] == pytest.approx(accuracy_score(y_test, proba.argmax(axis=1)))
    assert info.metrics["log_loss"] == pytest.approx(log_loss(y_test, proba))
    # A floor, not a snapshot: the breast cancer data is easy for boosted trees.
    assert info.metrics["roc_auc"] > 0.97
    assert info.metrics["accuracy"] > 0.9

    artifact = Path(model.path_of("saved_model.pkl")).read_bytes()
    assert info.artifact_sha256 == hashlib.sha256(artifact).hexdigest()
    hashed = pd.util.hash_pandas_object(frame[["id", *expected_features, "target"]], index=False)
    digest = hashlib.sha256("\x1f".join(["id", *expected_features, "target"]).encode())
    digest.update(hashed.to_numpy().tobytes())
    assert info.fingerprint == digest.hexdigest()

    assert result.report == Path(model.path) / "report" / "report.md"
    assert "roc_auc" in result.report.read_text()
    assert (result.report.parent / "evaluation.png").read_bytes()[:4] == b"\x89PNG"


def test_regression_task_is_inferred_and_evaluated(database_url: str, engine: Engine) -> None:
    data = load_diabetes(as_frame=True).frame
    data.insert(0, "row_id", np.arange(1, len(data) + 1))
    _write_frame(engine, "diabetes", data)
    settings = load_settings(
        database_url=database_url,
        model_name="diabetes",
        feature_table="diabetes",
        id_column="row_id",
        estimator="ridge",
    )
    result = train(settings, engine)
    info = result.info
    assert info.task == "regression" and info.classes == [] and info.estimator == "ridge"
    features = data.drop(columns=["row_id", "target"])
    _, x_test, _, y_test = train_test_split(
        features, data["target"], test_size=0.2, random_state=42
    )
    predicted = bentoml.sklearn.load_model(result.tag).predict(x_test)
    assert info.metrics["mae"] == pytest.approx(mean_absolute_error(y_test, predicted))
    assert info.metrics["rmse"] == pytest.approx(np.sqrt(np.mean((y_test - predicted) ** 2)))
    assert info.metrics["r2"] == pytest.approx(r2_score(y_test, predicted))
    assert info.metrics["r2"] > 0.3


def test_multiclass_with_text_labels_and_chosen_columns(database_url: str, engine: Engine) -> None:
    iris = load_iris(as_frame=True)
    frame = iris.frame.rename(columns=lambda c: c.replace(" (cm)", "").replace(" ", "_"))
    frame["target"] = iris.target_names[iris.target]
    frame.insert(0, "id", np.arange(len(frame)))
    _write_frame(engine, "iris", frame)
    settings = load_settings(
        database_url=database_url,
        feature_table="iris",
        feature_columns="petal_length,petal_width",
        estimator="logistic_regression",
    )
    result = train(settings, engine)
    assert result.info.classes == ["setosa", "versicolor", "virginica"]
    assert result.info.feature_names == ["petal_length", "petal_width"]
    assert result.info.metrics["accuracy"] > 0.9


def test_null_targets_are_dropped_and_null_features_imputed(
    settings: Settings, engine: Engine
) -> None:
    _seed_example(engine, settings)
    with engine.begin() as conn:
        conn.execute(text("UPDATE features SET target = NULL WHERE id <= 7"))
        conn.execute(text("UPDATE features SET mean_radius = NULL WHERE id BETWEEN 8 AND 20"))
    result = train(settings, engine)
    assert result.info.data_notes == {
        "rows_dropped_null_target": 7,
        "rows_dropped_infinite_target": 0,
        "rows_dropped_infinite_feature": 0,
        "rows_with_null_features_imputed": 13,
    }
    assert result.info.training_rows + result.info.holdout_rows == 569 - 7


TWENTY = "SELECT g, g::float, g % 2 FROM generate_series(1, 20) g"


@pytest.mark.parametrize(
    ("prepare", "overrides", "message"),
    [
        ("", {}, "does not exist"),
        ("CREATE TABLE features (id int, x float, target int)", {}, "no rows"),
        (
            "CREATE TABLE features (id int, x float, doc json, target int);"
            f"INSERT INTO features (id, x, target) {TWENTY}",
            {"feature_columns": "x,doc"},
            "'doc': JSON values are not a supported feature type",
        ),
        (
            "CREATE TABLE features (id int, x float, target int, y float);"
            f"INSERT INTO features (id, x, target) {TWENTY}",
            {"feature_columns": "x,y"},
            "'y' is NULL in every row",
        ),
        (
            "CREATE TABLE features (id int, x float, target int);"
            "INSERT INTO features VALUES (1, 1.0, NULL), (2, 2.0, NULL)",
            {},
            "'target' is NULL in every row",
        ),
        (
            "CREATE TABLE features (id int, x float, target int);"
            "INSERT INTO features SELECT g, g, 1 FROM generate_series(1, 20) g",
            {},
            "single class",
        ),
        (
            "CREATE TABLE features (id int, x float, target int);"
            "INSERT INTO features VALUES (1, 1.0, 0), (2, 2.0, 1)",
            {},
            "has 2 usable row\\(s\\); at least 10",
        ),
        (
            "CREATE TABLE features (id int, x float, label int)",
            {},
            "column 'target' \\(SCOREBOX_TARGET_COLUMN\\) is not in table",
        ),
        (
            "CREATE TABLE features (id float, x float, target int)",
            {},
            "an id must be an integer, text or UUID column",
        ),
        (
            "CREATE TABLE features (id int, doc json, target int);"
            "INSERT INTO features (id, target) SELECT g, g % 2 FROM generate_series(1, 20) g",
            {},
            "no usable feature columns .*doc: JSON",
        ),
        (
            f"CREATE TABLE features (id int, x float, target int); INSERT INTO features {TWENTY}",
            {"feature_columns": "x,missing"},
            "'missing' \\(SCOREBOX_FEATURE_COLUMNS\\)",
        ),
        (
            'CREATE TABLE "Features" (id int, x float, target int)',
            {},
            "table 'features' \\(SCOREBOX_FEATURE_TABLE\\) does not exist in the database; "
            "did you mean 'Features'\\? Names are case-sensitive",
        ),
        (
            "CREATE TABLE features (id int, x float, target int)",
            {"feature_table": "ml.features"},
            "schema 'ml' \\(SCOREBOX_FEATURE_TABLE\\) does not exist",
        ),
    ],
)
def test_unusable_tables_are_clear_errors(
    database_url: str, engine: Engine, prepare: str, overrides: dict[str, str], message: str
) -> None:
    if prepare:
        with engine.begin() as conn:
            for statement in prepare.split(";"):
                conn.execute(text(statement))
    settings = load_settings(database_url=database_url, **overrides)
    with pytest.raises(DataError, match=message):
        train(settings, engine)


def test_estimator_that_cannot_do_the_task_is_refused(settings: Settings, engine: Engine) -> None:
    _seed_example(engine, settings)
    wrong = settings.model_copy(update={"estimator": "ridge"})
    with pytest.raises(ConfigError, match="SCOREBOX_ESTIMATOR: 'ridge' cannot do classification"):
        train(wrong, engine)


@pytest.mark.slow
def test_readme_commands_migrate_seed_train_and_list_the_model(env: dict[str, str]) -> None:
    def run(*args: str) -> str:
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr + done.stdout
        return done.stdout

    bin_dir = Path(sys.executable).parent
    run(str(bin_dir / "scorebox"), "db", "upgrade")
    assert "569 rows inserted" in run(str(bin_dir / "scorebox"), "seed")
    out = run(sys.executable, "-m", "training")
    assert "registered scorebox-test:" in out and "roc_auc" in out and "report:" in out
    tag = out.split("registered ")[1].split()[0]
    listed = json.loads(run(str(bin_dir / "bentoml"), "models", "list", "-o", "json"))
    assert tag in [entry["tag"] for entry in listed]


def test_cli_error_for_missing_table_has_no_traceback(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "scorebox", "train"],
        env=env | {"SCOREBOX_FEATURE_TABLE": "nowhere"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "table 'nowhere' (SCOREBOX_FEATURE_TABLE) does not exist" in done.stderr
    assert "Traceback" not in done.stderr


RARE = (
    "SELECT g, g::float, CASE WHEN g = 1 THEN 'rare' WHEN g % 2 = 0 THEN 'a' ELSE 'b' END "
    "FROM generate_series(1, 60) g"
)
RATINGS = "SELECT g, g::float, (g % 10)::float FROM generate_series(1, 60) g"
INFINITE = (
    "SELECT g, CASE WHEN g <= 3 THEN 'Infinity'::float ELSE g END, g % 2 "
    "FROM generate_series(1, 60) g"
)
INFINITE_TARGET = (
    "SELECT g, g::float, CASE WHEN g <= 2 THEN '-Infinity'::float ELSE g * 1.5 END "
    "FROM generate_series(1, 60) g"
)


@pytest.mark.parametrize(
    ("target_type", "rows", "expect"),
    [
        # a class with one row is trained on; ROC AUC is then undefined, and stored as absent
        ("text", RARE, {"task": "classification", "classes": ["a", "b", "rare"]}),
        # ratings stored as double precision are a measurement: regression, not ten classes
        ("double precision", RATINGS, {"task": "regression"}),
        # infinity in a feature: the rows are dropped and counted, not a scikit-learn traceback
        ("int", INFINITE, {"task": "classification", "infinite": 3}),
        # infinity in a float target: those rows are dropped and counted too
        ("double precision", INFINITE_TARGET, {"task": "regression", "infinite_target": 2}),
    ],
)
def test_training_copes_with_real_class_balance_and_odd_values(
    database_url: str, engine: Engine, target_type: str, rows: str, expect: dict[str, object]
) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(f"CREATE TABLE features (id int PRIMARY KEY, x float, target {target_type})")
        )
        conn.execute(text(f"INSERT INTO features {rows}"))
    info = train(load_settings(database_url=database_url), engine).info
    assert info.task == expect["task"]
    if "classes" in expect:
        assert info.classes == expect["classes"]
        assert list(info.metrics_undefined) == ["roc_auc"]
        assert "roc_auc" not in info.metrics and "accuracy" in info.metrics
    if "infinite" in expect:
        assert info.data_notes["rows_dropped_infinite_feature"] == expect["infinite"]
    if "infinite_target" in expect:
        assert info.data_notes["rows_dropped_infinite_target"] == expect["infinite_target"]
        assert info.training_rows + info.holdout_rows == 58


def test_a_target_with_one_row_per_class_is_refused_in_one_line(
    database_url: str, engine: Engine
) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE features (id int PRIMARY KEY, x float, target text)"))
        conn.execute(
            text("INSERT INTO features SELECT g, g, 'order-' || g FROM generate_series(1, 40) g")
        )
    with pytest.raises(DataError, match="no class of the target has two rows") as raised:
        train(load_settings(database_url=database_url), engine)
    assert "\n" not in str(raised.value) and "SCOREBOX_TARGET_COLUMN" in str(raised.value)
