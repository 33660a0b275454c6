"""Compare models on stored (or simulated) bars, honestly, and keep the runs.

:func:`run_comparison` loads bars, computes features (:mod:`models.features`) and the target
(:mod:`models.targets`), splits by time (:mod:`models.splits`), fits every chosen model from
:mod:`models.zoo` plus the two baselines on each fold, and scores the out-of-sample predictions
(:mod:`models.metrics`). It returns a :class:`LabResult`: the results table, the test-range
predictions, permutation importances, best parameters when searching, the fitted models (so
the best can become a model version) and plain-words guidance where the numbers mislead.

Every model is scored on exactly the same test rows: rows where any chosen feature, any
baseline input or the target is unknown are dropped first.

Runs are kept in the store with :func:`save_run` (config, table, guidance, summary; not the
big arrays), listed with :func:`list_runs`, compared with :func:`compare_runs`, deleted with
:func:`delete_run` and exported with :func:`table_to_csv`.
"""
from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from models import metrics as M
from models.features import DEFAULT_FEATURES, compute_features, expand_features
from models.sentiment import is_sentiment_feature, load_news
from models.registry import GLOBAL_SCOPE, champion_refusal, promote, save_model_version
from models.splits import Split, make_splits, split_warnings, walk_forward_splits
from models.targets import (SAME_BAR_FEATURES, effective_horizon, get_target, make_target,
                            reference_close, target_close, to_close)
from models.zoo import BASELINE_KEYS, MAX_JOBS, MODEL_KEYS, ModelSpec, features_for, get_spec

ProgressCallback = Callable[[float, str], None]

MIN_ROWS = 60  # below this no split leaves enough rows to fit and score anything


class LabError(ValueError):
    """A comparison that cannot run; the message is one sentence with the fix."""


class NoData(LabError):
    """No bars match the chosen symbols, interval and time range."""


class LabCancelled(RuntimeError):
    """The cancel event was set; no partial result is returned."""


@dataclass
class LabConfig:
    symbols: list[str] = field(default_factory=list)  # empty: every symbol in the data
    interval: str = "1m"
    start_ms: int | None = None
    end_ms: int | None = None  # exclusive
    features: list[str] = field(default_factory=lambda: list(DEFAULT_FEATURES))
    target: str = "next_return"
    horizon: int = 1
    split: str = "chronological"
    test_fraction: float = 0.2
    n_folds: int = 5
    gap: int = 0
    models: list[tuple[str, dict[str, Any]]] = field(
        default_factory=lambda: [(k, {}) for k in MODEL_KEYS])
    search: bool = False
    search_budget: int = 10
    seed: int = 0
    n_jobs: int = 1
    max_rows: int = 500_000  # hard bound on bars loaded (the latest ones are kept)
    importance_rows: int = 2_000
    importance_repeats: int = 3

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["models"] = [[k, dict(p)] for k, p in self.models]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "models" in known:
            known["models"] = [(k, dict(p or {})) for k, p in known["models"]]
        return cls(**known)


@dataclass
class FittedModel:
    key: str
    label: str
    kind: str
    params: dict[str, Any]
    features: list[str]
    estimator: Any = field(repr=False)
    train_start_ms: int | None = None
    train_end_ms: int | None = None


@dataclass
class LabResult:
    config: LabConfig
    table: pd.DataFrame  # one row per model (index: label), metrics of models.metrics
    predictions: pd.DataFrame  # test rows: ts, symbol, fold, actual, base_close, actual_close, <label>...
    importance: pd.DataFrame  # model, feature, importance, std (increase in test MSE)
    fold_table: pd.DataFrame  # model, fold, n_test, mse, skill
    best_params: dict[str, dict[str, Any]]
    fitted: dict[str, FittedModel]
    guidance: list[str]
    warnings: list[str]
    summary: dict[str, Any]
    run_id: str | None = None

    @property
    def labels(self) -> list[str]:
        return list(self.table.index)

    def best_label(self, include_baselines: bool = True) -> str | None:
        """The model with the lowest test MSE (= highest skill)."""
        table = self.table if include_baselines else self.table[self.table["kind"] == "model"]
        mse = table["mse"].dropna()
        return None if mse.empty else str(mse.idxmin())

    def predicted_close(self, label: str) -> np.ndarray:
        return to_close(self.config.target, self.predictions[label].to_numpy(),
                        self.predictions["base_close"].to_numpy())

    def residuals(self) -> pd.DataFrame:
        """actual - predicted on the target's scale, one column per model."""
        actual = self.predictions["actual"]
        return pd.DataFrame({lb: actual - self.predictions[lb] for lb in self.labels
                             if lb in self.predictions})


