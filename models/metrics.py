"""How the lab scores a model on its test rows.

On the target's own scale (a close for price targets, a return for ``next_return``):

- ``r2``: 1 - SSE / SST around the test mean. On price levels it is near 1 for every model,
  persistence included, because the price barely moves between bars; it says little.
- ``mse``, ``rmse``, ``mae``: mean squared error, its square root, mean absolute error.
- ``skill``: skill vs persistence, ``1 - MSE / MSE_persistence`` on the same rows. Above 0
  means better than "no change"; on a random walk nothing is reliably above 0.

On the implied close price (so every target is comparable):

- ``mape_pct``: mean absolute percentage error of the predicted close, in %. A return target's
  own percentage error would be meaningless (returns cross zero), so it is not used.
- ``directional_accuracy``: among test rows where the price really moved from the base close,
  the share where the predicted close moved the same way (a predicted "no change" counts as a
  miss); NaN for a model that never predicts a move, such as persistence.

Timing (seconds): ``fit_time_s`` and ``predict_time_s`` summed over folds.

The regression errors are scikit-learn's (:mod:`sklearn.metrics`); what is ours is the
handling of the degenerate cases above (no variance, zero closes, no move).

The live error of the scorer and the Predictions page is here too (:func:`close_errors`, its
one-prediction form :func:`close_error`, :func:`live_error_summary`), with the persistence
forecast every model is compared to (:func:`persistence_forecast`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn import metrics as skm

from models.targets import get_target, to_close, to_close_value

#: Table columns in display order, with whether higher is better (None: not ranked).
METRIC_COLUMNS: dict[str, bool | None] = {
    "r2": True,
    "mse": False,
    "rmse": False,
    "mae": False,
    "mape_pct": False,
    "directional_accuracy": True,
    "skill": True,
    "fit_time_s": False,
    "predict_time_s": False,
}

METRIC_LABELS: dict[str, str] = {
    "r2": "R²",
    "mse": "MSE",
    "rmse": "RMSE",
    "mae": "MAE",
    "mape_pct": "MAPE %",
    "directional_accuracy": "Direction acc.",
    "skill": "Skill vs persistence",
    "fit_time_s": "Fit s",
    "predict_time_s": "Predict s",
}


def r2(y_true, y_pred) -> float:
    y_true, y_pred = _arrays(y_true, y_pred)
    if float(np.ptp(y_true)) == 0.0:  # R² is undefined without variance (sklearn would say 0 or 1)
        return float("nan")
    return float(skm.r2_score(y_true, y_pred))


def mse(y_true, y_pred) -> float:
    return float(skm.mean_squared_error(*_arrays(y_true, y_pred)))


def rmse(y_true, y_pred) -> float:
    return float(skm.root_mean_squared_error(*_arrays(y_true, y_pred)))


def mae(y_true, y_pred) -> float:
    return float(skm.mean_absolute_error(*_arrays(y_true, y_pred)))


def mape_pct(actual_close, predicted_close) -> float:
    actual_close, predicted_close = _arrays(actual_close, predicted_close)
    ok = actual_close != 0.0  # sklearn would divide by machine epsilon instead
    if not ok.any():
        return float("nan")
    return float(skm.mean_absolute_percentage_error(actual_close[ok], predicted_close[ok]) * 100)


def directional_accuracy(actual_close, predicted_close, base_close) -> float:
    actual_close, predicted_close = _arrays(actual_close, predicted_close)
    base_close = np.asarray(base_close, dtype="float64")
    actual_move = np.sign(actual_close - base_close)
    predicted_move = np.sign(predicted_close - base_close)
    moved = actual_move != 0
    if not moved.any() or not (predicted_move != 0).any():
        return float("nan")
    return float(np.mean(predicted_move[moved] == actual_move[moved]))


def skill(mse_model: float, mse_persistence: float) -> float:
    if not mse_persistence > 0:
        return float("nan")
    return 1.0 - mse_model / mse_persistence


def score(y_true, y_pred, actual_close, predicted_close, base_close,
          mse_persistence: float | None = None) -> dict[str, float]:
    """All accuracy metrics for one model (timings are added by the lab)."""
    m = mse(y_true, y_pred)
    return {
        "r2": r2(y_true, y_pred),
        "mse": m,
        "rmse": float(np.sqrt(m)),
        "mae": mae(y_true, y_pred),
        "mape_pct": mape_pct(actual_close, predicted_close),
        "directional_accuracy": directional_accuracy(actual_close, predicted_close, base_close),
        "skill": skill(m, mse_persistence) if mse_persistence is not None else float("nan"),
    }


# ---------------------------------------------------------------------------------------------
# The persistence forecast and the live error: one implementation for the lab, the retrain
# decision, the scorer and the Predictions page.

def persistence_forecast(target: str, base_close) -> np.ndarray:
    """The "no change" forecast of ``target`` for rows whose last known close is
    ``base_close``: that close for price targets, a return of 0 for return targets."""
    base = np.asarray(base_close, dtype="float64")
    return np.zeros_like(base) if get_target(target).is_return else base.copy()


@dataclass(frozen=True)
class CloseErrors:
    """Per-row live error of predictions of one target, on the implied close (price units).

    ``hit`` is 1.0 where the predicted close moved the way the actual one did, 0.0 where not,
    NaN where the row is not scored yet (``actual`` NaN) or the price did not move.
    """

    predicted_close: np.ndarray
    actual_close: np.ndarray
    abs_error: np.ndarray
    pct_error: np.ndarray
    hit: np.ndarray


def close_errors(target: str, predicted, actual, base_close) -> CloseErrors:
    """Live error of predictions of ``target`` (``actual`` is the target's realised value, NaN
    while unknown): the implied closes, absolute and percentage close error, direction hit."""
    base = np.asarray(base_close, dtype="float64")
    pred_close = np.asarray(to_close(target, np.asarray(predicted, dtype="float64"), base),
                            dtype="float64")
    actual_close = np.asarray(to_close(target, np.asarray(actual, dtype="float64"), base),
                              dtype="float64")
    abs_error = np.abs(pred_close - actual_close)
    with np.errstate(divide="ignore", invalid="ignore"):
        pct_error = np.where(actual_close != 0, 100.0 * abs_error / np.abs(actual_close), np.nan)
    moved = np.sign(actual_close - base)
    hit = (np.sign(pred_close - base) == moved).astype("float64")
    hit[~np.isfinite(actual_close) | (moved == 0)] = np.nan
    return CloseErrors(pred_close, actual_close, abs_error, pct_error, hit)


def is_finite_number(x) -> bool:
    """A real, finite int or float (not a bool, not None, not NaN or infinite)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def close_error(target: str, predicted: float, actual: float,
                base_close: float) -> tuple[float, float, bool | None]:
    """:func:`close_errors` for one scored prediction, on plain floats (the scorer settles
    every prediction with it): (absolute error of the implied close, its percentage of the
    actual close, direction hit); the hit is None when the price did not move."""
    pred_close = to_close_value(target, predicted, base_close)
    actual_close = to_close_value(target, actual, base_close)
    abs_err = abs(pred_close - actual_close)
    pct = 100.0 * abs_err / abs(actual_close) if actual_close else float("nan")
    move, pred_move = actual_close - base_close, pred_close - base_close
    # The signs agree (plain floats: this runs for every settled prediction); a NaN never does.
    hit = None if move == 0 else ((pred_move > 0 and move > 0) or (pred_move < 0 and move < 0))
    return abs_err, pct, hit


