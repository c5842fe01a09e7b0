"""Exporting a fitted model to data, an ONNX graph of its raw scores and the named parameters
that finish them (scorebox/compiled.py), and proving it answers as scikit-learn does before it is
used. What a service loads is then data, never code (a pickle is code).

Supported: HistGradientBoosting classifiers and regressors (numeric and categorical splits, the
learned direction of missing values) and random forests (which compare inputs rounded to float32,
as scikit-learn does) as ai.onnx.ml ``TreeEnsemble`` graphs with double-precision splits; logistic
regression, ridge and linear regression with their inputs (median imputation, scaling, one-hot
categories) as a graph of plain operators. Trees are checked on the holdout rows and on edge rows
made from the trees themselves: every split threshold and its neighbouring doubles (and floats,
for forests), missing values in each feature, every category; linear models on the holdout and on
rows with missing values, unseen and extreme values in each feature. Labels must agree exactly,
tree scores to 1e-9 relative, linear scores to 1e-9 of the magnitude of their terms (a sum's
rounding depends on its order); otherwise the model is not exported, and the reason is reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge

from scorebox.compiled import CompiledModel, Scoring

TOLERANCE = 1e-9
# Past this many nodes an ONNX model costs more memory than it saves time.
MAX_NODES = 4_000_000
_LEQ, _MEMBER = 0, 6
_SUM = 1


@dataclass(frozen=True)
class Compiled:
    """What exporting gave: the ONNX bytes and scoring parameters (None when not exported) and
    why, or how it was checked."""

    onnx: bytes | None
    summary: str
    scoring: Scoring | None = None


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


def _known_categories(estimator: Any) -> list[list[int]]:
    """(column, number of categories) of each categorical column of a HistGradientBoosting
    model, whose learnt categories are the codes 0..k-1 (:func:`_check_categories`)."""
    preprocessor = getattr(estimator, "_preprocessor", None)
    if preprocessor is None:
        return []
    encoder = preprocessor.named_transformers_["encoder"]
    columns = np.flatnonzero(np.asarray(estimator.is_categorical_))
    return [
        [int(column), int(np.count_nonzero(~np.isnan(np.asarray(known, dtype=np.float64))))]
        for column, known in zip(columns, encoder.categories_, strict=True)
    ]


def tree_scoring(estimator: Any) -> Scoring:
    """The parameters that finish a tree ensemble's raw scores (ValueError if unsupported)."""
    if isinstance(estimator, RandomForestClassifier | RandomForestRegressor):
        # The graph sums the trees; scikit-learn averages them.
        return Scoring("identity", divide=len(estimator.estimators_))
    loss = type(estimator._loss).__name__
    links = {
        "HalfBinomialLoss": "logistic",
        "HalfMultinomialLoss": "softmax",
        "HalfSquaredError": "identity",
    }
    if loss not in links:
        raise ValueError(f"the {loss} loss is not supported")
    return Scoring(
        links[loss],
        baseline=[float(v) for v in np.ravel(estimator._baseline_prediction)],
        categories=_known_categories(estimator),
    )


def _linear_parts(prepare: ColumnTransformer) -> tuple[list[Any], list[Any]]:
    """(numbers, categories) of the linear models' input step (training/pipeline.py)."""
    numbers: list[Any] = []
    categories: list[Any] = []
    for name, step, columns in prepare.transformers_:
        if name == "remainder":
            if step != "drop" and len(columns):
                raise ValueError("its input step passes columns through")
            continue
        kinds = [type(s).__name__ for _, s in step.steps]
        if name == "numbers" and kinds == ["SimpleImputer", "StandardScaler"]:
            numbers.append((step.steps[0][1], step.steps[1][1], list(columns)))
        elif name == "categories" and kinds == ["SimpleImputer", "OneHotEncoder"]:
            categories.append((step.steps[0][1], step.steps[1][1], list(columns)))
        else:
            raise ValueError(f"its input step {name} ({', '.join(kinds)}) is not supported")
    return numbers, categories


def linear_scoring(estimator: Any) -> Scoring:
    if isinstance(estimator, LogisticRegression):
        if getattr(estimator, "multi_class", "auto") == "ovr" and len(estimator.classes_) > 2:
            raise ValueError("one-vs-rest logistic regression is not supported")
        return Scoring("logistic" if len(estimator.classes_) == 2 else "softmax")
    if isinstance(estimator, Ridge | LinearRegression):
        return Scoring("identity")
    raise ValueError(f"{type(estimator).__name__} is not a supported linear model")


