"""Streaming features equal the batch features (the definition) to 1e-12, bar by bar and after
a restart that rebuilds the state from the store."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.features import all_features, compute_features, max_lookback
from models.streaming import StreamingFeatures
from pipeline.schema import Bar

# Every listed feature plus other windows of each parametrised family.
FEATURES = [*all_features(), "sma_1", "ema_1", "ema_3", "ret_2", "logret_3", "rsi_2", "rsi_30",
            "bb_width_2", "volatility_2", "vol_z_2", "vol_z_7", "close_lag_10", "ret_lag_7",
            "close_to_sma_7", "close_to_ema_7"]


def random_bars(n: int, seed: int, flat_volume_at: int | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.002, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.002, n))
    volume = rng.lognormal(10, 0.5, n).round()
    if flat_volume_at is not None:  # a constant stretch: the variance is exactly zero there
        volume[flat_volume_at:flat_volume_at + 60] = 1234.0
        volume[flat_volume_at + 100:flat_volume_at + 150] = 0.0
    steps = np.where(rng.random(n) < 0.01, 17 * 60_000, 60_000)  # a few gaps
    ts = 1_700_000_000_000 + np.cumsum(steps)
    return pd.DataFrame({"ts": ts, "open": open_, "high": high, "low": low, "close": close,
                         "volume": volume})


def stream(frame: pd.DataFrame, features: list[str], state: StreamingFeatures | None = None
           ) -> np.ndarray:
    state = state or StreamingFeatures(features)
    rows = [state.update(r.ts, r.open, r.high, r.low, r.close, r.volume)
            for r in frame.itertuples(index=False)]
    return np.vstack(rows)


def assert_same(got: np.ndarray, want: np.ndarray, names: list[str]) -> None:
    for j, name in enumerate(names):
        g, w = got[:, j], want[:, j]
        assert (np.isnan(g) == np.isnan(w)).all(), f"{name}: warm-up differs"
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12, equal_nan=True,
                                   err_msg=name)


@pytest.mark.parametrize("seed", [0, 1])
def test_every_streaming_feature_equals_batch_on_a_long_series(seed):
    frame = random_bars(20_000, seed, flat_volume_at=5_000)
    want = compute_features(frame, FEATURES).to_numpy()
    got = stream(frame, FEATURES)
    assert_same(got, want, FEATURES)
    lookback = max_lookback(FEATURES)
    assert not np.isnan(got[lookback - 1:]).any()  # warm-up ends exactly at the lookback


def test_restart_rebuilds_state_from_the_store(sqlite_store):
    frame = random_bars(3_000, 2)
    want = compute_features(frame, FEATURES).to_numpy()
    sqlite_store.upsert_bars([Bar("ACME", "1m", int(r.ts), r.open, r.high, r.low, r.close,
                                  r.volume, "test") for r in frame.itertuples(index=False)])
    k = 1_800
    stored = sqlite_store.query_bars("ACME", "1m", end_ms=int(frame["ts"].iloc[k]),
                                     limit=max_lookback(FEATURES))
    restarted = StreamingFeatures(FEATURES).warm(stored.itertuples(index=False))
    assert restarted.last_ts == int(frame["ts"].iloc[k - 1])
    got = stream(frame.iloc[k:], FEATURES, restarted)
    assert_same(got, want[k:], FEATURES)


def test_unknown_feature_is_refused():
    with pytest.raises(ValueError, match="unknown feature"):
        StreamingFeatures(["close", "nope_3"])
