"""Features and targets: reference values, causality, and batch == rolling-window (no skew)."""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

from models.features import (DEFAULT_FEATURES, FEATURE_GROUPS, all_features, compute_features,
                             expand_features, max_lookback)
from models.targets import (TARGETS, effective_horizon, from_close, from_close_value, make_target,
                            reference_close, target_close, to_close, to_close_value)
from pipeline.sources.simulator import MarketSimulator, SimulatorParams

EXTRA = ["ema_7", "sma_3", "rsi_5", "ret_2", "logret_3", "close_lag_7", "ret_lag_4",
         "volatility_5", "vol_z_5", "bb_width_10", "close_to_ema_5", "close_to_sma_10"]


def sim_bars(n: int, symbols=("ACME",), seed: int = 11, phi: float = 0.08) -> pd.DataFrame:
    sim = MarketSimulator(list(symbols), "1m", seed, bars=n, params=SimulatorParams(phi=phi))
    return pd.DataFrame([b.to_dict() for b in sim.bars(threading.Event())])


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return sim_bars(600)


def ema_ref(x: pd.Series, span: int) -> pd.Series:
    window = 3 * span
    w = (1 - 2 / (span + 1)) ** np.arange(window)
    w = w / w.sum()
    return x.rolling(window).apply(lambda a: float(np.dot(a[::-1], w)), raw=True)


def reference(bars: pd.DataFrame) -> dict[str, pd.Series]:
    c, v = bars["close"], bars["volume"]
    lr = np.log(c).diff()
    diff = c.diff()
    gain = diff.clip(lower=0).rolling(14).mean()
    loss = (-diff).clip(lower=0).rolling(14).mean()
    macd = ema_ref(c, 12) - ema_ref(c, 26)
    signal = ema_ref(macd, 9)
    dt = pd.to_datetime(bars["ts"], unit="ms", utc=True)
    minute = dt.dt.hour * 60 + dt.dt.minute
    dow = dt.dt.dayofweek
    return {
        "open": bars["open"], "close": c, "volume": v,
        "ret_1": c.pct_change(1, fill_method=None), "ret_5": c.pct_change(5, fill_method=None),
        "ret_20": c.pct_change(20, fill_method=None),
        "logret_1": lr, "logret_5": np.log(c / c.shift(5)),
        "sma_5": c.rolling(5).mean(), "sma_50": c.rolling(50).mean(),
        "ema_10": ema_ref(c, 10), "ema_50": ema_ref(c, 50),
        "close_to_sma_20": c / c.rolling(20).mean() - 1, "close_to_ema_20": c / ema_ref(c, 20) - 1,
        "macd": macd, "macd_signal": signal, "macd_hist": macd - signal,
        "rsi_14": 100 * gain / (gain + loss),
        "bb_width_20": 4 * c.rolling(20).std(ddof=0) / c.rolling(20).mean(),
        "volatility_10": lr.rolling(10).std(), "volatility_20": lr.rolling(20).std(),
        "hl_range": (bars["high"] - bars["low"]) / c,
        "vol_z_20": (v - v.rolling(20).mean()) / v.rolling(20).std(ddof=0),
        "volume_change": np.log((v + 1) / (v.shift(1) + 1)),
        "close_lag_1": c.shift(1), "close_lag_3": c.shift(3),
        "ret_lag_1": c.pct_change(fill_method=None).shift(1),
        "ret_lag_3": c.pct_change(fill_method=None).shift(3),
        "minute_sin": np.sin(2 * np.pi * minute / 1440), "minute_cos": np.cos(2 * np.pi * minute / 1440),
        "dow_sin": np.sin(2 * np.pi * dow / 7), "dow_cos": np.cos(2 * np.pi * dow / 7),
    }


def test_features_match_pandas_reference(bars):
    ref = reference(bars)
    got = compute_features(bars, list(ref))
    assert list(got.columns) == list(ref) and got.index.equals(bars.index)
    for name, expected in ref.items():
        e, g = expected.to_numpy(dtype=float), got[name].to_numpy()
        assert np.array_equal(np.isnan(e), np.isnan(g)), f"{name}: warm-up NaNs differ"
        np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=name)


def test_every_grouped_feature_is_known_and_finite_after_warmup(bars):
    names = all_features()
    f = compute_features(bars, names)
    tail = f.iloc[max_lookback(names):]
    assert np.isfinite(tail.to_numpy()).all()
    assert set(DEFAULT_FEATURES) <= set(names)
    assert 8 <= len(DEFAULT_FEATURES) <= 15


@pytest.mark.parametrize("cut", [200, 451])
def test_features_are_causal(bars, cut):
    """Changing bars after ``cut`` leaves every feature row up to ``cut`` untouched."""
    names = all_features() + EXTRA
    before = compute_features(bars, names)
    changed = bars.copy()
    rng = np.random.default_rng(0)
    k = len(bars) - cut - 1
    factor = np.exp(rng.normal(0, 0.05, k))
    for col in ("open", "high", "low", "close"):
        changed.loc[cut + 1:, col] = changed.loc[cut + 1:, col].to_numpy() * factor
    changed.loc[cut + 1:, "volume"] = changed.loc[cut + 1:, "volume"].to_numpy() * 3 + 17
    after = compute_features(changed, names)
    pd.testing.assert_frame_equal(before.iloc[: cut + 1], after.iloc[: cut + 1], check_exact=True)
    assert not before.iloc[cut + 1:].equals(after.iloc[cut + 1:])