def _linear_weights(estimator: Any) -> tuple[np.ndarray, np.ndarray]:
    """(weights as a features x targets matrix, intercepts a target)."""
    coef = np.atleast_2d(np.asarray(estimator.coef_, dtype=np.float64))
    intercept = np.atleast_1d(np.asarray(estimator.intercept_, dtype=np.float64))
    return np.ascontiguousarray(coef.T), intercept


def linear_to_onnx(prepare: ColumnTransformer, estimator: Any, n_features: int) -> bytes:
    """The ONNX graph of a linear model's decision values, with its input step: missing numbers
    set to the training median, scaled, categories one-hot (missing is code -1; an unseen code
    matches no column)."""
    from onnx import TensorProto, helper, numpy_helper

    numbers, categories = _linear_parts(prepare)
    constants: list[Any] = []
    nodes: list[Any] = []
    blocks: list[str] = []

    def constant(name: str, value: np.ndarray) -> str:
        constants.append(numpy_helper.from_array(value, name))
        return name

    for k, (imputer, scaler, columns) in enumerate(numbers):
        statistics = np.asarray(imputer.statistics_, dtype=np.float64)
        kept = ~np.isnan(statistics)  # a column empty in training is dropped by the imputer
        if imputer.strategy != "median" or getattr(imputer, "add_indicator", False):
            raise ValueError("its imputer is not the median without indicators")
        index = constant(f"num{k}_idx", np.asarray(columns, np.int64)[kept])
        fill = constant(f"num{k}_fill", statistics[kept].reshape(1, -1))
        mean = constant(f"num{k}_mean", np.asarray(scaler.mean_, np.float64).reshape(1, -1))
        scale = constant(f"num{k}_scale", np.asarray(scaler.scale_, np.float64).reshape(1, -1))
        nodes += [
            helper.make_node("Gather", ["X", index], [f"num{k}_x"], axis=1),
            helper.make_node("IsNaN", [f"num{k}_x"], [f"num{k}_nan"]),
            helper.make_node("Where", [f"num{k}_nan", fill, f"num{k}_x"], [f"num{k}_filled"]),
            helper.make_node("Sub", [f"num{k}_filled", mean], [f"num{k}_centred"]),
            helper.make_node("Div", [f"num{k}_centred", scale], [f"num{k}_z"]),
        ]
        blocks.append(f"num{k}_z")
    for k, (imputer, encoder, columns) in enumerate(categories):
        if imputer.strategy != "constant" or encoder.drop_idx_ is not None:
            raise ValueError("its category step is not a constant fill and a full one-hot")
        if getattr(encoder, "_infrequent_enabled", False):
            raise ValueError("infrequent categories are not supported")
        missing = constant(f"cat{k}_missing", np.array(float(imputer.fill_value)))
        for j, (column, known) in enumerate(zip(columns, encoder.categories_, strict=True)):
            codes = np.asarray(known, dtype=np.float64)
            if np.isnan(codes).any():
                raise ValueError("a category step learnt a missing category")
            name = f"cat{k}_{j}"
            nodes += [
                helper.make_node(
                    "Gather",
                    ["X", constant(f"{name}_idx", np.array([column], np.int64))],
                    [f"{name}_x"],
                    axis=1,
                ),
                helper.make_node("IsNaN", [f"{name}_x"], [f"{name}_nan"]),
                helper.make_node("Where", [f"{name}_nan", missing, f"{name}_x"], [f"{name}_v"]),
                helper.make_node(
                    "Equal",
                    [f"{name}_v", constant(f"{name}_codes", codes.reshape(1, -1))],
                    [f"{name}_eq"],
                ),
                helper.make_node("Cast", [f"{name}_eq"], [f"{name}_z"], to=TensorProto.DOUBLE),
            ]
            blocks.append(f"{name}_z")
    if not blocks:
        raise ValueError("its input step produces no columns")
    weights, intercept = _linear_weights(estimator)
    nodes += [
        helper.make_node("Concat", blocks, ["z"], axis=1),
        helper.make_node("MatMul", ["z", constant("weights", weights)], ["product"]),
        helper.make_node("Add", ["product", constant("intercept", intercept)], ["raw"]),
    ]
    graph = helper.make_graph(
        nodes,
        "scorebox-linear",
        [helper.make_tensor_value_info("X", TensorProto.DOUBLE, [None, n_features])],
        [helper.make_tensor_value_info("raw", TensorProto.DOUBLE, [None, weights.shape[1]])],
        initializer=constants,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21)], producer_name="scorebox"
    )
    model.ir_version = 10
    return bytes(model.SerializeToString())


