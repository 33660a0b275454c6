"""Significance vs persistence (models/significance.py): the Diebold–Mariano statistic against
an independent loop implementation, Holm, the bootstrap interval, and the wording rule on
random walks (false wins stay at the level) and on an AR(1) control (every default model
detects it)."""
from __future__ import annotations

import math
import threading

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from models import significance as S
from models.lab import LabConfig, run_comparison
from models.zoo import MODEL_KEYS
from pipeline.sources.simulator import DEFAULT_SYMBOLS, MarketSimulator, SimulatorParams


def _loop_dm(e1, e2, h):
    """Textbook DM with Bartlett-weighted autocovariances, HLN-corrected, written as loops."""
    d = [a * a - b * b for a, b in zip(e1, e2)]
    n = len(d)
    mean = sum(d) / n
    lags = max(h - 1, int(math.floor(4 * (n / 100) ** (2 / 9))))
    gamma = []
    for k in range(lags + 1):
        acc = 0.0
        for t in range(k, n):
            acc += (d[t] - mean) * (d[t - k] - mean)
        gamma.append(acc / n)
    var = gamma[0]
    for k in range(1, lags + 1):
        var += 2 * (1 - k / (lags + 1)) * gamma[k]
    dm = mean / math.sqrt(var / n)
    dm *= math.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)
    return dm, 2 * (1 - stats.t.cdf(abs(dm), n - 1)), lags


@pytest.mark.parametrize("h", [1, 3])
def test_dm_statistic_equals_an_independent_loop_implementation(h):
    rng = np.random.default_rng(7)
    actual = rng.normal(size=250)
    model = 0.2 * actual + rng.normal(scale=0.9, size=250)
    base = np.zeros(250)
    e1, e2 = actual - model, actual - base
    want_stat, want_p, want_lags = _loop_dm(list(e1), list(e2), h)
    got = S.diebold_mariano(e1 ** 2, e2 ** 2, horizon=h)
    assert got.lags == want_lags == max(h - 1, 4)  # n = 250: floor(4 * 2.5^(2/9)) = 4
    assert got.stat == pytest.approx(want_stat, rel=1e-10)
    assert got.p_value == pytest.approx(want_p, rel=1e-8)
    via_compare = S.compare(actual, model, base, horizon=h)
    assert via_compare["dm_stat"] == pytest.approx(want_stat, rel=1e-10)


def test_rows_sharing_a_timestamp_are_averaged_first():
    rng = np.random.default_rng(1)
    ts = np.repeat(np.arange(100), 2)  # two symbols per bar time
    actual, model = rng.normal(size=200), rng.normal(size=200)
    got = S.compare(actual, model, np.zeros(200), groups=ts)
    lm = ((actual - model) ** 2).reshape(100, 2).mean(axis=1)
    lb = (actual ** 2).reshape(100, 2).mean(axis=1)
    assert got["n_times"] == 100
    assert got["dm_stat"] == pytest.approx(S.diebold_mariano(lm, lb).stat, rel=1e-12)


def test_holm_step_down():
    adjusted = S.holm([0.01, 0.04, np.nan, 0.03])
    # m = 3 (the NaN is no comparison): 0.01*3, max(0.03*2, 0.03), max(0.04*1, 0.06)
    assert np.allclose(adjusted[[0, 3, 1]], [0.03, 0.06, 0.06])
    assert np.isnan(adjusted[2])


def test_bootstrap_interval_is_seeded_and_covers_the_skill():
    rng = np.random.default_rng(3)
    lb = rng.exponential(size=400)
    lm = lb * 0.9 + rng.exponential(scale=0.05, size=400)
    lo, hi = S.block_bootstrap_skill(lm, lb, seed=5)
    assert (lo, hi) == S.block_bootstrap_skill(lm, lb, seed=5)
    skill = 1 - lm.sum() / lb.sum()
    assert lo < skill < hi and hi - lo < 0.2
    assert S.block_length(400) == 8  # ceil(400^(1/3))


def test_wording_rule():
    assert S.reading(0.01, -1.0) == S.BEATS
    assert S.reading(0.01, 1.0) == S.WORSE
    assert S.reading(0.2, -1.0) == S.NO_EVIDENCE
    assert S.reading(float("nan"), -1.0) == S.NO_EVIDENCE


def _bars(seed: int, phi: float, n: int) -> pd.DataFrame:
    sim = MarketSimulator([DEFAULT_SYMBOLS[0]], "1m", seed=seed, bars=n,
                          params=SimulatorParams(phi=phi))
    return pd.DataFrame([b.to_dict() for b in sim.bars(threading.Event())])


def test_random_walk_false_wins_stay_at_the_level():
    """20 seeded random-walk paths, linear regression: "beats persistence" at most as often as
    the level allows (the binomial 99 % quantile of 20 draws at 5 %: 3 of 20)."""
    n_paths = 20
    wins = 0
    for seed in range(n_paths):
        result = run_comparison(_bars(seed, 0.0, 800), LabConfig(
            interval="1m", seed=seed, models=[("linear", {})], importance_repeats=1,
            importance_rows=100))
        wins += result.table.loc["Linear regression", "reading"] == S.BEATS
    allowed = stats.binom.ppf(0.99, n_paths, S.LEVEL)
    assert wins <= allowed, f"{wins} of {n_paths} random walks 'beat' persistence"


@pytest.mark.slow
def test_random_walk_false_wins_for_every_default_model():
    n_paths, wins = 20, 0
    for seed in range(n_paths):
        table = run_comparison(_bars(seed, 0.0, 1500), LabConfig(
            interval="1m", seed=seed, importance_repeats=1, importance_rows=100)).table
        wins += int((table["reading"] == S.BEATS).sum())
    comparisons = n_paths * (len(MODEL_KEYS) + 1)  # the moving average too
    assert wins <= stats.binom.ppf(0.99, comparisons, S.LEVEL)


@pytest.mark.parametrize("split", ["chronological", "walk_forward"])
def test_every_default_model_detects_an_ar1_control(split):
    result = run_comparison(_bars(1, 0.3, 2500), LabConfig(
        interval="1m", split=split, seed=1, importance_repeats=1, importance_rows=100))
    table = result.table
    models = table[table["kind"] == "model"]
    assert len(models) == len(MODEL_KEYS)
    assert (models["reading"] == S.BEATS).all(), models[["skill", "p_holm", "reading"]]
    assert (models["skill_lo"] > 0).all()
    assert result.summary["significance"]["comparisons"] == len(MODEL_KEYS) + 1
    assert any("Holm-corrected over 5 comparisons" in g for g in result.guidance)
    if split == "walk_forward":
        folds = result.fold_table
        assert folds["reading"].notna().sum() == 5 * (len(MODEL_KEYS) + 1)
