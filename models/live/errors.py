"""Live (progressive-validation) errors: rolling error windows, the drift monitor, and the tables
the Predictions page shows. The error of one prediction (and of a frame of them) is computed in
one home, :func:`models.metrics.close_error` / :func:`models.metrics.close_errors`."""
from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any

import numpy as np
import pandas as pd

from models import metrics as M
from models.retrain_policy import RETRAIN_EVENT, RetrainPolicy
from pipeline.contracts.jsonsafe import json_safe
from pipeline.store.base import Store

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Live error (progressive validation)

class LiveErrors:
    """Rolling MAE / RMSE (implied close, price units), MAPE and directional accuracy, all over
    one window: the last ``window`` scored predictions (directional accuracy: the share right
    among those of them where the price moved; ``moves`` says how many).

    The window's sums are kept up to date as errors come and go, so :meth:`summary` is O(1):
    the scorer's ``live_error`` gauge summarises every symbol (500 of them) in one poll. To
    keep rounding from piling up, the sums are recomputed from the window once per
    ``window`` additions.
    """

    def __init__(self, window: int = 200):
        self.window = window
        self._abs: deque[float] = deque(maxlen=window)
        self._pct: deque[float] = deque(maxlen=window)
        self._hits: deque[bool | None] = deque(maxlen=window)  # aligned with _abs
        self._calls: deque[bool] = deque(maxlen=window)  # the prediction called a move
        self.total = 0
        self._s_abs = self._s_sq = self._s_pct = 0.0
        self._n_pct = self._s_hits = self._s_calls = self._n_moves = 0
        self._since_exact = 0

    def add(self, abs_err: float, pct_err: float, hit: bool | None,
            called: bool = True) -> None:
        """One scored prediction; ``called``: it predicted a move (a model that never does,
        such as persistence, has no directional accuracy, as in the Model lab)."""
        full = len(self._abs) == self.window
        if full:  # the oldest leaves the window
            self._s_calls -= self._calls[0]
            old = self._abs[0]
            self._s_abs -= old
            self._s_sq -= old * old
            old_pct = self._pct[0]
            if math.isfinite(old_pct):
                self._s_pct -= old_pct
                self._n_pct -= 1
            old_hit = self._hits[0]
            if old_hit is not None:
                self._s_hits -= old_hit
                self._n_moves -= 1
        self._abs.append(abs_err)
        self._pct.append(pct_err)
        self._calls.append(called)
        self._s_calls += called
        self._s_abs += abs_err
        self._s_sq += abs_err * abs_err
        if math.isfinite(pct_err):
            self._s_pct += pct_err
            self._n_pct += 1
        self._hits.append(hit)
        if hit is not None:
            self._s_hits += hit
            self._n_moves += 1
        self.total += 1
        self._since_exact += 1
        if self._since_exact >= self.window or not math.isfinite(self._s_abs + self._s_sq):
            self._exact()

    def _exact(self) -> None:
        self._since_exact = 0
        self._s_abs = math.fsum(self._abs)
        self._s_sq = math.fsum(a * a for a in self._abs)
        pct = [v for v in self._pct if math.isfinite(v)]
        self._s_pct, self._n_pct = math.fsum(pct), len(pct)
        self._s_hits = sum(h for h in self._hits if h is not None)
        self._n_moves = sum(h is not None for h in self._hits)
        self._s_calls = sum(self._calls)

    @property
    def n(self) -> int:
        return len(self._abs)

    @property
    def mape_pct(self) -> float:
        return self._s_pct / self._n_pct if self._n_pct else float("nan")

    def summary(self) -> dict[str, Any]:
        n = len(self._abs)
        if not n:
            return {"n": 0, "scored": self.total}
        return {  # plain floats already: NaN/inf become None (what json_safe does)
            "mae": _finite_or_none(self._s_abs / n),
            "rmse": _finite_or_none(math.sqrt(max(self._s_sq, 0.0) / n)),
            "mape_pct": _finite_or_none(self.mape_pct),
            "directional_accuracy": (self._s_hits / self._n_moves
                                     if self._n_moves and self._s_calls else None),
            "n": n, "scored": self.total, "window": self.window, "moves": self._n_moves,
        }


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