def linear_edge_rows(prepare: ColumnTransformer, base: np.ndarray) -> np.ndarray:
    """Rows with, in each feature in turn: a missing value, a large value either way, and for
    categories every learnt code and codes never learnt."""
    rng = np.random.default_rng(0)
    numbers, categories = _linear_parts(prepare)
    values: list[tuple[int, float]] = []
    for _, _, columns in numbers:
        for column in columns:
            values += [(column, np.nan), (column, 1e6), (column, -1e6)]
    for _, encoder, columns in categories:
        for column, known in zip(columns, encoder.categories_, strict=True):
            codes = [float(c) for c in known]
            values += [(column, c) for c in codes]
            values += [(column, np.nan), (column, max(codes) + 1), (column, -2.0), (column, 0.5)]
    rows = [base[rng.integers(len(base))].copy() for _ in range(len(values) + 1)]
    for row, (column, value) in zip(rows, values, strict=False):
        row[column] = value
    rows[-1][:] = np.nan
    return np.array(rows, dtype=np.float64)


def _check(
    expected: np.ndarray, got: np.ndarray, classifier: bool, allowed: np.ndarray | None
) -> tuple[float, int]:
    """(largest difference, as a share of what is allowed, or relative; labels that differ)."""
    labels = int((expected.argmax(axis=1) != got.argmax(axis=1)).sum()) if classifier else 0
    if allowed is None:
        return _relative(expected, got) / TOLERANCE, labels
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.abs(expected - got) / allowed
    share = np.where(np.abs(expected - got) == 0, 0.0, share)
    return float(np.nanmax(share)) if share.size else 0.0, labels


def compile_model(estimator: Any, check: np.ndarray, prepare: Any = None) -> Compiled:
    """Export ``estimator`` (the pipeline's last step, fitted on encoded rows, after the linear
    models' input step ``prepare``) and check it on ``check`` (encoded holdout rows) and on edge
    rows; only an exact twin is kept."""
    try:
        if prepare is None:
            onnx_model, scoring = to_onnx(estimator, check.shape[1]), tree_scoring(estimator)
        else:
            onnx_model = linear_to_onnx(prepare, estimator, check.shape[1])
            scoring = linear_scoring(estimator)
    except ValueError as exc:
        return Compiled(None, f"not exported: {exc}")
    except ImportError:
        return Compiled(None, "not exported: the onnx package is not installed")
    compiled = CompiledModel(onnx_model, scoring)
    classifier = hasattr(estimator, "classes_")
    if prepare is None:
        rows = np.vstack([check, edge_rows(estimator, check)])
        if classifier:
            expected, got = estimator.predict_proba(rows), compiled.predict_proba(rows)
        else:
            expected, got = estimator.predict(rows), compiled.predict(rows)
        worst, labels_differ = _check(np.atleast_2d(expected), np.atleast_2d(got), classifier, None)
        measure = f"largest relative difference {worst * TOLERANCE:.1e}"
    else:
        rows = np.vstack([check, linear_edge_rows(prepare, check)])
        inputs = prepare.transform(rows)
        weights, intercept = _linear_weights(estimator)
        # A sum's rounding error is bounded by the size of its terms, not of the sum.
        allowed = TOLERANCE * (np.abs(inputs) @ np.abs(weights) + np.abs(intercept))
        expected = (
            estimator.decision_function(inputs) if classifier else estimator.predict(inputs)
        ).reshape(len(rows), -1)
        raw = compiled.raw(rows)
        worst, _ = _check(expected, raw, False, allowed)
        labels_differ = 0
        if classifier:
            _, labels_differ = _check(
                estimator.predict_proba(inputs), compiled.predict_proba(rows), True, None
            )
        measure = f"largest difference {worst:.2f} of the 1e-9 allowed"
    if labels_differ or not worst <= 1.0:
        return Compiled(
            None,
            f"not exported: on {len(rows)} check rows the exported model differs from "
            f"scikit-learn ({measure}, {labels_differ} labels)",
        )
    return Compiled(
        onnx_model,
        f"exported to ONNX; agrees with scikit-learn on {len(rows)} holdout and edge rows "
        f"({measure})",
        scoring,
    )