def calls_a_move(target: str, predicted: float, base_close: float) -> bool:
    """Whether the prediction's implied close differs from the base close."""
    return to_close_value(target, predicted, base_close) != base_close


def live_error_summary(abs_error, pct_error, hit, actual_close, base_close) -> dict[str, float]:
    """MAE, RMSE (price units), MAPE %, directional accuracy and the persistence MAE over the
    scored rows (finite ``abs_error``) of :func:`close_errors` output; NaN where no row is
    scored."""
    abs_error = np.asarray(abs_error, dtype="float64")
    scored = np.isfinite(abs_error)
    n = int(scored.sum())
    if n == 0:
        nan = float("nan")
        return {"scored": 0, "mae": nan, "rmse": nan, "mape_pct": nan,
                "directional_accuracy": nan, "persistence_mae": nan}
    err = abs_error[scored]
    hits = np.asarray(hit, dtype="float64")[scored]
    actual = np.asarray(actual_close, dtype="float64")[scored]
    base = np.asarray(base_close, dtype="float64")[scored]
    return {
        "scored": n,
        "mae": float(err.mean()),
        "rmse": float(np.sqrt((err ** 2).mean())),
        "mape_pct": float(np.nanmean(np.asarray(pct_error, dtype="float64")[scored]))
        if np.isfinite(np.asarray(pct_error, dtype="float64")[scored]).any() else float("nan"),
        "directional_accuracy": float(np.nanmean(hits)) if np.isfinite(hits).any()
        else float("nan"),
        "persistence_mae": float(np.abs(actual - base).mean()),
    }


def _arrays(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype="float64")
    b = np.asarray(b, dtype="float64")
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        raise ValueError("no rows to score")
    return a, b
