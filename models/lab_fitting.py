"""Fitting one lab model: the zoo entry, progress and cancel inside a fit (forests and boosting in
chunks), hyper-parameter search, permutation importance and the score tables."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from models import metrics as M
from models import significance as S
from models.features import expand_features
from models.splits import Split, walk_forward_splits
from models.targets import (SAME_BAR_FEATURES, get_target, to_close)
from models.zoo import BASELINE_KEYS, ModelSpec, features_for, get_spec

from models.lab_types import FittedModel, LabConfig, LabError

# ---------------------------------------------------------------------------------------------

@dataclass
class _Entry:
    spec: ModelSpec
    params: dict[str, Any]
    label: str
    features: list[str]


def _entries(config: LabConfig) -> list[_Entry]:
    chosen = [(k, dict(p or {})) for k, p in config.models]
    keys = [k for k, _ in chosen]
    for key in reversed(BASELINE_KEYS):  # baselines are always shown, first
        if key not in keys:
            chosen.insert(0, (key, {}))
    chosen.sort(key=lambda kp: 0 if get_spec(kp[0]).kind == "baseline" else 1)
    if not any(get_spec(k).kind == "model" for k, _ in chosen):
        raise LabError("Choose at least one model to compare with the baselines.")
    features = SAME_BAR_FEATURES if not get_target(config.target).is_forecast \
        else expand_features(config.features)
    out, seen = [], {}
    for key, params in chosen:
        spec = get_spec(key)
        if spec.kind == "baseline":
            params = {**params, "target": config.target}
        label = spec.label(params)
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label} #{seen[label]}"
        out.append(_Entry(spec, params, label, features_for(spec, config.target, features, params)))
    return out


def _fit_predict(entry: _Entry, X: pd.DataFrame, y: np.ndarray, ts: np.ndarray, s: Split,
                 config: LabConfig, gap: int, n_jobs: int, tick=None):
    from threadpoolctl import threadpool_limits

    X_train, y_train = X.iloc[s.train][entry.features], y[s.train]
    X_test = X.iloc[s.test][entry.features]
    est = entry.spec.build(entry.params, config.seed, n_jobs)
    params = None
    with threadpool_limits(limits=n_jobs):
        t0 = time.perf_counter()
        if config.search and entry.spec.search_space and entry.spec.kind == "model":
            est, params = _search(est, entry.spec, X_train, y_train, ts[s.train], config, gap)
        else:
            fit_in_chunks(est, X_train, y_train, tick)
        t1 = time.perf_counter()
        pred = np.asarray(est.predict(X_test), dtype="float64").ravel()
        t2 = time.perf_counter()
    return est, params, t1 - t0, t2 - t1, pred


def _device_of(est) -> str | None:
    model = est.steps[-1][1] if hasattr(est, "steps") else est
    if not type(model).__name__.endswith("XGBRegressor"):
        return None
    return str(model.get_params().get("device") or "cpu")


def fit_in_chunks(est, X, y, tick=None) -> None:
    """``est.fit(X, y)``, with ``tick(done, total, unit)`` called between chunks of trees or
    boosting rounds, so progress is real and a cancel (``tick`` raising) stops the training
    within one chunk. Forests grow by ``warm_start`` (the same model as one fit); XGBoost
    reports from a training callback; other models report once, after their fit."""
    if tick is None:
        est.fit(X, y)
        return
    model = est.steps[-1][1] if hasattr(est, "steps") else est
    name = type(model).__name__
    # Histogram boosting is left whole: each warm_start call re-predicts every training row
    # with all trees so far (much slower: docs/DESIGN_FIGURES.md); it fits in seconds anyway.
    size_param = "n_estimators" if "Forest" in name else None
    if size_param and hasattr(model, "warm_start"):
        total = int(getattr(model, size_param))
        chunk = max(1, total // 10)
        model.set_params(warm_start=True)
        try:
            for done in range(chunk, total + chunk, chunk):
                model.set_params(**{size_param: min(done, total)})
                est.fit(X, y)
                tick(min(done, total), total, "trees" if size_param == "n_estimators"
                     else "rounds")
        finally:
            model.set_params(warm_start=False, **{size_param: total})
        return
    if name.endswith("XGBRegressor"):
        from xgboost.callback import TrainingCallback

        total = int(model.get_params()["n_estimators"] or 100)
        every = max(1, total // 10)

        class Progress(TrainingCallback):
            """XGBoost callback: reports boosting rounds to the lab's progress."""

            def after_iteration(self, booster, epoch, evals_log) -> bool:
                if (epoch + 1) % every == 0:
                    tick(epoch + 1, total, "rounds")
                return False

        model.set_params(callbacks=[Progress()])
        try:
            est.fit(X, y)
        finally:
            model.set_params(callbacks=None)  # the fitted model must pickle without it
        return
    est.fit(X, y)
    tick(1, 1, "fit")


def _search(est, spec: ModelSpec, X_train, y_train, ts_train, config: LabConfig, gap: int):
    """RandomizedSearchCV over walk-forward folds inside the training range (TimeSeriesSplit
    over timestamps, so several symbols never straddle a fold boundary)."""
    from sklearn.model_selection import RandomizedSearchCV

    inner = [(s.train, s.test) for s in walk_forward_splits(ts_train, n_folds=3, gap=gap)]
    search = RandomizedSearchCV(est, spec.search_space, n_iter=max(1, int(config.search_budget)),
                                scoring="neg_mean_squared_error", cv=inner,
                                random_state=config.seed, n_jobs=1, refit=True)
    search.fit(X_train, y_train)
    best = {k: (v.item() if hasattr(v, "item") else v) for k, v in search.best_params_.items()}
    return search.best_estimator_, best