@pytest.mark.parametrize("name", all_features() + EXTRA)
def test_rolling_window_of_max_lookback_gives_identical_rows(bars, name):
    """The scorer's computation (last max_lookback bars) equals the batch one, bit for bit."""
    full = compute_features(bars, [name])[name].to_numpy()
    lookback = max_lookback([name])
    for end in (len(bars), len(bars) - 1, 400, 170):
        window = bars.iloc[end - lookback: end]
        value = compute_features(window, [name])[name].to_numpy()[-1]
        assert value == full[end - 1], f"{name} at row {end - 1}: {value!r} != {full[end - 1]!r}"
        if lookback > 1:  # the lookback is tight: one bar fewer cannot compute the row
            short = compute_features(bars.iloc[end - lookback + 1: end], [name])[name]
            assert np.isnan(short.to_numpy()[-1])


def test_rolling_window_for_a_feature_set(bars):
    names = DEFAULT_FEATURES + ["macd_hist", "ema_50", "dow_cos"]
    full = compute_features(bars, names)
    lookback = max_lookback(names)
    assert lookback == max(max_lookback([n]) for n in names) == 150  # ema_50: 3 * 50
    for end in range(len(bars) - 30, len(bars) + 1, 7):
        last = compute_features(bars.iloc[end - lookback: end], names).iloc[-1]
        assert np.array_equal(last.to_numpy(), full.iloc[end - 1].to_numpy())


def test_multiple_symbols_are_computed_separately():
    both = sim_bars(300, symbols=("ACME", "GLOBX"))  # interleaved by ts
    shuffled = both.sample(frac=1.0, random_state=1)
    names = ["ret_1", "sma_5", "rsi_14", "close_lag_2"]
    got = compute_features(shuffled, names)
    for sym in ("ACME", "GLOBX"):
        one = both[both["symbol"] == sym]
        expected = compute_features(one.reset_index(drop=True), names)
        pd.testing.assert_frame_equal(got.loc[one.index].reset_index(drop=True), expected,
                                      check_exact=True)


def test_expand_and_validate():
    assert expand_features(["default"]) == DEFAULT_FEATURES
    assert expand_features(["rsi", "close", "rsi_14"]) == ["rsi_14", "close"]
    assert expand_features(["macd"]) == FEATURE_GROUPS["macd"]
    for bad in ("nope", "sma_0", "sma_x", "rsi_014"):
        with pytest.raises(ValueError, match="unknown feature"):
            expand_features([bad])
    assert compute_features(pd.DataFrame(columns=["ts", "open", "high", "low", "close", "volume"]),
                            ["close"]).empty


# ---- targets ---------------------------------------------------------------------------------

def test_targets_align_to_the_bar_that_sees_the_features():
    both = sim_bars(50, symbols=("ACME", "GLOBX"))
    for sym, one in both.groupby("symbol"):
        c = one["close"]
        np.testing.assert_array_equal(make_target(both, "next_close").loc[one.index], c.shift(-1))
        np.testing.assert_array_equal(make_target(both, "close_ahead", 3).loc[one.index],
                                      c.shift(-3))
        np.testing.assert_allclose(make_target(both, "next_return").loc[one.index],
                                   c.shift(-1) / c - 1)
        np.testing.assert_array_equal(
            make_target(both, "same_bar_close_from_volume").loc[one.index], c)
        np.testing.assert_array_equal(reference_close(both, "same_bar_close_from_volume")
                                      .loc[one.index], c.shift(1))
        np.testing.assert_array_equal(target_close(both, "next_return").loc[one.index],
                                      c.shift(-1))
    assert effective_horizon("next_close", 9) == 1
    assert effective_horizon("close_ahead", 9) == 9
    assert effective_horizon("same_bar_close_from_volume") == 0
    assert not TARGETS["same_bar_close_from_volume"].is_forecast
    with pytest.raises(ValueError):
        make_target(both, "tomorrow")


def test_to_close_converts_every_target():
    base = np.array([100.0, 50.0])
    np.testing.assert_allclose(to_close("next_return", [0.01, -0.02], base), [101.0, 49.0])
    np.testing.assert_array_equal(to_close("next_close", [101.0, 49.0], base), [101.0, 49.0])
    np.testing.assert_array_equal(to_close("close_ahead", [7.0, 8.0], base), [7.0, 8.0])
    np.testing.assert_allclose(from_close("next_return", to_close("next_return", [0.3, 0.1], base),
                                          base), [0.3, 0.1])


@pytest.mark.parametrize("target", list(TARGETS))
def test_scalar_close_conversions_equal_the_array_ones(target):
    """The live scorer's plain-float conversions give the array functions' values, bit for bit
    (NaN where they give NaN), including a zero base close and non-finite inputs."""
    rng = np.random.default_rng(3)
    values = np.concatenate([rng.normal(0, 0.02, 200), rng.normal(100, 30, 200),
                             [0.0, -0.0, np.nan, np.inf, -np.inf, 1e308, -1.0]])
    bases = rng.uniform(1, 500, len(values))
    bases[-7:] = [0.0, 100.0, 100.0, 0.0, 50.0, 1e10, 0.0]
    with np.errstate(all="ignore"):
        want_to = to_close(target, values, bases)
        want_from = from_close(target, values, bases)
    for v, b, wt, wf in zip(values.tolist(), bases.tolist(), want_to, want_from):
        got_to, got_from = to_close_value(target, v, b), from_close_value(target, v, b)
        assert type(got_to) is float and type(got_from) is float
        for got, want in ((got_to, wt), (got_from, wf)):
            assert (np.isnan(got) and np.isnan(want)) or got == want, (target, v, b, got, want)
