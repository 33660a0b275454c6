"""Every model the lab can train, as plain data: adding a model is adding one :class:`ModelSpec`.

A spec names the model, builds a fresh estimator from parameters (``factory``), lists its
default hyperparameters, the widgets the page shows for the main ones, and the search space
for the optional randomized search (candidate values per parameter, sampled uniformly). Every spec goes through the same lab code.

Two baselines are always shown, because a model is only worth something if it beats them:

- **Persistence** predicts the last known value. For a close target that is the last known
  close; for ``next_return`` it is a return of **0** (the price stays where it is) rather than
  the last return: 0 is the random-walk forecast, the same "no change" forecast as persistence
  on closes, while repeating the last return is itself a momentum model. Skill vs persistence
  is therefore "how much better than assuming no change".
- **Moving average** predicts the mean of the last ``window`` known closes (for
  ``next_return``: the return that would take the price to that mean).

Baselines are estimators too (``fit`` learns nothing), reading the feature columns they need
(:func:`features_for`), so one may be saved as a model version like any other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin

from models.targets import get_target

MAX_JOBS = 2  # the lab shares small machines: never more than 2 threads per model


@dataclass(frozen=True)
class ParamWidget:
    """How the page shows one hyperparameter: ``kind`` is int, float, choice or bool."""

    name: str
    label: str
    kind: str
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: tuple = ()
    help: str = ""


@dataclass(frozen=True)
class ModelSpec:
    """One model of the zoo: how to build its estimator, its defaults, the lab's widgets and
    search space. Immutable; registered once in :data:`MODEL_SPECS` by ``register``."""

    key: str
    name: str
    kind: str  # "baseline" or "model"
    factory: Callable[[dict[str, Any], int, int], Any]  # (params, seed, n_jobs) -> estimator
    defaults: dict[str, Any]
    widgets: tuple[ParamWidget, ...] = ()
    search_space: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    extrapolates: bool = True  # False for trees: predictions stay within training targets

    def build(self, params: dict[str, Any] | None = None, seed: int = 0, n_jobs: int = 1):
        merged = {**self.defaults, **(params or {})}
        return self.factory(merged, seed, max(1, min(int(n_jobs), MAX_JOBS)))

    def label(self, params: dict[str, Any] | None = None) -> str:
        if self.key == "moving_average":
            return f"{self.name} ({int({**self.defaults, **(params or {})}['window'])})"
        return self.name


# ---------------------------------------------------------------------------------------------
# Baseline estimators

class PersistenceRegressor(RegressorMixin, BaseEstimator):
    """Predicts the last known value (see module docstring); learns nothing."""

    def __init__(self, target: str = "next_close"):
        self.target = target

    def fit(self, X, y=None):
        get_target(self.target)
        self.n_features_in_ = np.shape(X)[1]
        return self

    def predict(self, X):
        X = _frame(X)
        if get_target(self.target).is_return:
            return np.zeros(len(X))
        column = "close_lag_1" if not get_target(self.target).is_forecast else "close"
        return X[column].to_numpy(dtype="float64")


class MovingAverageRegressor(RegressorMixin, BaseEstimator):
    """Predicts the mean of the last ``window`` known closes; learns nothing."""

    def __init__(self, target: str = "next_close", window: int = 5):
        self.target = target
        self.window = window

    def fit(self, X, y=None):
        get_target(self.target)
        if int(self.window) < 1:
            raise ValueError("the moving-average window must be at least 1 bar")
        self.n_features_in_ = np.shape(X)[1]
        return self

    def predict(self, X):
        X = _frame(X)
        spec = get_target(self.target)
        if not spec.is_forecast:  # same-bar setup: the closes before this bar
            cols = [f"close_lag_{k}" for k in range(1, int(self.window) + 1)]
            return X[cols].to_numpy(dtype="float64").mean(axis=1)
        mean = X[f"sma_{int(self.window)}"].to_numpy(dtype="float64")
        if spec.is_return:
            return mean / X["close"].to_numpy(dtype="float64") - 1.0
        return mean


def _frame(X) -> pd.DataFrame:
    if not isinstance(X, pd.DataFrame):
        raise TypeError("baseline models need a feature DataFrame with named columns")
    return X


def features_for(spec: ModelSpec, target: str, features: list[str],
                 params: dict[str, Any] | None = None) -> list[str]:
    """Feature columns a model reads: the chosen ones for models, fixed ones for baselines."""
    if spec.kind != "baseline":
        return list(features)
    t = get_target(target)
    window = int({**spec.defaults, **(params or {})}.get("window", 1))
    if spec.key == "persistence":
        if t.is_return:
            return ["close"]  # predicts 0; the column only keeps the frame non-empty
        return ["close"] if t.is_forecast else ["close_lag_1"]
    if spec.key == "moving_average":
        if not t.is_forecast:
            return [f"close_lag_{k}" for k in range(1, window + 1)]
        return [f"sma_{window}", "close"] if t.is_return else [f"sma_{window}"]
    raise ValueError(f"baseline {spec.key!r} has no feature rule")


# ---------------------------------------------------------------------------------------------
# Factories

def _linear(p, seed, n_jobs):
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()),
                     ("model", LinearRegression(fit_intercept=bool(p["fit_intercept"])))])


def _random_forest(p, seed, n_jobs):
    return _sized_forest_class()(
        rows_per_tree=int(p.get("rows_per_tree") or 0), n_estimators=int(p["n_estimators"]),
        max_depth=_none_if_zero(p["max_depth"]), min_samples_leaf=int(p["min_samples_leaf"]),
        max_features=float(p["max_features"]), random_state=seed, n_jobs=n_jobs)


_SIZED_FOREST = None


def _sized_forest_class():
    """sklearn is imported on first use only; the class is built once, at module level
    (as ``models.zoo.SizedRandomForest``) so fitted forests pickle."""
    global _SIZED_FOREST
    if _SIZED_FOREST is None:
        from sklearn.ensemble import RandomForestRegressor

        class SizedRandomForest(RandomForestRegressor):
            """A random forest whose trees each learn from a bootstrap sample of at most
            ``rows_per_tree`` rows (0: all rows; fewer rows than that: all rows). On 200k
            bars a tree then costs what it costs on 20k, and the average of many such trees
            loses little: the default comparison stays interactive on large data."""

            def __init__(self, rows_per_tree=0, n_estimators=100, *, max_depth=None,
                         min_samples_leaf=1, max_features=1.0, max_samples=None,
                         warm_start=False, random_state=None, n_jobs=None):
                super().__init__(n_estimators=n_estimators, max_depth=max_depth,
                                 min_samples_leaf=min_samples_leaf, max_features=max_features,
                                 max_samples=max_samples, warm_start=warm_start,
                                 random_state=random_state, n_jobs=n_jobs)
                self.rows_per_tree = rows_per_tree

            def fit(self, X, y, sample_weight=None):
                chosen = self.max_samples
                if self.rows_per_tree and chosen is None and len(X) > self.rows_per_tree:
                    self.max_samples = int(self.rows_per_tree)
                try:
                    return super().fit(X, y, sample_weight)
                finally:
                    self.max_samples = chosen  # a parameter: fit must not change it

        SizedRandomForest.__module__ = __name__
        SizedRandomForest.__qualname__ = "SizedRandomForest"
        globals()["SizedRandomForest"] = SizedRandomForest
        _SIZED_FOREST = SizedRandomForest
    return _SIZED_FOREST


def __getattr__(name):  # unpickling a forest before any was built in this process
    if name == "SizedRandomForest":
        return _sized_forest_class()
    raise AttributeError(name)


def _hist_gradient_boosting(p, seed, n_jobs):
    from models.boosting import TailStoppedGradientBoosting

    # Rounds chosen on the training window's time-ordered tail (models/boosting.py): sklearn's
    # own early stopping would validate on a random (leaky) split.
    return TailStoppedGradientBoosting(
        max_iter=int(p["max_iter"]), learning_rate=float(p["learning_rate"]),
        max_leaf_nodes=int(p["max_leaf_nodes"]), max_depth=_none_if_zero(p.get("max_depth", 0)),
        min_samples_leaf=int(p["min_samples_leaf"]),
        l2_regularization=float(p["l2_regularization"]),
        tail_fraction=float(p.get("tail_fraction", 0.2)), patience=int(p.get("patience", 20)),
        random_state=seed)


def cuda_available() -> bool:
    """An XGBoost built with CUDA and an NVIDIA GPU on this machine."""
    try:
        import xgboost

        if not xgboost.build_info().get("USE_CUDA"):
            return False
    except Exception:
        return False
    from pathlib import Path

    return any(Path("/dev").glob("nvidia[0-9]*"))


def xgboost_device(choice: str) -> str:
    """``auto``: the GPU when there is one, else the CPU; ``cuda`` without one is an error."""
    if choice == "cuda" and not cuda_available():
        raise ValueError("no CUDA GPU is available here: set XGBoost's Device to auto or cpu")
    if choice == "auto":
        return "cuda" if cuda_available() else "cpu"
    return choice


def _xgboost(p, seed, n_jobs):
    from models.boosting import TailStoppedXGBRegressor

    return TailStoppedXGBRegressor(
        tail_fraction=float(p.get("tail_fraction", 0.2)), patience=int(p.get("patience", 30)),
        device=xgboost_device(str(p.get("device") or "auto")),
        n_estimators=int(p["n_estimators"]), learning_rate=float(p["learning_rate"]),
        max_depth=int(p["max_depth"]), subsample=float(p["subsample"]),
        colsample_bytree=float(p["colsample_bytree"]), min_child_weight=float(p["min_child_weight"]),
        reg_lambda=float(p["reg_lambda"]), tree_method="hist", n_jobs=n_jobs, random_state=seed,
        verbosity=0)


def _none_if_zero(v):
    return None if v in (None, 0, "0", "None") else int(v)


MODEL_SPECS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    MODEL_SPECS[spec.key] = spec
    return spec


register(ModelSpec(
    "persistence", "Persistence", "baseline",
    lambda p, seed, n_jobs: PersistenceRegressor(target=p["target"]),
    defaults={"target": "next_close"},
    description="Predicts the last known value: the last close, or a return of 0."))

register(ModelSpec(
    "moving_average", "Moving average", "baseline",
    lambda p, seed, n_jobs: MovingAverageRegressor(target=p["target"], window=int(p["window"])),
    defaults={"target": "next_close", "window": 5},
    widgets=(ParamWidget("window", "Window (bars)", "int", 2, 200, 1,
                         help="Number of last closes averaged."),),
    description="Predicts the mean of the last k known closes."))

register(ModelSpec(
    "linear", "Linear regression", "model", _linear,
    defaults={"fit_intercept": True},
    widgets=(ParamWidget("fit_intercept", "Fit intercept", "bool"),),
    description="Ordinary least squares on standardised features."))

register(ModelSpec(
    "random_forest", "Random forest", "model", _random_forest,
    defaults={"n_estimators": 50, "max_depth": 10, "min_samples_leaf": 20, "max_features": 0.5,
              "rows_per_tree": 15_000},
    widgets=(
        ParamWidget("n_estimators", "Trees", "int", 10, 500, 10),
        ParamWidget("rows_per_tree", "Rows per tree (0 = all)", "int", 0, 1_000_000, 5_000),
        ParamWidget("max_depth", "Max depth (0 = unlimited)", "int", 0, 40, 1),
        ParamWidget("min_samples_leaf", "Min samples per leaf", "int", 1, 500, 1),
        ParamWidget("max_features", "Share of features per split", "float", 0.1, 1.0, 0.1),
    ),
    search_space={"n_estimators": [50, 100, 200, 300], "max_depth": [4, 6, 8, 10, 14, 20],
                  "min_samples_leaf": [5, 10, 20, 50, 100, 200],
                  "max_features": [0.2, 0.35, 0.5, 0.75, 1.0]},
    description="Averaged deep trees on bootstrap samples.", extrapolates=False))

register(ModelSpec(
    "hist_gradient_boosting", "Gradient boosting", "model", _hist_gradient_boosting,
    # Suited to noisy returns: shallow trees, a small learning rate, and the number of rounds
    # chosen on the latest 20 % of the training window (models/boosting.py).
    defaults={"max_iter": 300, "learning_rate": 0.03, "max_depth": 3, "max_leaf_nodes": 8,
              "min_samples_leaf": 50, "l2_regularization": 1.0, "tail_fraction": 0.2,
              "patience": 20},
    widgets=(
        ParamWidget("max_iter", "Boosting rounds", "int", 10, 1000, 10),
        ParamWidget("learning_rate", "Learning rate", "float", 0.005, 1.0, 0.005),
        ParamWidget("max_depth", "Max depth (0 = unlimited)", "int", 0, 20, 1),
        ParamWidget("max_leaf_nodes", "Leaves per tree", "int", 2, 255, 1),
        ParamWidget("min_samples_leaf", "Min samples per leaf", "int", 1, 500, 1),
    ),
    search_space={"max_iter": [50, 100, 200, 400], "learning_rate": [0.01, 0.02, 0.05, 0.1, 0.2],
                  "max_leaf_nodes": [7, 15, 31, 63], "min_samples_leaf": [10, 20, 50, 100, 200],
                  "l2_regularization": [0.0, 0.01, 0.1, 1.0, 10.0]},
    description="scikit-learn's histogram gradient boosting; rounds chosen on the latest 20% "
                "of the training window, then refitted on all of it.", extrapolates=False))

register(ModelSpec(
    "xgboost", "XGBoost", "model", _xgboost,
    defaults={"n_estimators": 300, "learning_rate": 0.03, "max_depth": 3, "subsample": 0.8,
              "colsample_bytree": 0.8, "min_child_weight": 20.0, "reg_lambda": 5.0,
              "device": "auto", "tail_fraction": 0.2, "patience": 30},
    widgets=(
        ParamWidget("n_estimators", "Boosting rounds", "int", 10, 2000, 10),
        ParamWidget("device", "Device", "choice", options=("auto", "cpu", "cuda"),
                    help="auto trains on the GPU when one is present (CUDA build of XGBoost), "
                         "else on the CPU; the results say which one trained."),
        ParamWidget("learning_rate", "Learning rate", "float", 0.005, 1.0, 0.005),
        ParamWidget("max_depth", "Max depth", "int", 1, 15, 1),
        ParamWidget("subsample", "Row subsample", "float", 0.1, 1.0, 0.05),
    ),
    search_space={"n_estimators": [100, 200, 300, 500], "learning_rate": [0.01, 0.02, 0.05, 0.1, 0.2],
                  "max_depth": [2, 3, 4, 5, 6, 8], "subsample": [0.5, 0.7, 0.8, 1.0],
                  "colsample_bytree": [0.5, 0.7, 0.8, 1.0], "min_child_weight": [1, 3, 10, 30],
                  "reg_lambda": [0.1, 1.0, 3.0, 10.0]},
    description="XGBoost gradient-boosted trees (hist method); rounds chosen on the latest "
                "20% of the training window, then refitted on all of it.", extrapolates=False))

BASELINE_KEYS = [k for k, s in MODEL_SPECS.items() if s.kind == "baseline"]
MODEL_KEYS = [k for k, s in MODEL_SPECS.items() if s.kind == "model"]


def get_spec(key: str) -> ModelSpec:
    try:
        return MODEL_SPECS[key]
    except KeyError:
        raise ValueError(f"unknown model {key!r}; use one of {', '.join(MODEL_SPECS)}") from None


def coerce_params(spec: ModelSpec, params: dict[str, Any]) -> dict[str, Any]:
    """Parameters from text (CLI) or widgets, cast to the type of the default; unknown names
    raise ``ValueError``."""
    out = {}
    for name, value in params.items():
        if name not in spec.defaults:
            raise ValueError(f"model {spec.key!r} has no parameter {name!r}; it has "
                             f"{', '.join(k for k in spec.defaults if k != 'target') or 'none'}")
        default = spec.defaults[name]
        if isinstance(value, str):
            if isinstance(default, bool):
                value = value.strip().lower() in ("1", "true", "yes", "on")
            elif isinstance(default, int):
                value = int(value)
            elif isinstance(default, float):
                value = float(value)
        out[name] = value
    return out
