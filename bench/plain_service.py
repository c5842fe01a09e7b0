"""The baseline for bench/online.py: a plain BentoML 1.4 service over the same model, written the
way BentoML's docs show it, with BentoML's defaults (adaptive batching on, one worker)."""

import os

import bentoml
import numpy as np
import pandas as pd


@bentoml.service
class Plain:
    model_ref = bentoml.models.BentoModel(os.environ["BENCH_MODEL_TAG"])

    def __init__(self) -> None:
        self.model = bentoml.sklearn.load_model(self.model_ref)
        # The pipeline reads a table: its first step names the columns it takes.
        self.columns = [f.name for f in self.model.steps[0][1].features_]

    @bentoml.api(batchable=True)
    def predict(self, input: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(pd.DataFrame(input, columns=self.columns))
