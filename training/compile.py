"""Compiling a fitted tree ensemble to ONNX (ai.onnx.ml ``TreeEnsemble``, double-precision
splits) and proving it answers as scikit-learn does before it is used.

Supported: HistGradientBoosting classifiers and regressors (numeric and categorical splits, the
learned direction of missing values) and random forests (which compare inputs rounded to float32,
as scikit-learn does). The compiled model is checked against the pipeline on the holdout rows and
on edge rows made from the trees themselves: every split threshold and its neighbouring doubles
(and floats, for forests), missing values in each feature, every category. Labels must agree
exactly and probabilities or values to 1e-9 relative; otherwise the model is not compiled, and
the reason is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)

from scorebox.compiled import CompiledModel

TOLERANCE = 1e-9
# Past this many nodes an ONNX model costs more memory than it saves time.
MAX_NODES = 4_000_000
_LEQ, _MEMBER = 0, 6
_SUM = 1


@dataclass(frozen=True)
class Compiled:
    """What compiling gave: the ONNX bytes (None when not compiled) and why, or how it was
    checked."""

    onnx: bytes | None
    summary: str


class _Trees:
    """Flattened nodes and leaves of every tree, in TreeEnsemble's layout."""

    def __init__(self) -> None:
        self.roots: list[int] = []
        self.features: list[int] = []
        self.modes: list[int] = []
        self.splits: list[float] = []
        self.missing_true: list[int] = []
        self.true_ids: list[int] = []
        self.true_leaf: list[int] = []
        self.false_ids: list[int] = []
        self.false_leaf: list[int] = []
        self.members: list[float] = []
        self.leaf_targets: list[int] = []
        self.leaf_weights: list[float] = []

    def leaf(self, weights: dict[int, float]) -> int:
        """Add a leaf giving ``weight`` to one target; return its index."""
        ((target, weight),) = weights.items()
        self.leaf_targets.append(target)
        self.leaf_weights.append(weight)
        return len(self.leaf_targets) - 1

    def node(self, feature: int, mode: int, split: float, missing_true: bool) -> int:
        self.features.append(feature)
        self.modes.append(mode)
        self.splits.append(split)
        self.missing_true.append(int(missing_true))
        for branch in (self.true_ids, self.true_leaf, self.false_ids, self.false_leaf):
            branch.append(0)
        return len(self.features) - 1

    def link(self, node: int, true: tuple[bool, int], false: tuple[bool, int]) -> None:
        self.true_leaf[node], self.true_ids[node] = int(true[0]), true[1]
        self.false_leaf[node], self.false_ids[node] = int(false[0]), false[1]


def _add_forest_tree(trees: _Trees, tree: Any, target: int, classes: int) -> None:
    """One scikit-learn decision tree (a forest's member) for one target: ``x <= threshold`` goes
    left. A TreeEnsemble leaf feeds one target, so a classifier's tree is added once a class."""
    left, right = tree.children_left, tree.children_right

    def build(index: int) -> tuple[bool, int]:
        if left[index] == -1:
            value = tree.value[index, 0]
            weight = value[target] / value.sum() if classes else value[0]
            return True, trees.leaf({target: float(weight)})
        node = trees.node(
            int(tree.feature[index]),
            _LEQ,
            float(tree.threshold[index]),
            bool(tree.missing_go_to_left[index]),
        )
        trees.link(node, build(left[index]), build(right[index]))
        return False, node

    root = build(0)
    trees.roots.append(root[1] if not root[0] else _always(trees, root))


def _always(trees: _Trees, leaf: tuple[bool, int]) -> int:
    """A node sending every row (NaN included) to ``leaf``: a tree that is a single leaf."""
    node = trees.node(0, _LEQ, np.inf, True)
    trees.link(node, leaf, leaf)
    return node


def _boosted_features(estimator: Any, n_features: int) -> np.ndarray:
    """Original column of each column HistGradientBoosting's predictors index (its
    preprocessor moves categorical columns first)."""
    if estimator._preprocessor is None:
        return np.arange(n_features)
    categorical = np.asarray(estimator.is_categorical_)
    return np.r_[np.flatnonzero(categorical), np.flatnonzero(~categorical)]


def _check_categories(estimator: Any) -> str | None:
    """Why the categories HistGradientBoosting learnt are not our codes 0..k-1, if they aren't."""
    if estimator._preprocessor is None:
        return None
    encoder = estimator._preprocessor.named_transformers_["encoder"]
    for categories in encoder.categories_:
        known = categories[~np.isnan(categories)]
        if not np.array_equal(known, np.arange(len(known))):
            return "its categories are not the codes 0..k-1 the encoder gives"
    return None


