"""The lab's metrics (scikit-learn underneath) and the one live-error implementation."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from models import metrics as M
from models.live.errors import live_summary, score_frame
from models.metrics import close_error


def test_regression_metrics_match_their_definitions():
    rng = np.random.default_rng(3)
    y = rng.normal(100, 2, 500)
    p = y + rng.normal(0, 0.5, 500)
    assert M.mse(y, p) == pytest.approx(np.mean((y - p) ** 2))
    assert M.rmse(y, p) == pytest.approx(math.sqrt(np.mean((y - p) ** 2)))
    assert M.mae(y, p) == pytest.approx(np.mean(np.abs(y - p)))
    assert M.r2(y, p) == pytest.approx(1 - np.sum((y - p) ** 2) / np.sum((y - y.mean()) ** 2))
    assert M.mape_pct(y, p) == pytest.approx(np.mean(np.abs((y - p) / y)) * 100)


def test_degenerate_cases_are_nan_not_sklearn_conventions():
    assert math.isnan(M.r2([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))  # sklearn says 0.0 here
    assert math.isnan(M.mape_pct([0.0, 0.0], [1.0, 2.0]))  # sklearn divides by epsilon
    assert M.mape_pct([0.0, 10.0], [5.0, 11.0]) == pytest.approx(10.0)  # zero rows left out
    with pytest.raises(ValueError):
        M.mse([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        M.mae([], [])


def test_persistence_forecast_per_target():
    base = np.array([10.0, 11.0])
    assert M.persistence_forecast("next_close", base).tolist() == [10.0, 11.0]
    assert M.persistence_forecast("next_return", base).tolist() == [0.0, 0.0]


def test_close_errors_agree_with_the_scorer_and_the_predictions_page():
    """One formula: the scorer's per-prediction close_error and the page's score_frame both
    give what close_errors gives."""
    rows = pd.DataFrame({
        "model_id": ["a", "a", "a", "b", "b"],
        "target": ["next_close", "next_close", "next_close", "next_return", "next_return"],
        "predicted": [101.0, 99.0, 100.5, 0.01, -0.02],
        "actual": [102.0, 100.0, np.nan, 0.0, 0.03],
        "base_close": [100.0, 100.0, 100.0, 50.0, 50.0],
    })
    framed = score_frame(rows)
    for tgt, g in rows.groupby("target"):
        e = M.close_errors(tgt, g["predicted"], g["actual"], g["base_close"])
        np.testing.assert_allclose(e.abs_error, framed.loc[g.index, "abs_error"])
        np.testing.assert_allclose(e.pct_error, framed.loc[g.index, "pct_error"])
        np.testing.assert_array_equal(np.isnan(e.hit), framed.loc[g.index, "hit"].isna())
        for i, r in enumerate(g.itertuples()):
            if np.isnan(r.actual):
                continue
            abs_err, pct, hit = close_error(r.target, r.predicted, r.actual, r.base_close)
            assert e.abs_error[i] == pytest.approx(abs_err)
            assert e.pct_error[i] == pytest.approx(pct)
            assert (None if np.isnan(e.hit[i]) else bool(e.hit[i])) == hit

    summary = live_summary(framed).set_index("model_id")
    for model_id, g in framed.groupby("model_id"):
        s = M.live_error_summary(g["abs_error"], g["pct_error"], g["hit"], g["actual_close"],
                                 g["base_close"])
        assert s["scored"] == summary.loc[model_id, "scored"]
        for key in ("mae", "rmse", "mape_pct", "directional_accuracy", "persistence_mae"):
            assert s[key] == pytest.approx(summary.loc[model_id, key], nan_ok=True), key


def test_live_error_summary_with_nothing_scored():
    s = M.live_error_summary([np.nan], [np.nan], [np.nan], [np.nan], [100.0])
    assert s["scored"] == 0 and math.isnan(s["mae"]) and math.isnan(s["persistence_mae"])
