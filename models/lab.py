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
:func:`delete_run` and exported with :func:`table_to_csv` (all in :mod:`models.lab_runs`);
the records are in :mod:`models.lab_types`, the fitting of one model (progress, cancel,
search, importance) in :mod:`models.lab_fitting`.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd

from models import metrics as M
from models import significance as S
from models.features import compute_features, expand_features, level_features_note
from models.lab_fitting import (  # noqa: F401 (fit_in_chunks re-exported)
    _device_of, _drop_constant, _entries, _fit_predict, _fold_table, _importance, _score_table,
    fit_in_chunks,
)
# The lab's public surface stays `models.lab`: records and stored runs are re-exported.
from models.lab_runs import (  # noqa: F401
    RUN_KIND, compare_runs, delete_run, list_runs, run_table, save_run, save_version,
    table_to_csv,
)
from models.lab_types import (  # noqa: F401
    MIN_ROWS, FittedModel, LabCancelled, LabConfig, LabError, LabResult, NoData, ProgressCallback,
)
from models.features.fundamentals import is_fundamentals_feature, load_fundamentals
from models.features.sentiment import is_sentiment_feature, load_news
from models.splits import Split, make_splits, split_warnings
from models.targets import (SAME_BAR_FEATURES, effective_horizon, get_target, make_target,
                            reference_close, target_close)
from models.zoo import MAX_JOBS, get_spec

# ---------------------------------------------------------------------------------------------

def run_comparison(data, config: LabConfig, progress: ProgressCallback | None = None,
                   cancel: threading.Event | None = None,
                   news: pd.DataFrame | None = None,
                   fundamentals: pd.DataFrame | None = None) -> LabResult:
    """Fit and score every model of ``config`` on ``data`` (a store or a bars DataFrame).

    Sentiment features read ``news`` (a frame of news items) or, when it is None and ``data``
    is a store, the store's news for the loaded bars' symbols and range; fundamentals
    features read ``fundamentals`` (snapshots) the same way."""
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
        if note := level_features_note(features):
            warnings.append(note)
    entries = _entries(config)

    report(0.0, "Loading bars")
    bars, load_notes = load_bars(data, config)
    warnings += load_notes
    columns = list(dict.fromkeys(features + [c for e in entries for c in e.features]))
    report(0.02, f"Computing {len(features)} features on {len(bars):,} bars")
    if news is None and any(is_sentiment_feature(c) for c in columns):
        news = load_news(data, bars)
    if fundamentals is None and any(is_fundamentals_feature(c) for c in columns):
        fundamentals = load_fundamentals(data, bars)
    feats = compute_features(bars, columns, news=news, interval=config.interval,
                             fundamentals=fundamentals)
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

    table = _score_table(rows_out, predictions, config.target, horizon, config.seed)
    fold_table = _fold_table(fold_rows, predictions, horizon, config.seed)
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
        "significance": {"comparisons": int(table.attrs.get("comparisons", 0)),
                         "level": float(table.attrs.get("level", S.LEVEL)),
                         "test": "Diebold-Mariano, Newey-West HAC, HLN, Holm",
                         "interval": "95% paired moving-block bootstrap of skill"},
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
    "No evidence any model beats persistence on these test bars (best skill {skill:+.3g}, "
    "interval {lo:+.3g} to {hi:+.3g}): the best forecast here is \"no change\". That is what "
    "a random walk looks like; a model that seems to beat it on one split only is usually "
    "fitting noise."
)
GUIDE_BEATS = "{models} beat{s} persistence at {level:.0%} after Holm's correction."
GUIDE_WORSE = "{models} {are} worse than persistence at {level:.0%} after Holm's correction."
GUIDE_FOLDS = (
    "Walk-forward folds: {model} beats persistence in {wins} of {n} folds on its own; the "
    "pooled test above is the one to read, the folds show whether the edge is stable."
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
    if spec.is_forecast and "reading" in table.columns:
        notes += _significance_notes(result)
    da = table["directional_accuracy"].dropna()
    n = int(result.summary.get("n_test", len(result.predictions)))
    band = 2.0 * 0.5 / np.sqrt(max(n, 1))  # ~95% band of a fair coin's hit rate
    if len(da) and spec.is_forecast and float(da.max()) < 0.5 + band:
        notes.append(GUIDE_DIRECTION.format(n=n, band=band))
    return notes


def _significance_notes(result: LabResult) -> list[str]:
    """The wording rule's sentences: who beats persistence (or is worse), and how it was
    decided; per-fold wins for walk-forward."""
    table = result.table
    level = float(table.attrs.get("level", S.LEVEL))
    compared = table[table["reading"].notna() & (table["key"] != "persistence")]
    if compared.empty:
        return []
    notes = []
    beats = [str(m) for m in compared.index[compared["reading"] == S.BEATS]]
    worse = [str(m) for m in compared.index[compared["reading"] == S.WORSE]]
    if beats:
        notes.append(GUIDE_BEATS.format(models=", ".join(beats), s="s" if len(beats) == 1
                                        else "", level=level))
    else:
        best = compared["skill"].astype(float).idxmax() if compared["skill"].notna().any() \
            else compared.index[0]
        notes.append(GUIDE_NO_SKILL.format(skill=float(compared.loc[best, "skill"]),
                                           lo=float(compared.loc[best, "skill_lo"]),
                                           hi=float(compared.loc[best, "skill_hi"])))
    if worse:
        notes.append(GUIDE_WORSE.format(models=", ".join(worse),
                                        are="is" if len(worse) == 1 else "are", level=level))
    folds = result.fold_table
    if result.config.split == "walk_forward" and "reading" in folds.columns and beats:
        for m in beats:
            part = folds[folds["model"] == m]
            notes.append(GUIDE_FOLDS.format(model=m, wins=int((part["reading"] == S.BEATS).sum()),
                                            n=len(part)))
    notes.append(S.method_note(int(table.attrs.get("comparisons", len(compared))), level))
    return notes