class DriftMonitor:
    """Rolling live error of one model against its reference level.

    The reference is the model's holdout error when it was trained (``metrics.mape_pct``, the
    same measure as the live one); for a model without it, the first ``drift_window`` live
    errors set it. After every retrain decision the reference is reset to the champion's error
    on the latest holdout, so a lasting change (a calmer or wilder market) triggers once, not
    on every bar.
    """

    def __init__(self, policy: RetrainPolicy, reference: float | None = None):
        self.policy = policy
        self.reference = reference if M.is_finite_number(reference) and reference > 0 else None
        self.errors = LiveErrors(policy.drift_window)

    def add(self, pct_err: float) -> None:
        if not math.isfinite(pct_err):
            return
        self.errors.add(pct_err, pct_err, None)
        if self.reference is None and self.errors.n >= self.policy.drift_window:
            self.reference = self.errors.mape_pct

    @property
    def rolling(self) -> float:
        return self.errors.mape_pct

    @property
    def ratio(self) -> float | None:
        if self.reference is None or self.errors.n == 0:
            return None
        return self.rolling / self.reference

    def drifted(self) -> bool:
        f = self.policy.drift_factor
        return (f is not None and self.reference is not None
                and self.errors.n >= self.policy.drift_min_errors
                and self.rolling > f * self.reference)

    def rebaseline(self, reference: float | None) -> None:
        if M.is_finite_number(reference) and reference > 0:
            self.reference = float(reference)
        self.errors = LiveErrors(self.policy.drift_window)

    def summary(self) -> dict[str, Any]:
        return json_safe({"rolling_mape_pct": self.rolling if self.errors.n else None,
                       "reference_mape_pct": self.reference, "ratio": self.ratio,
                       "n": self.errors.n, "factor": self.policy.drift_factor})


# ---------------------------------------------------------------------------------------------
# Live error from the store (for the Predictions page and reports)

def score_frame(preds: pd.DataFrame) -> pd.DataFrame:
    """Stored predictions with the implied closes and the per-row close errors added:
    ``predicted_close``, ``actual_close`` (NaN until scored), ``abs_error``, ``pct_error``,
    ``hit`` (direction right; NaN when unscored or the price did not move)."""
    df = preds.copy()
    if df.empty:
        for c in ("predicted_close", "actual_close", "abs_error", "pct_error", "hit"):
            df[c] = pd.Series(dtype="float64")
        df["called"] = pd.Series(dtype="bool")
        return df
    predicted = df["predicted"].to_numpy(dtype="float64")
    actual = pd.to_numeric(df["actual"], errors="coerce").to_numpy(dtype="float64")
    base = df["base_close"].to_numpy(dtype="float64")
    cols = {c: np.empty(len(df)) for c in ("predicted_close", "actual_close", "abs_error",
                                           "pct_error", "hit")}
    for tgt in df["target"].unique():
        m = (df["target"] == tgt).to_numpy()
        errors = M.close_errors(tgt, predicted[m], actual[m], base[m])
        for c, values in cols.items():
            values[m] = getattr(errors, c)
    for c, values in cols.items():
        df[c] = values
    pred_close = cols["predicted_close"]
    df["called"] = pred_close != base  # it predicted a move (persistence never does)
    return df


def live_summary(scored: pd.DataFrame, by: str = "model_id") -> pd.DataFrame:
    """Live error per ``by`` value over the scored rows: n, MAE, RMSE, MAPE %, directional
    accuracy, and the persistence MAE on the same rows."""
    cols = [by, "predictions", "scored", "mae", "rmse", "mape_pct", "directional_accuracy",
            "persistence_mae"]
    if scored.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for key, g in scored.groupby(by, sort=False):
        s = M.live_error_summary(g["abs_error"], g["pct_error"], g["hit"], g["actual_close"],
                                 g["base_close"])
        if not g.loc[np.isfinite(g["abs_error"]), "called"].any():
            s["directional_accuracy"] = np.nan  # it never called a move: no accuracy
        rows.append({by: key, "predictions": len(g), **s})
    return pd.DataFrame(rows, columns=cols)


def rolling_live_errors(scored: pd.DataFrame, window: int = 50) -> pd.DataFrame:
    """Rolling MAE, RMSE, MAPE % and directional accuracy over the last ``window`` scored
    predictions, by ts (one series per model_id)."""
    out = []
    s = scored[np.isfinite(scored["abs_error"])].sort_values("ts")
    for model_id, g in s.groupby("model_id", sort=False):
        r = pd.DataFrame({"ts": g["ts"].to_numpy(), "model_id": model_id})
        a = g["abs_error"].reset_index(drop=True)
        minp = max(1, min(window, 5))
        r["mae"] = a.rolling(window, min_periods=minp).mean()
        r["rmse"] = np.sqrt((a ** 2).rolling(window, min_periods=minp).mean())
        r["mape_pct"] = (g["pct_error"].reset_index(drop=True)
                         .rolling(window, min_periods=minp).mean())
        da = g["hit"].reset_index(drop=True).rolling(window, min_periods=minp).mean()
        calls = (g["called"].reset_index(drop=True).astype("float64")
                 .rolling(window, min_periods=minp).sum())
        r["directional_accuracy"] = da.where(calls > 0)  # no call in the window: none
        out.append(r)
    if not out:
        return pd.DataFrame(columns=["ts", "model_id", "mae", "rmse", "mape_pct",
                                     "directional_accuracy"])
    return pd.concat(out, ignore_index=True)


def retrain_events(store: Store, limit: int = 200) -> list[dict[str, Any]]:
    return store.list_events(kind=RETRAIN_EVENT, limit=limit)
