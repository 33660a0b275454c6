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
"""
from __future__ import annotations

import numpy as np

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
    sst = float(np.sum((y_true - y_true.mean()) ** 2))
    if sst == 0.0:
        return float("nan")
    return 1.0 - float(np.sum((y_true - y_pred) ** 2)) / sst


def mse(y_true, y_pred) -> float:
    y_true, y_pred = _arrays(y_true, y_pred)
    return float(np.mean((y_true - y_pred) ** 2))


def rmse(y_true, y_pred) -> float:
    return float(np.sqrt(mse(y_true, y_pred)))


def mae(y_true, y_pred) -> float:
    y_true, y_pred = _arrays(y_true, y_pred)
    return float(np.mean(np.abs(y_true - y_pred)))


def mape_pct(actual_close, predicted_close) -> float:
    actual_close, predicted_close = _arrays(actual_close, predicted_close)
    ok = actual_close != 0.0
    if not ok.any():
        return float("nan")
    return float(np.mean(np.abs((actual_close[ok] - predicted_close[ok]) / actual_close[ok])) * 100)


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


def _arrays(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype="float64")
    b = np.asarray(b, dtype="float64")
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        raise ValueError("no rows to score")
    return a, b