# ---------------------------------------------------------------------------------------------

def run_comparison(data, config: LabConfig, progress: ProgressCallback | None = None,
                   cancel: threading.Event | None = None,
                   news: pd.DataFrame | None = None) -> LabResult:
    """Fit and score every model of ``config`` on ``data`` (a store or a bars DataFrame).

    Sentiment features read ``news`` (a frame of news items) or, when it is None and ``data``
    is a store, the store's news for the loaded bars' symbols and range."""
    started = time.perf_counter()
    report = progress or (lambda fraction, message: None)
    cancel = cancel or threading.Event()
    target = get_target(config.target)
    horizon = effective_horizon(config.target, config.horizon)
    warnings = split_warnings(config.split)
    if not target.is_forecast:
        features = list(SAME_BAR_FEATURES)
        if set(expand_features(config.features)) != set(features):
            warnings.append("The same-bar setup uses the bar's volume only: any price feature "
                            "of the same bar would contain the answer. Other features ignored.")
    else:
        features = expand_features(config.features)
        if not features:
            raise LabError("Choose at least one feature.")
    entries = _entries(config)

    report(0.0, "Loading bars")
    bars, load_notes = load_bars(data, config)
    warnings += load_notes
    columns = list(dict.fromkeys(features + [c for e in entries for c in e.features]))
    report(0.02, f"Computing {len(features)} features on {len(bars):,} bars")
    if news is None and any(is_sentiment_feature(c) for c in columns):
        news = load_news(data, bars)
    feats = compute_features(bars, columns, news=news, interval=config.interval)
    y = make_target(bars, config.target, config.horizon)
    base = reference_close(bars, config.target)
    actual_close = target_close(bars, config.target, config.horizon)
    target_known = np.isfinite(y.to_numpy()) & np.isfinite(base.to_numpy()) \
        & np.isfinite(actual_close.to_numpy())
    features, constant = _drop_constant(feats, features, target_known, entries)
    if constant:
        warnings.append(f"Left out {', '.join(constant)}: constant on these {config.interval} "
                        "bars, so they carry no information.")
    if not features:
        raise LabError("Every chosen feature is constant on these bars; choose other features.")
    used = list(dict.fromkeys(features + [c for e in entries for c in e.features]))
    feat_ok = np.isfinite(feats[used].to_numpy()).all(axis=1)
    order = np.lexsort((bars["symbol"].astype(str).to_numpy(), bars["ts"].to_numpy()))
    rows = order[target_known[order]]
    if int(feat_ok[rows].sum()) < MIN_ROWS:
        raise LabError(f"Only {int(feat_ok[rows].sum())} bars have all features and a known "
                       f"target (need {MIN_ROWS}); choose a longer date range or features with "
                       "less warm-up.")
    frame = bars.iloc[rows].reset_index(drop=True)
    X = feats.iloc[rows].reset_index(drop=True)
    y = y.iloc[rows].to_numpy()
    base = base.iloc[rows].to_numpy()
    actual_close = actual_close.iloc[rows].to_numpy()
    ts = frame["ts"].to_numpy()
    gap = max(int(config.gap), horizon - 1) if config.split != "random" else 0
    try:
        # Cut on time first (every feature set gets the same test bars), then drop the rows
        # whose features are still warming up inside each side.
        splits = make_splits(ts, config.split, config.test_fraction, config.n_folds, gap,
                             config.seed)
    except ValueError as exc:
        raise LabError(f"{exc}; choose a longer date range or fewer folds.") from None
    ok = feat_ok[rows]
    warmup = {"train": int(sum((~ok[s.train]).sum() for s in splits[-1:])),
              "test": int(sum((~ok[s.test]).sum() for s in splits))}
    splits = [Split(s.fold, s.train[ok[s.train]], s.test[ok[s.test]]) for s in splits]
    if any(len(s.train) == 0 or len(s.test) == 0 for s in splits):
        raise LabError("Feature warm-up leaves a fold without rows; choose a longer date range, "
                       "fewer folds or features with less warm-up.")

    test_rows = np.unique(np.concatenate([s.test for s in splits]))
    fold_of = np.full(len(frame), -1)
    for s in splits:
        fold_of[s.test] = s.fold
    predictions = pd.DataFrame({
        "ts": ts[test_rows], "symbol": frame["symbol"].to_numpy()[test_rows],
        "fold": fold_of[test_rows], "actual": y[test_rows], "base_close": base[test_rows],
        "actual_close": actual_close[test_rows]})
    position = np.full(len(frame), -1)
    position[test_rows] = np.arange(len(test_rows))

    n_steps = len(entries) * (len(splits) + 1)
    step = 0
    n_models = len(entries)
    rows_out, fold_rows, best_params, fitted, importances = [], [], {}, {}, []
    devices: dict[str, str] = {}  # label -> device that trained it (XGBoost: cpu or cuda)
    n_jobs = max(1, min(int(config.n_jobs), MAX_JOBS))
    for k, entry in enumerate(entries, 1):
        oof = np.full(len(test_rows), np.nan)
        fit_s = predict_s = 0.0
        error = None
        for s in splits:
            if cancel.is_set():
                raise LabCancelled("The comparison was cancelled.")
            where = (f"model {k}/{n_models} {entry.label}: "
                     + (f"fold {s.fold + 1}/{len(splits)}" if len(splits) > 1
                        else f"fitting on {len(s.train):,} rows"))
            report(0.05 + 0.9 * step / n_steps, where)

            def tick(done: int, total: int, unit: str, _where=where, _step=step) -> None:
                if cancel.is_set():
                    raise LabCancelled("The comparison was cancelled.")
                report(0.05 + 0.9 * (_step + done / max(total, 1)) / n_steps,
                       f"{_where}, {unit} {done}/{total}")

            step += 1
            try:
                est, params, f_s, p_s, pred = _fit_predict(entry, X, y, ts, s, config, gap,
                                                           n_jobs, tick)
            except LabCancelled:
                raise
            except Exception as exc:  # one failing model must not sink the others
                error = f"{entry.label} failed: {exc}"
                warnings.append(error)
                fitted.pop(entry.label, None)
                break
            fit_s += f_s
            predict_s += p_s
            oof[position[s.test]] = pred
            fold_rows.append({"model": entry.label, "key": entry.spec.key, "fold": s.fold,
                              "n_test": len(s.test), "mse": M.mse(y[s.test], pred)})
            if params is not None:
                best_params[entry.label] = params
            device = _device_of(est)
            if device:
                devices[entry.label] = device
            fitted[entry.label] = FittedModel(
                entry.spec.key, entry.label, entry.spec.kind, {**entry.params, **(params or {})},
                entry.features, est, int(ts[s.train].min()), int(ts[s.train].max()))
        if error is None:
            predictions[entry.label] = oof
            if cancel.is_set():
                raise LabCancelled("The comparison was cancelled.")
            report(0.05 + 0.9 * step / n_steps, f"{entry.label}: permutation importance")
            importances.append(_importance(fitted[entry.label], X, y, splits[-1], config, n_jobs))
        step += 1
        rows_out.append({"model": entry.label, "key": entry.spec.key, "kind": entry.spec.kind,
                         "fit_time_s": fit_s, "predict_time_s": predict_s, "error": error})

    table = _score_table(rows_out, predictions, config.target)
    fold_table = _fold_table(fold_rows)
    importance = (pd.concat(importances, ignore_index=True) if importances
                  else pd.DataFrame(columns=["model", "feature", "importance", "std"]))
    train_ts = np.unique(np.concatenate([ts[s.train] for s in splits]))
    summary = {
        "symbols": sorted(frame["symbol"].unique().tolist()),
        "interval": config.interval,
        "features": features,
        "n_bars": int(len(bars)),
        "n_rows": int(len(frame)),
        "n_train": int(len(splits[-1].train)),
        "n_train_first": int(len(splits[0].train)),
        "warmup_dropped": warmup,
        "features_constant": constant,
        "n_test": int(len(test_rows)),
        "n_folds": len(splits),
        "gap": gap,
        "train_start_ms": int(train_ts.min()),
        "train_end_ms": int(train_ts.max()),
        "test_start_ms": int(predictions["ts"].min()),
        "test_end_ms": int(predictions["ts"].max()),
        "elapsed_s": round(time.perf_counter() - started, 3),
        "devices": devices,
    }
    result = LabResult(config, table, predictions, importance, fold_table, best_params, fitted,
                       [], warnings, summary)
    result.guidance = guidance(result, y, splits)
    report(1.0, "Done")
    return result


