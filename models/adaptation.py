"""Continuous adaptation for the live scorer: when to retrain, and when a retrained model wins.

The live scorer (:mod:`pipeline.workers.scorer`) owns the streaming; this module owns the decisions,
as plain functions over the store so they can be tested and run without Kafka:

- :class:`~models.retrain_policy.RetrainPolicy` (in :mod:`models.retrain_policy`) — every
  knob: the schedule (every N new bars), the drift rule (rolling live error above
  ``drift_factor`` × the champion's reference level), the training window, the holdout, and
  how much better a challenger must be.
- :func:`train_default_model` — with no champion, train the default model (linear regression
  on the scale-free default features, target ``next_return``) on what is stored, save it and
  promote it; or say how much data is still missing.
- :func:`retrain` — train a challenger on the most recent window, evaluate it and the champion
  chronologically on the latest holdout (rows neither trained on), promote the challenger only
  if it beats the champion, and record the decision as a ``retrain`` event with the figures.

The live error itself (progressive validation, drift, the Predictions page's tables) is in
:mod:`models.live.errors`, on the formulas of :func:`models.metrics.close_errors`.

One error metric for all decisions: the absolute percentage error of the *implied close*
(``mape_pct`` in :mod:`models.metrics`). It is comparable across targets (a next-close model and
a next-return model predict the same close), across symbols (ACME at 180 and INITECH at 40
count the same) and between the lab's holdout figures and the live errors.

Why the default target is ``next_return``: one global model serves every symbol, and returns
are on the same scale for all of them, while closes differ by price level. The price-level
features (``close``, moving averages...) are left out for the same reason; the predicted close
is ``base_close × (1 + predicted return)`` (:func:`models.targets.to_close`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from models import metrics as M
from models.features import (
    DEFAULT_FEATURES, FEATURE_GROUPS, compute_features, is_price_level, max_lookback,
)
from models.features.fundamentals import is_fundamentals_feature, load_fundamentals
from models.registry import (GLOBAL_SCOPE, LoadedModel, promote, promoted_by_hand,
                             save_model_version)
from models.features.sentiment import is_sentiment_feature, load_news
from models.targets import effective_horizon, make_target, to_close
from models.retrain_policy import (DECISION_METRIC, DEFAULT_MODEL_KEY, DEFAULT_TARGET,
                                   RETRAIN_EVENT, RetrainPolicy)
from pipeline.contracts.jsonsafe import json_safe
from pipeline.store.base import Store

log = logging.getLogger(__name__)

__all__ = ["RetrainPolicy", "RetrainDecision", "NotEnoughData", "RETRAIN_EVENT",
           "DEFAULT_TARGET", "DEFAULT_MODEL_KEY", "DECISION_METRIC", "default_features",
           "default_estimator", "train_default_model", "retrain", "load_training_data",
           "split_holdout", "evaluate", "persistence_metrics"]


def default_features() -> list[str]:
    """The model lab's default features without the price-level and calendar ones.

    Price levels differ by symbol (see the module docstring). Time of day is left out because
    a default model is often trained on a few hours of bars: least squares then extrapolates
    ``minute_sin``/``minute_cos`` far outside what it saw (figures: docs/DESIGN_FIGURES.md).
    """
    calendar = set(FEATURE_GROUPS["calendar"])
    return [f for f in DEFAULT_FEATURES if not is_price_level(f) and f not in calendar]


def default_estimator():
    """Ordinary least squares on standardised features (the zoo's ``linear`` model)."""
    from models.zoo import get_spec

    return get_spec(DEFAULT_MODEL_KEY).build({}, seed=0, n_jobs=1)


@dataclass
class RetrainDecision:
    """The outcome of one retrain: what was trained, the figures, and whether it was promoted."""

    trigger: str  # bootstrap | schedule | drift | manual
    reason: str
    promoted: bool
    scope: str = GLOBAL_SCOPE
    interval: str | None = None
    champion_version_id: str | None = None  # the champion after the decision
    previous_version_id: str | None = None  # the champion before it
    challenger_version_id: str | None = None
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    persistence_metrics: dict[str, float] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    event_id: str | None = None
    waiting: bool = False  # not enough data yet: nothing trained

    def summary(self) -> dict[str, Any]:
        return json_safe(asdict(self))


class NotEnoughData(Exception):
    """Too little stored data to train or evaluate; the message says how much is missing."""


# ---------------------------------------------------------------------------------------------
# Decisions

def train_default_model(store: Store, interval: str, policy: RetrainPolicy | None = None,
                        symbols: list[str] | None = None, bar_ts: int | None = None,
                        worker_id: str | None = None) -> RetrainDecision:
    """With no champion: train the default model on the stored bars, save and promote it.

    Returns a decision with ``waiting=True`` (and nothing saved) while too little is stored.
    """
    policy = policy or RetrainPolicy()
    features, target = default_features(), DEFAULT_TARGET
    symbols = symbols or store.list_symbols(interval)
    t0 = time.perf_counter()
    try:
        data = load_training_data(store, symbols, interval, features, target, 1,
                                  policy.train_bars + policy.holdout_bars)
        train, holdout = split_holdout(data, policy, holdout_fraction=0.2)
    except NotEnoughData as exc:
        return RetrainDecision("bootstrap", str(exc), False, interval=interval, waiting=True)
    estimator = default_estimator()
    estimator.fit(train[features], train["y"].to_numpy())
    metrics = evaluate(lambda X: estimator.predict(X[features]), holdout, target)
    persistence = persistence_metrics(holdout, target)
    meta = _version_meta(
        name="Linear regression (default, next return)", model_key=DEFAULT_MODEL_KEY,
        features=features, target=target, horizon=1, interval=interval, train=train,
        metrics=metrics, trigger="bootstrap", parent=None, scope=GLOBAL_SCOPE)
    version_id = save_model_version(store, estimator, meta)
    reason = ("no saved model: trained the default model on the stored bars "
              f"({len(train):,} rows of {len(set(train['symbol']))} symbols)")
    promote(store, version_id, GLOBAL_SCOPE, reason=f"bootstrap: {reason}")
    decision = RetrainDecision(
        "bootstrap", reason, True, GLOBAL_SCOPE, interval, version_id, None, version_id,
        challenger_metrics=metrics, persistence_metrics=persistence,
        figures={**_data_figures(train, holdout), "fit_s": round(time.perf_counter() - t0, 3)})
    decision.event_id = _record(store, decision, policy, bar_ts, worker_id)
    return decision


def retrain(store: Store, champion: LoadedModel, trigger: str, reason: str,
            policy: RetrainPolicy | None = None, symbols: list[str] | None = None,
            interval: str | None = None, scope: str | None = None, bar_ts: int | None = None,
            live: dict[str, Any] | None = None, worker_id: str | None = None) -> RetrainDecision:
    """Train a challenger on the recent window; promote it only if it beats ``champion``.

    Both are scored on the same chronological holdout: the latest ``holdout_bars`` bars per
    symbol, which the challenger never saw. The decision and its figures are recorded as a
    ``retrain`` event whether or not the challenger wins. Raises :class:`NotEnoughData`
    when the store cannot supply the windows yet.
    """
    policy = policy or RetrainPolicy()
    t0 = time.perf_counter()
    meta = champion.meta
    scope = scope or meta.get("scope") or GLOBAL_SCOPE
    interval = interval or meta.get("interval")
    if interval is None:
        raise ValueError("retrain needs the interval of the bars to learn from")
    if symbols is None:
        symbols = [scope] if scope != GLOBAL_SCOPE else store.list_symbols(interval)
    target, horizon = champion.target, champion.horizon
    challenger_est, ch_key, ch_name, ch_params = _challenger_estimator(champion, policy)
    features = champion.features
    data = load_training_data(store, symbols, interval, features, target, horizon,
                              policy.train_bars + policy.holdout_bars)
    train, holdout = split_holdout(data, policy)
    challenger_est.fit(train[features], train["y"].to_numpy())
    ch_metrics = evaluate(lambda X: challenger_est.predict(X[features]), holdout, target)
    champ_metrics = evaluate(champion.predict, holdout, target)
    pers = persistence_metrics(holdout, target)

    # Rows of the holdout the champion was trained on flatter it; say so in the figures.
    champ_end = meta.get("train_end_ms")
    seen = int((holdout["ts"] <= champ_end).sum()) if champ_end is not None else 0
    ch_err, champ_err = ch_metrics.get(DECISION_METRIC), champ_metrics.get(DECISION_METRIC)
    better = (M.is_finite_number(ch_err) and (not M.is_finite_number(champ_err)
                                   or ch_err <= champ_err * (1.0 - policy.min_improvement)))
    # A champion a person chose stays unless the challenger also beats persistence.
    by_hand = promoted_by_hand(meta)
    pers_err = pers.get(DECISION_METRIC)
    kept_for_persistence = bool(better and by_hand and not (M.is_finite_number(pers_err)
                                                            and ch_err < pers_err))
    better = better and not kept_for_persistence
    figures = {
        **_data_figures(train, holdout),
        "decision_metric": DECISION_METRIC,
        "challenger_error": ch_err, "champion_error": champ_err,
        "persistence_error": pers.get(DECISION_METRIC),
        "champion_promoted_by_hand": by_hand,
        "improvement": (1.0 - ch_err / champ_err)
        if M.is_finite_number(ch_err) and M.is_finite_number(champ_err) and champ_err > 0
        else None,
        "min_improvement": policy.min_improvement,
        "holdout_rows_in_champion_training": seen,
        "fit_s": round(time.perf_counter() - t0, 3),
        "live": live or {},
    }
    verdict = (f"challenger {DECISION_METRIC} {_fmt(ch_err)} vs champion {_fmt(champ_err)}: "
               + ("promoted" if better else "champion kept"))
    if kept_for_persistence:
        verdict += (f" (promoted by hand, and the challenger does not beat persistence "
                    f"{_fmt(pers_err)})")
    challenger_id = None
    if better or policy.keep_rejected:
        challenger_id = save_model_version(store, challenger_est, _version_meta(
            name=f"{ch_name} (retrained: {trigger})", model_key=ch_key, params=ch_params,
            features=features, target=target, horizon=horizon, interval=interval, train=train,
            metrics=ch_metrics, trigger=trigger, parent=champion.version_id, scope=scope))
    if better:
        promote(store, challenger_id, scope, reason=f"{trigger} retrain: {verdict}")
    decision = RetrainDecision(
        trigger, f"{reason}; {verdict}", bool(better), scope, interval,
        champion_version_id=challenger_id if better else champion.version_id,
        previous_version_id=champion.version_id, challenger_version_id=challenger_id,
        challenger_metrics=ch_metrics, champion_metrics=champ_metrics, persistence_metrics=pers,
        figures=figures)
    decision.event_id = _record(store, decision, policy, bar_ts, worker_id)
    return decision


# ---------------------------------------------------------------------------------------------
# Data

def load_training_data(store: Store, symbols: list[str], interval: str, features: list[str],
                       target: str, horizon: int, bars_per_symbol: int) -> pd.DataFrame:
    """Rows with finite features and target from the latest bars of each symbol.

    Columns: ``symbol, ts, base_close, actual_close, y, target_ts`` and the features, ts order
    within each symbol. ``target_ts`` is the bar whose close the target is about.
    """
    h = effective_horizon(target, horizon)
    need = int(bars_per_symbol) + max_lookback(features) + h
    parts = []
    for sym in symbols:
        bars = store.query_bars(sym, interval, limit=need)
        if len(bars) <= h:
            continue
        bars = bars.reset_index(drop=True)
        # a sentiment/fundamentals champion retrains on the stored news/snapshots, as in the lab
        news = load_news(store, bars) if any(map(is_sentiment_feature, features)) else None
        funds = (load_fundamentals(store, bars) if any(map(is_fundamentals_feature, features))
                 else None)
        feats = compute_features(bars, features, news=news, fundamentals=funds)
        part = pd.DataFrame({
            "symbol": sym, "ts": bars["ts"].to_numpy(),
            "base_close": bars["close"].to_numpy(dtype="float64"),
            "actual_close": bars["close"].shift(-h).to_numpy(dtype="float64"),
            "target_ts": bars["ts"].shift(-h).to_numpy(dtype="float64"),
            "y": make_target(bars, target, h).to_numpy(),
        })
        part = pd.concat([part, feats.reset_index(drop=True)], axis=1)
        ok = np.isfinite(part[["y", *features]].to_numpy(dtype="float64")).all(axis=1)
        parts.append(part[ok].tail(int(bars_per_symbol)))
    if not parts:
        raise NotEnoughData(f"waiting for data: no {interval} bars with complete features stored "
                            "yet")
    return pd.concat(parts, ignore_index=True)


def split_holdout(data: pd.DataFrame, policy: RetrainPolicy,
                  holdout_fraction: float | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Chronological split per symbol: the latest rows are the holdout, the ``train_bars``
    before them the training window. ``holdout_fraction`` (bootstrap) caps the holdout at that
    share of each symbol's rows, so a young store still trains."""
    train_parts, hold_parts = [], []
    per_symbol = min(policy.min_symbol_rows, policy.train_bars)
    short = 0
    for _, rows in data.groupby("symbol", sort=False):
        n_hold = policy.holdout_bars
        if holdout_fraction is not None:
            n_hold = min(n_hold, int(len(rows) * holdout_fraction))
        n_hold = min(n_hold, len(rows))
        train_rows = rows.iloc[:len(rows) - n_hold].tail(policy.train_bars)
        if len(train_rows) < per_symbol:
            short += 1  # too young a series: its few rows would not represent it
            continue
        hold_parts.append(rows.iloc[len(rows) - n_hold:])
        train_parts.append(train_rows)
    train = pd.concat(train_parts, ignore_index=True) if train_parts else data.iloc[0:0]
    holdout = pd.concat(hold_parts, ignore_index=True) if hold_parts else data.iloc[0:0]
    if len(train) < policy.min_train_rows or len(holdout) < policy.min_holdout_rows:
        raise NotEnoughData(_waiting_reason(data, policy, per_symbol, short, len(train),
                                            len(holdout), holdout_fraction))
    return train, holdout


def _waiting_reason(data: pd.DataFrame, policy: RetrainPolicy, per_symbol: int, short: int,
                    n_train: int, n_hold: int, holdout_fraction: float | None) -> str:
    """Why there is no model yet, in figures a reader can check against the stored bars:
    rows with complete features per symbol, what is needed, and about how many more bars."""
    counts = data.groupby("symbol").size()
    n_sym = max(len(counts), 1)
    train_need = max(per_symbol, -(-policy.min_train_rows // n_sym))
    rows_need = (int(np.ceil(train_need / (1 - holdout_fraction))) if holdout_fraction
                 else train_need + policy.holdout_bars)
    more = max(0, rows_need - int(counts.min())) if len(counts) else rows_need
    have = ("0" if not len(counts) else f"{int(counts.min()):,}" if counts.min() == counts.max()
            else f"{int(counts.min()):,} to {int(counts.max()):,}")  # none: no symbol yet
    return (f"waiting for data: the {n_sym} symbol(s) have {have} rows with complete features "
            f"(stored bars minus the features' warm-up); the default model needs "
            f"{train_need:,} training rows per symbol after a holdout "
            f"(need {policy.min_train_rows:,} in all, {policy.min_holdout_rows:,} holdout), "
            f"so about {more:,} more bars per symbol; usable now: {n_train:,} training and "
            f"{n_hold:,} holdout rows ({short} symbol(s) too short yet)")


def evaluate(predict: Callable[[pd.DataFrame], Any], rows: pd.DataFrame,
             target: str) -> dict[str, float]:
    """The lab's metrics (:func:`models.metrics.score`) plus ``mae_close`` and ``n``."""
    y_pred = np.asarray(predict(rows), dtype="float64").ravel()
    ok = np.isfinite(y_pred)
    if not ok.any():
        return {"n": 0}
    r = rows[ok]
    y_pred = y_pred[ok]
    pred_close = to_close(target, y_pred, r["base_close"].to_numpy())
    y = r["y"].to_numpy()
    out = M.score(y, y_pred, r["actual_close"], pred_close, r["base_close"],
                  mse_persistence=M.mse(y, M.persistence_forecast(target, r["base_close"])))
    out["mae_close"] = float(np.mean(np.abs(pred_close - r["actual_close"].to_numpy())))
    out["n"] = int(len(r))
    return json_safe(out)


def persistence_metrics(rows: pd.DataFrame, target: str) -> dict[str, float]:
    """The "no change" forecast on the same rows (what every model must beat)."""
    return evaluate(lambda r: M.persistence_forecast(target, r["base_close"]), rows, target)


# ---------------------------------------------------------------------------------------------

def _challenger_estimator(champion: LoadedModel, policy: RetrainPolicy):
    """A fresh, unfitted estimator for the challenger, with its key, name and params."""
    meta = champion.meta
    if policy.challenger_factory is not None:
        est = policy.challenger_factory()
        return est, type(est).__name__.lower(), type(est).__name__, {}
    key, params = meta.get("model_key"), dict(meta.get("params") or {})
    name = meta.get("name") or key or "model"
    name = name.split(" (retrained")[0]
    try:
        from models.zoo import MODEL_SPECS

        spec = MODEL_SPECS.get(key)
        if spec is not None:
            # One thread: the retrain runs beside the live consumer on a small machine.
            return spec.build({k: v for k, v in params.items() if k in spec.defaults},
                              seed=0, n_jobs=1), key, name, params
    except Exception as exc:  # an unknown or changed spec: fall back to cloning
        log.debug("zoo spec %s unusable (%s); cloning the champion", key, exc)
    from sklearn.base import clone

    est = clone(champion.model)
    if "n_jobs" in est.get_params():
        est.set_params(n_jobs=1)
    return est, key or type(est).__name__.lower(), name, params


def _version_meta(name: str, model_key: str, features: list[str], target: str, horizon: int,
                  interval: str, train: pd.DataFrame, metrics: dict[str, float], trigger: str,
                  parent: str | None, scope: str, params: dict | None = None) -> dict[str, Any]:
    return {
        "name": name, "model_key": model_key, "params": params or {}, "features": features,
        "target": target, "horizon": horizon, "interval": interval,
        "symbols": sorted(set(train["symbol"])),
        "train_start_ms": int(train["ts"].min()),
        # The last bar whose data the model saw, targets included: the scorer predicts only
        # bars after it, so live errors are never measured on training data.
        "train_end_ms": int(np.nanmax(train["target_ts"].to_numpy())),
        "train_rows": int(len(train)), "metrics": metrics, "scope": scope,
        "trained_by": "scorer", "trigger": trigger, "parent_version_id": parent,
    }


def _data_figures(train: pd.DataFrame, holdout: pd.DataFrame) -> dict[str, Any]:
    return {
        "train_rows": int(len(train)), "holdout_rows": int(len(holdout)),
        "symbols": int(train["symbol"].nunique()),
        "train_start_ms": int(train["ts"].min()), "train_end_ms": int(train["ts"].max()),
        "holdout_start_ms": int(holdout["ts"].min()), "holdout_end_ms": int(holdout["ts"].max()),
    }


def _record(store: Store, d: RetrainDecision, policy: RetrainPolicy, bar_ts: int | None,
            worker_id: str | None) -> str:
    return store.record_event(
        RETRAIN_EVENT, trigger=d.trigger, reason=d.reason, promoted=d.promoted, scope=d.scope,
        interval=d.interval, champion_version_id=d.champion_version_id,
        previous_version_id=d.previous_version_id, challenger_version_id=d.challenger_version_id,
        challenger_metrics=d.challenger_metrics, champion_metrics=d.champion_metrics,
        persistence_metrics=d.persistence_metrics, figures=d.figures, bar_ts=bar_ts,
        worker_id=worker_id, policy=policy.describe())


def _fmt(x) -> str:
    return f"{x:.4f}%" if M.is_finite_number(x) else "n/a"