def _bitset_members(bitset: np.ndarray) -> list[float]:
    return [float(i) for i in range(256) if bitset[i // 32] >> (i % 32) & 1]


def _add_boosted_tree(trees: _Trees, predictor: Any, target: int, columns: np.ndarray) -> None:
    nodes = predictor.nodes
    bitsets = predictor.raw_left_cat_bitsets

    def build(index: int) -> tuple[bool, int]:
        row = nodes[index]
        if row["is_leaf"]:
            return True, trees.leaf({target: float(row["value"])})
        feature = int(columns[row["feature_idx"]])
        if row["is_categorical"]:
            members = _bitset_members(bitsets[row["bitset_idx"]]) or [-1.0]
            node = trees.node(feature, _MEMBER, 0.0, bool(row["missing_go_to_left"]))
            trees.members.extend([*members, np.nan])
        else:
            node = trees.node(
                feature, _LEQ, float(row["num_threshold"]), bool(row["missing_go_to_left"])
            )
        trees.link(node, build(int(row["left"])), build(int(row["right"])))
        return False, node

    root = build(0)
    trees.roots.append(root[1] if not root[0] else _always(trees, root))


def _graph(trees: _Trees, n_features: int, targets: int, aggregate: int, forest: bool) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    attributes: dict[str, Any] = {
        "tree_roots": trees.roots,
        "nodes_featureids": trees.features,
        "nodes_modes": numpy_helper.from_array(np.array(trees.modes, np.uint8)),
        "nodes_splits": numpy_helper.from_array(np.array(trees.splits, np.float64)),
        "nodes_missing_value_tracks_true": trees.missing_true,
        "nodes_truenodeids": trees.true_ids,
        "nodes_trueleafs": trees.true_leaf,
        "nodes_falsenodeids": trees.false_ids,
        "nodes_falseleafs": trees.false_leaf,
        "leaf_targetids": trees.leaf_targets,
        "leaf_weights": numpy_helper.from_array(np.array(trees.leaf_weights, np.float64)),
        "n_targets": targets,
        "aggregate_function": aggregate,
        "post_transform": 0,
    }
    if trees.members:
        attributes["membership_values"] = numpy_helper.from_array(
            np.array(trees.members, np.float64)
        )
    nodes = []
    source = "X"
    if forest:  # scikit-learn's trees compare float32 inputs with double thresholds
        nodes += [
            helper.make_node("Cast", ["X"], ["x32"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["x32"], ["x64"], to=TensorProto.DOUBLE),
        ]
        source = "x64"
    nodes.append(
        helper.make_node("TreeEnsemble", [source], ["raw"], domain="ai.onnx.ml", **attributes)
    )
    graph = helper.make_graph(
        nodes,
        "scorebox",
        [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, n_features])],
        [helper.make_tensor_value_info("raw", TensorProto.DOUBLE, [None, targets])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("ai.onnx.ml", 5)],
        producer_name="scorebox",
    )
    model.ir_version = 10
    return bytes(model.SerializeToString())


def to_onnx(estimator: Any, n_features: int) -> bytes:
    """The ONNX graph of a fitted tree ensemble's raw scores (raises ValueError if unsupported)."""
    trees = _Trees()
    if isinstance(estimator, HistGradientBoostingClassifier | HistGradientBoostingRegressor):
        problem = _check_categories(estimator)
        if problem:
            raise ValueError(problem)
        columns = _boosted_features(estimator, n_features)
        for iteration in estimator._predictors:
            for target, predictor in enumerate(iteration):
                _add_boosted_tree(trees, predictor, target, columns)
        targets = estimator.n_trees_per_iteration_
        return _graph(trees, n_features, targets, _SUM, forest=False)
    if isinstance(estimator, RandomForestClassifier | RandomForestRegressor):
        if estimator.n_outputs_ != 1:
            raise ValueError("forests with several outputs are not supported")
        classes = len(estimator.classes_) if hasattr(estimator, "classes_") else 0
        nodes = sum(m.tree_.node_count for m in estimator.estimators_) * max(classes, 1)
        if nodes > MAX_NODES:
            raise ValueError(f"{nodes:,} nodes is more than the {MAX_NODES:,} worth compiling")
        for member in estimator.estimators_:
            for target in range(max(classes, 1)):
                _add_forest_tree(trees, member.tree_, target, classes)
        # Summed here and averaged by CompiledModel, as scikit-learn averages its trees.
        return _graph(trees, n_features, max(classes, 1), _SUM, forest=True)
    raise ValueError(f"{type(estimator).__name__} is not a tree ensemble")


def edge_rows(estimator: Any, base: np.ndarray, limit: int = 3000) -> np.ndarray:
    """Rows built to sit on the trees' decisions: each split threshold and the doubles (and, for
    forests, floats) next to it; a missing value in each feature; every category code."""
    rng = np.random.default_rng(0)
    n_features = base.shape[1]
    values: list[tuple[int, float]] = []
    if hasattr(estimator, "_predictors"):
        columns = _boosted_features(estimator, n_features)
        for iteration in estimator._predictors:
            for predictor in iteration:
                for row in predictor.nodes:
                    if row["is_leaf"]:
                        continue
                    feature = int(columns[row["feature_idx"]])
                    if row["is_categorical"]:  # the codes the encoder can give
                        known = np.unique(base[:, feature][~np.isnan(base[:, feature])])
                        values += [(feature, float(code)) for code in known]
                        # Codes never learnt go where missing values go, as in scikit-learn.
                        values += [(feature, -1.0), (feature, float(len(known)))]
                    else:
                        threshold = float(row["num_threshold"])
                        values += [
                            (feature, threshold),
                            (feature, float(np.nextafter(threshold, np.inf))),
                            (feature, float(np.nextafter(threshold, -np.inf))),
                        ]
    else:
        for member in estimator.estimators_:
            tree = member.tree_
            for feature, threshold in zip(tree.feature, tree.threshold, strict=True):
                if feature < 0 or not abs(threshold) < np.finfo(np.float32).max:
                    continue
                single = np.float32(threshold)
                for value in (
                    threshold,
                    np.nextafter(threshold, np.inf),
                    float(single),
                    float(np.nextafter(single, np.float32(np.inf))),
                    float(np.nextafter(single, np.float32(-np.inf))),
                ):
                    values.append((int(feature), float(value)))
    values = [(f, v) for f, v in values if np.isfinite(v)]
    if len(values) > limit:
        picked = rng.choice(len(values), limit, replace=False)
        values = [values[i] for i in picked]
    rows = [base[rng.integers(len(base))].copy() for _ in range(len(values) + n_features + 1)]
    for row, (feature, value) in zip(rows, values, strict=False):
        row[feature] = value
    for feature in range(n_features):
        rows[len(values) + feature][feature] = np.nan
    rows[-1][:] = np.nan
    return np.array(rows, dtype=np.float64)


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    scale = np.maximum(np.abs(a), np.abs(b))
    with np.errstate(invalid="ignore", divide="ignore"):
        diff = np.where(scale > 0, np.abs(a - b) / scale, 0.0)
    return float(np.nanmax(diff)) if diff.size else 0.0


def compile_model(estimator: Any, check: np.ndarray) -> Compiled:
    """Compile ``estimator`` (the pipeline's last step, fitted on encoded rows) and check it on
    ``check`` (encoded holdout rows) and on edge rows; only an exact twin is kept."""
    try:
        onnx_model = to_onnx(estimator, check.shape[1])
    except ValueError as exc:
        return Compiled(None, f"not compiled: {exc}")
    except ImportError:
        return Compiled(None, "not compiled: the onnx package is not installed")
    rows = np.vstack([check, edge_rows(estimator, check)])
    compiled = CompiledModel(onnx_model, estimator)
    if hasattr(estimator, "classes_"):
        expected, got = estimator.predict_proba(rows), compiled.predict_proba(rows)
        labels_differ = int((expected.argmax(axis=1) != got.argmax(axis=1)).sum())
    else:
        expected, got = estimator.predict(rows), compiled.predict(rows)
        labels_differ = 0
    worst = _relative(np.asarray(expected), np.asarray(got))
    if labels_differ or not worst <= TOLERANCE:
        return Compiled(
            None,
            f"not compiled: on {len(rows)} check rows the compiled model differs from "
            f"scikit-learn (largest relative difference {worst:.1e}, {labels_differ} labels)",
        )
    return Compiled(
        onnx_model,
        f"compiled to ONNX; agrees with scikit-learn on {len(rows)} holdout and edge rows "
        f"(largest relative difference {worst:.1e})",
    )
