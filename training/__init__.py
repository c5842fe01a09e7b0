"""Training: read the feature table, fit and evaluate a pipeline, register it with BentoML."""

from training.train import TrainResult, train

__all__ = ["TrainResult", "train"]
