"""How long a model version takes to load, the way a service loads it now (its signature
verified, the exported model read as data) against the way it did before (the pickled pipeline
unpickled beside the exported model), for each estimator kind, from the local store and from the
registry into an empty store.

    python bench/load.py [--runs 15]

Both ways are timed alternately in the same process on the same version, and the table gives
medians and their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bentoml
from _common import prepare
from bentoml.exceptions import NotFound
from sqlalchemy import select

from scorebox.catalog import Catalog, Version
from scorebox.compiled import ONNX_ARTIFACT, CompiledModel, Scoring
from scorebox.db import Tables, make_engine
from scorebox.modelinfo import ARTIFACT, ModelInfo, load_pipeline
from service.predict import Predictor


def _before(version: Version) -> object:
    """The earlier load: the version found in BentoML's store (its model.yaml parsed, the metadata
    read from it), both files hashed against the metadata, the pipeline unpickled and the
    compiled model built beside it."""
    stored = bentoml.models.get(version.tag)
    info = ModelInfo.from_metadata(stored.info.metadata, version.tag)
    files = {}
    for name in (ARTIFACT, ONNX_ARTIFACT):
        data = (version.path / name).read_bytes()
        hashlib.sha256(data).hexdigest()
        files[name] = data
    pipeline = load_pipeline(files[ARTIFACT])
    model = CompiledModel(files[ONNX_ARTIFACT], Scoring.from_dict(info.scoring))
    return pipeline, model


def _times(run: Callable[[], object], runs: int = 1) -> list[float]:
    """Milliseconds each of ``runs`` calls of ``run`` took."""
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        run()
        times.append((time.perf_counter() - began) * 1000)
    return times


def _import_before(data: bytes) -> None:
    """The earlier import: the archive's SHA-256, then BentoML's own import."""
    hashlib.sha256(data).hexdigest()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.bentomodel"
        path.write_bytes(data)
        bentoml.models.import_model(str(path))


def _drop(catalog: Catalog, tag: str) -> None:
    with contextlib.suppress(NotFound):
        shutil.rmtree(bentoml.models.get(tag).path)
    catalog._forget(tag)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    from training import train

    settings, _ = prepare()
    engine = make_engine(settings.database_url)
    catalog = Catalog.from_settings(settings, engine)
    models = Tables.build(settings.predictions_table).models
    print(f"{'load of a version':<34} {'before ms':>10} {'now ms':>10} {'ratio':>6}")
    for estimator in ("hist_gradient_boosting", "random_forest", "logistic_regression"):
        tag = train(settings.model_copy(update={"estimator": estimator}), engine).tag
        version = catalog.local(tag)
        before: list[float] = []
        now: list[float] = []
        for _ in range(runs):  # alternating, so both see the same machine
            before += _times(lambda version=version: _before(version))
            now += _times(lambda tag=tag: Predictor.load(catalog.local(tag)))
        b, n = statistics.median(before), statistics.median(now)
        print(f"{estimator + ', local store':<34} {b:>10.1f} {n:>10.1f} {b / n:>6.2f}x")

        # From the registry into an empty store: BentoML's import against the verified one.
        with engine.connect() as conn:
            data = bytes(
                conn.execute(select(models.c.artifact).where(models.c.tag == tag)).scalar_one()
            )
        before, now = [], []
        for _ in range(max(3, runs // 3)):
            _drop(catalog, tag)
            before += _times(lambda data=data: _import_before(data))
            _drop(catalog, tag)
            now += _times(lambda tag=tag: catalog.local(tag))
        b, n = statistics.median(before), statistics.median(now)
        print(f"{estimator + ', import':<34} {b:>10.1f} {n:>10.1f} {b / n:>6.2f}x")
    engine.dispose()


if __name__ == "__main__":
    main()