def _importance(fm: FittedModel, X: pd.DataFrame, y: np.ndarray, s: Split, config: LabConfig,
                n_jobs: int) -> pd.DataFrame:
    """Permutation importance on a bounded random sample of the last fold's test rows."""
    from sklearn.inspection import permutation_importance
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(config.seed)
    rows = s.test
    if len(rows) > config.importance_rows:
        rows = np.sort(rng.choice(rows, size=int(config.importance_rows), replace=False))
    with threadpool_limits(limits=n_jobs):
        r = permutation_importance(fm.estimator, X.iloc[rows][fm.features], y[rows],
                                   scoring="neg_mean_squared_error",
                                   n_repeats=int(config.importance_repeats),
                                   random_state=config.seed, n_jobs=1)
    return pd.DataFrame({"model": fm.label, "feature": fm.features,
                         "importance": r.importances_mean, "std": r.importances_std})


def _score_table(rows: list[dict], predictions: pd.DataFrame, target: str, horizon: int = 1,
                 seed: int = 0) -> pd.DataFrame:
    actual = predictions["actual"].to_numpy()
    base = predictions["base_close"].to_numpy()
    actual_close = predictions["actual_close"].to_numpy()
    persistence = next((r["model"] for r in rows if r["key"] == "persistence"), None)
    mse_p = (M.mse(actual, predictions[persistence].to_numpy())
             if persistence in predictions else None)
    out = []
    for r in rows:
        row = {"model": r["model"], "key": r["key"], "kind": r["kind"]}
        if r["model"] in predictions:
            pred = predictions[r["model"]].to_numpy()
            row.update(M.score(actual, pred, actual_close, to_close(target, pred, base), base,
                               mse_p))
        else:
            row.update({k: np.nan for k in M.METRIC_COLUMNS})
        row["fit_time_s"] = r["fit_time_s"]
        row["predict_time_s"] = r["predict_time_s"]
        row["n_test"] = int(len(predictions))
        row["error"] = r["error"]
        out.append(row)
    sig = _significance(rows, predictions, persistence, horizon, seed)
    for row in out:
        row.update(sig["rows"].get(row["model"], {}))
    cols = ["model", "key", "kind", *M.METRIC_COLUMNS, *S.SIGNIFICANCE_COLUMNS, "n_test", "error"]
    table = pd.DataFrame(out, columns=cols).set_index("model")
    table.attrs["comparisons"] = sig["comparisons"]
    table.attrs["level"] = sig["level"]
    return table


def _significance(rows: list[dict], predictions: pd.DataFrame, persistence: str | None,
                  horizon: int, seed: int) -> dict:
    """DM test and skill interval of every scored entry against persistence on these rows
    (one loss differential per bar time), Holm-corrected over the comparisons."""
    labels = [r["model"] for r in rows if r["model"] in predictions]
    if persistence not in predictions or len(predictions) < 3:
        return {"rows": {}, "comparisons": 0, "level": S.LEVEL}
    preds = {lb: predictions[lb].to_numpy() for lb in labels}
    return S.significance_columns(predictions["actual"].to_numpy(), preds, persistence,
                                  groups=predictions["ts"].to_numpy(), horizon=horizon,
                                  seed=seed)


def _drop_constant(feats: pd.DataFrame, features: list[str], rows_ok: np.ndarray,
                   entries: list[_Entry]) -> tuple[list[str], list[str]]:
    """Features with one value on every usable row (minute of day on daily bars) are left out
    of the models' inputs; baselines keep theirs."""
    constant = [f for f in features
                if feats.loc[rows_ok, f].dropna().nunique() <= 1]
    if constant:
        for e in entries:
            if e.spec.kind == "model":
                e.features = [f for f in e.features if f not in constant]
    return [f for f in features if f not in constant], constant


def _fold_table(fold_rows: list[dict], predictions: pd.DataFrame | None = None,
                horizon: int = 1, seed: int = 0) -> pd.DataFrame:
    """Per fold: test rows, MSE, skill, and the same significance columns as the table
    (Holm over the comparisons within the fold)."""
    df = pd.DataFrame(fold_rows, columns=["model", "key", "fold", "n_test", "mse"])
    persistence = df[df["key"] == "persistence"].set_index("fold")["mse"]
    df["skill"] = [M.skill(m, persistence.get(f, np.nan)) for m, f in zip(df["mse"], df["fold"])]
    for c in S.SIGNIFICANCE_COLUMNS:
        df[c] = np.nan if c != "reading" else None
    pers = df.loc[df["key"] == "persistence", "model"]
    if predictions is not None and len(pers) and len(df):
        rows = [{"model": m} for m in dict.fromkeys(df["model"])]
        for fold, part in predictions.groupby("fold", sort=True):
            sig = _significance(rows, part, pers.iloc[0], horizon, seed)
            for label, vals in sig["rows"].items():
                at = (df["model"] == label) & (df["fold"] == fold)
                for c in S.SIGNIFICANCE_COLUMNS:
                    df.loc[at, c] = vals.get(c)
    return df.drop(columns=["key"])
