from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer
from sqlalchemy import Engine, create_engine, text

from scorebox.errors import DataError
from scorebox.seed import seed
from scorebox.settings import Settings, load_settings


def _seed(engine: Engine, settings: Settings, rows: int | None = None) -> int:
    with engine.begin() as conn:
        return seed(
            conn,
            settings.feature_table,
            id_column=settings.id_column,
            target_column=settings.target_column,
            rows=rows,
        )


def test_seed_loads_breast_cancer_data_once(settings: Settings, engine: Engine) -> None:
    assert _seed(engine, settings) == 569
    assert _seed(engine, settings) == 0
    stored = pd.read_sql(text("SELECT * FROM features ORDER BY id"), engine)
    data = load_breast_cancer()
    assert stored["id"].tolist() == list(range(1, 570))
    assert stored.shape[1] == 1 + data.data.shape[1] + 1
    np.testing.assert_array_equal(stored["target"].to_numpy(), data.target)
    np.testing.assert_allclose(stored["mean_radius"].to_numpy(), data.data[:, 0])
    np.testing.assert_allclose(stored["worst_fractal_dimension"].to_numpy(), data.data[:, -1])


def test_synthetic_rows_are_copied_once_with_example_columns(
    settings: Settings, engine: Engine
) -> None:
    assert _seed(engine, settings, rows=2_500) == 2_500
    assert _seed(engine, settings, rows=3_000) == 500
    with engine.connect() as conn:
        count, low, high, distinct = conn.execute(
            text("SELECT count(*), min(id), max(id), count(DISTINCT id) FROM features")
        ).one()
        labels = {row[0] for row in conn.execute(text("SELECT DISTINCT target FROM features"))}
        nulls = conn.execute(text("SELECT count(*) FROM features WHERE mean_area IS NULL")).scalar()
    assert (count, low, high, distinct) == (3_000, 1, 3_000, 3_000)
    assert labels == {0, 1}
    assert nulls == 0


def test_seed_honours_configured_column_names(database_url: str, engine: Engine) -> None:
    settings = load_settings(
        database_url=database_url, feature_table="tumours", id_column="pk", target_column="benign"
    )
    assert _seed(engine, settings, rows=10) == 10
    columns = pd.read_sql(text("SELECT * FROM tumours LIMIT 1"), engine).columns
    assert columns[0] == "pk" and columns[-1] == "benign"


def test_seed_refuses_an_unrelated_existing_table(settings: Settings, engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE features (id bigint PRIMARY KEY, name text)"))
    with pytest.raises(DataError, match="already exists"):
        _seed(engine, settings)


def test_seed_works_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'scorebox.db'}"
    settings = load_settings(database_url=url)
    engine = create_engine(url)
    assert _seed(engine, settings) == 569
    assert _seed(engine, settings) == 0
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM features")).scalar() == 569
    engine.dispose()