def load_bars(data, config: LabConfig) -> tuple[pd.DataFrame, list[str]]:
    """Bars of ``config``'s symbols, interval and range from a store or a DataFrame, at most
    ``max_rows`` in all (the latest ones per symbol); also returns notes for the user."""
    notes: list[str] = []
    if isinstance(data, pd.DataFrame):
        df = data
        if "interval" in df.columns:
            df = df[df["interval"] == config.interval]
        if "symbol" not in df.columns:
            df = df.assign(symbol="?")
        symbols = list(config.symbols) or sorted(df["symbol"].unique().tolist())
        df = df[df["symbol"].isin(symbols)]
        if config.start_ms is not None:
            df = df[df["ts"] >= config.start_ms]
        if config.end_ms is not None:
            df = df[df["ts"] < config.end_ms]
        cap = max(1, int(config.max_rows) // max(1, len(symbols)))
        df = df.sort_values("ts", kind="stable").groupby("symbol", sort=False).tail(cap)
        bars = df.reset_index(drop=True)
    else:
        symbols = list(config.symbols) or data.list_symbols(config.interval)
        cap = max(1, int(config.max_rows) // max(1, len(symbols)))
        parts = [data.query_bars(s, config.interval, config.start_ms, config.end_ms, limit=cap)
                 for s in symbols]
        parts = [p for p in parts if len(p)]
        bars = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if bars.empty:
        what = ", ".join(symbols) if symbols else "any symbol"
        raise NoData(f"No {config.interval} bars for {what} in the chosen range; start the "
                     "pipeline on the Pipeline page, or run `python -m pipeline backfill`.")
    if (bars.groupby("symbol").size() >= cap).any():
        notes.append(f"Only the latest {cap:,} bars per symbol were used (limit "
                     f"{int(config.max_rows):,} bars per run); narrow the date range to choose.")
    return bars, notes


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
    if type(model).__name__ != "XGBRegressor":
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
    # with all trees so far, which made it 15x slower; it fits in seconds anyway.
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
    if name == "XGBRegressor":
        from xgboost.callback import TrainingCallback

        total = int(model.get_params()["n_estimators"] or 100)
        every = max(1, total // 10)

        class Progress(TrainingCallback):
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


def _score_table(rows: list[dict], predictions: pd.DataFrame, target: str) -> pd.DataFrame:
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
    cols = ["model", "key", "kind", *M.METRIC_COLUMNS, "n_test", "error"]
    return pd.DataFrame(out, columns=cols).set_index("model")


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


def _fold_table(fold_rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(fold_rows, columns=["model", "key", "fold", "n_test", "mse"])
    persistence = df[df["key"] == "persistence"].set_index("fold")["mse"]
    df["skill"] = [M.skill(m, persistence.get(f, np.nan)) for m, f in zip(df["mse"], df["fold"])]
    return df.drop(columns=["key"])


# ---------------------------------------------------------------------------------------------
# Guidance: plain words where the numbers mislead

GUIDE_R2_LEVELS = (
    "R² on price levels is close to 1 for every model, persistence included (here "
    "persistence scores R² = {r2:.6f}), because the price hardly moves from one bar to the "
    "next: R² mostly measures that prices are autocorrelated. Compare models by skill vs "
    "persistence (above 0 = better than assuming no change)."
)
GUIDE_R2_RETURNS = (
    "On returns an R² near 0 is normal: most of a bar's move is unpredictable noise. A small "
    "positive skill vs persistence, stable across walk-forward folds, is what a real edge "
    "looks like."
)
GUIDE_TREES = (
    "Tree models ({models}) cannot predict outside the range of targets they were trained "
    "on: {share:.0%} of the test targets lie outside the training range "
    "[{lo:.4g}, {hi:.4g}], where their predictions go flat. On a chronological split prices "
    "drift out of that range; predict next_return instead, or use price-relative features."
)
GUIDE_NO_SKILL = (
    "No model beats persistence on these test bars: the best forecast here is \"no change\". "
    "That is what a random walk looks like; a model that seems to beat it on one split only "
    "is usually fitting noise."
)
GUIDE_SMALL_SKILL = (
    "The best skill vs persistence is small ({skill:.2g}); check it is stable across "
    "walk-forward folds before trusting it."
)
GUIDE_DIRECTION = (
    "Directional accuracy near 50% is a coin flip; with {n:,} test bars, anything within "
    "±{band:.1%} of 50% is indistinguishable from chance."
)
GUIDE_SAME_BAR = (
    "This is the seed project's setup: it predicts a bar's close from that same bar's volume. "
    "It is not a forecast: the volume is known only when the bar has closed, at the same time "
    "as the close itself. Its scores cannot be compared with real forecasts."
)


def guidance(result: LabResult, y: np.ndarray, splits: list[Split]) -> list[str]:
    table, cfg = result.table, result.config
    spec = get_target(cfg.target)
    notes: list[str] = []
    if not spec.is_forecast:
        notes.append(GUIDE_SAME_BAR)
    persistence = table[table["key"] == "persistence"]
    if spec.is_forecast and not spec.is_return and len(persistence):
        notes.append(GUIDE_R2_LEVELS.format(r2=float(persistence["r2"].iloc[0])))
    if spec.is_return:
        notes.append(GUIDE_R2_RETURNS)
    trees = [lb for lb, fm in result.fitted.items() if not get_spec(fm.key).extrapolates]
    if trees and cfg.split != "random" and not spec.is_return:
        train_y = y[np.unique(np.concatenate([s.train for s in splits]))]
        lo, hi = float(train_y.min()), float(train_y.max())
        actual = result.predictions["actual"].to_numpy()
        share = float(np.mean((actual < lo) | (actual > hi)))
        if share > 0.01:
            notes.append(GUIDE_TREES.format(models=", ".join(trees), share=share, lo=lo, hi=hi))
    ranked = table[table["key"] != "persistence"]["skill"].dropna()
    if len(ranked) and spec.is_forecast:
        best = float(ranked.max())
        if best <= 0:
            notes.append(GUIDE_NO_SKILL)
        elif best < 0.01:
            notes.append(GUIDE_SMALL_SKILL.format(skill=best))
    da = table["directional_accuracy"].dropna()
    n = int(result.summary.get("n_test", len(result.predictions)))
    band = 2.0 * 0.5 / np.sqrt(max(n, 1))  # ~95% band of a fair coin's hit rate
    if len(da) and spec.is_forecast and float(da.max()) < 0.5 + band:
        notes.append(GUIDE_DIRECTION.format(n=n, band=band))
    return notes


# ---------------------------------------------------------------------------------------------
# Runs kept in the store, and model versions

RUN_KIND = "model_lab"


def save_run(store, result: LabResult) -> str:
    """Record the run (config, table, guidance, summary) in the store; returns its id."""
    doc = {
        "kind": RUN_KIND,
        "config": result.config.to_dict(),
        "table": result.table.reset_index().to_dict("records"),
        "fold_table": result.fold_table.to_dict("records"),
        "best_params": result.best_params,
        "guidance": result.guidance,
        "warnings": result.warnings,
        "summary": result.summary,
        "best_model": result.best_label(),
    }
    result.run_id = store.save_run(doc)
    return result.run_id


def list_runs(store, limit: int = 200) -> pd.DataFrame:
    """One row per stored lab run, newest first."""
    rows = []
    for run in store.list_runs(limit=limit):
        if run.get("kind") != RUN_KIND:
            continue
        cfg, summary = run.get("config", {}), run.get("summary", {})
        table = run_table(run)
        best = run.get("best_model")
        rows.append({
            "run_id": run["run_id"],
            "created": pd.to_datetime(run.get("created_ms", 0), unit="ms", utc=True),
            "symbols": ", ".join(summary.get("symbols") or cfg.get("symbols") or []),
            "interval": cfg.get("interval"),
            "target": cfg.get("target"),
            "horizon": cfg.get("horizon"),
            "split": cfg.get("split"),
            "n_test": summary.get("n_test"),
            "models": len(table),
            "best_model": best,
            "best_skill": (float(table.loc[best, "skill"])
                           if best in table.index and pd.notna(table.loc[best, "skill"])
                           else np.nan),
        })
    cols = ["run_id", "created", "symbols", "interval", "target", "horizon", "split", "n_test",
            "models", "best_model", "best_skill"]
    return pd.DataFrame(rows, columns=cols)


def run_table(run: dict[str, Any]) -> pd.DataFrame:
    table = pd.DataFrame(run.get("table") or [])
    return table.set_index("model") if "model" in table.columns else table


def compare_runs(runs: list[dict[str, Any]], metric: str = "skill") -> pd.DataFrame:
    """Side by side: one row per model, one column per run, values of ``metric``."""
    cols, order = {}, []
    for run in runs:
        table = run_table(run)
        cfg = run.get("config", {})
        name = f"{run['run_id']} ({cfg.get('target')}, {cfg.get('split')})"
        if metric in table.columns:
            cols[name] = pd.to_numeric(table[metric], errors="coerce")
            order += [m for m in table.index if m not in order]
    out = pd.DataFrame(cols).reindex(order)
    out.index.name = "model"
    return out


def delete_run(store, run_id: str) -> bool:
    return store.delete_run(run_id)


def table_to_csv(table: pd.DataFrame) -> bytes:
    return table.to_csv(index=table.index.name is not None).encode("utf-8")


def save_version(store, result: LabResult, label: str | None = None, champion: bool = False,
                 scope: str = GLOBAL_SCOPE) -> str:
    """Save a fitted model of ``result`` (default: the best) as a model version."""
    label = label or result.best_label()
    refusal = champion_refusal(result.config.target) if champion else None
    if refusal:
        raise LabError(f"{label} cannot be champion: {refusal}.")
    if label not in result.fitted:
        raise LabError(f"No fitted model named {label!r} in this run.")
    fm = result.fitted[label]
    row = result.table.loc[label]
    meta = {
        "name": label, "model_key": fm.key, "params": fm.params, "features": fm.features,
        "target": result.config.target, "horizon": effective_horizon(result.config.target,
                                                                      result.config.horizon),
        "interval": result.config.interval, "symbols": result.summary["symbols"],
        "train_start_ms": fm.train_start_ms, "train_end_ms": fm.train_end_ms,
        "metrics": {k: row[k] for k in M.METRIC_COLUMNS if k in row.index},
        "run_id": result.run_id, "split": result.config.split, "scope": scope,
    }
    version_id = save_model_version(store, fm.estimator, meta)
    if champion:
        promote(store, version_id, scope, reason=f"model lab run {result.run_id or ''}".strip())
    return version_id
