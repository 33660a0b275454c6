"""Streaming features equal the batch features (the definition) to 1e-12: one series bar by
bar, many series updated together in irregular layers (as the scorer polls them), and after a
restart that rebuilds the state from the store."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.features import (FEATURE_GROUPS, STREAM_GROUPS, compute_features, every_spec_feature,
                             max_lookback)
from models.features.specs import SPECS, check_groups, fixed
from models.streaming import FeatureBank, FeatureSet, StreamingFeatures, has_streaming_form
from pipeline.contracts.schema import Bar

# Every feature spec (models/features/specs.py): the grouped names plus each parametrised
# family's smallest window and examples. A new spec is in this list without being named here.
FEATURES = every_spec_feature()


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


def test_one_series_bar_by_bar_equals_batch():
    frame = random_bars(2_500, 0, flat_volume_at=1_000)
    want = compute_features(frame, FEATURES).to_numpy()
    got = stream(frame, FEATURES)
    assert_same(got, want, FEATURES)
    lookback = max_lookback(FEATURES)
    assert not np.isnan(got[lookback - 1:]).any()  # warm-up ends exactly at the lookback


@pytest.mark.parametrize("seed", [0, 1])
def test_many_series_in_irregular_layers_equal_batch(seed):
    """Series of different lengths, each poll holding 0, 1 or several bars of a series, in a
    shuffled slot order; slots added while others are running (the bank grows)."""
    rng = np.random.default_rng(100 + seed)
    n_series = 12
    frames = [random_bars(int(rng.integers(1_500, 3_000)), 10 * seed + i,
                          flat_volume_at=500 if i % 3 == 0 else None) for i in range(n_series)]
    bank = FeatureBank(FEATURES, capacity=2)
    slots: dict[int, int] = {}
    pos = [0] * n_series
    got = [np.full((len(f), len(FEATURES)), -1.0) for f in frames]
    step = 0
    while any(p < len(f) for p, f in zip(pos, frames)):
        step += 1
        ready = [i for i in range(n_series) if pos[i] < len(frames[i])
                 and (i in slots or step > 40 * i)]  # series join over time
        for i in ready:
            if i not in slots:
                slots[i] = bank.add_slot()
        per_poll = {i: int(rng.choice([0, 1, 1, 1, 2, 3])) for i in ready}
        for k in range(max(per_poll.values(), default=0)):  # layer k: the k-th bar of each
            layer = [i for i in ready if per_poll[i] > k and pos[i] < len(frames[i])]
            rng.shuffle(layer)
            if not layer:
                continue
            rows = [frames[i].iloc[pos[i]] for i in layer]
            out = bank.update([slots[i] for i in layer], [r.ts for r in rows],
                              [r.open for r in rows], [r.high for r in rows],
                              [r.low for r in rows], [r.close for r in rows],
                              [r.volume for r in rows])
            for j, i in enumerate(layer):
                got[i][pos[i]] = out[j]
                pos[i] += 1
    assert bank.size == n_series and bank.capacity >= n_series
    for i, frame in enumerate(frames):
        assert_same(got[i], compute_features(frame, FEATURES).to_numpy(), FEATURES)


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
    got = stream(frame.iloc[k:k + 600], FEATURES, restarted)
    assert_same(got, want[k:k + 600], FEATURES)


def test_bank_warm_rebuilds_many_series_at_once_and_a_reset_slot_starts_over():
    frames = [random_bars(700, 30 + i) for i in range(4)]
    lookback = max_lookback(FEATURES)
    bank = FeatureBank(FEATURES)
    slots = [bank.add_slot() for _ in frames]
    k = [400, 450, 500, 650]
    bank.warm({s: list(f.iloc[k[i] - lookback:k[i]].itertuples(index=False))
               for i, (s, f) in enumerate(zip(slots, frames))})
    assert [int(bank.last_ts[s]) for s in slots] == [int(f["ts"].iloc[k[i] - 1])
                                                    for i, f in enumerate(frames)]
    for i, (s, f) in enumerate(zip(slots, frames)):
        want = compute_features(f, FEATURES).to_numpy()
        r = f.iloc[k[i]]
        got = bank.update([s], [r.ts], [r.open], [r.high], [r.low], [r.close], [r.volume])
        assert_same(got, want[k[i]:k[i] + 1], FEATURES)
    bank.reset_slot(slots[0])
    r = frames[0].iloc[0]
    again = bank.update([slots[0]], [r.ts], [r.open], [r.high], [r.low], [r.close],
                        [r.volume])
    assert_same(again, compute_features(frames[0], FEATURES).to_numpy()[:1], FEATURES)


def test_feature_set_places_each_models_columns():
    fs = FeatureSet(["close", "ret_1", "rsi_14"])
    assert fs.columns(["rsi_14", "close"]).tolist() == [2, 0]
    assert [fs.new_slot(), fs.new_slot()] == [0, 1]


def test_unknown_and_news_features_are_refused():
    with pytest.raises(ValueError, match="unknown feature"):
        StreamingFeatures(["close", "nope_3"])
    news = FEATURE_GROUPS["sentiment"]
    assert news and not has_streaming_form(news[0]) and has_streaming_form("rsi_14")
    with pytest.raises(ValueError, match="news"):
        FeatureBank(["close", news[0]])


def test_every_spec_is_tested_and_every_family_at_its_smallest_window():
    keys = {n for n in FEATURES}
    for spec in SPECS.values():
        assert spec.name(spec.min_param if spec.family else 0) in keys
    assert {"sma_1", "ema_1", "rsi_2", "bb_width_2", "vol_z_7", "ret_lag_7"} <= keys


def test_a_spec_in_no_group_is_refused_for_lab_and_scorer_alike():
    groups = {g: m for g, m in FEATURE_GROUPS.items() if g not in STREAM_GROUPS}
    fixed("orphan_test_feature", 1, lambda s, _: s.close, lambda g, _: g.close())
    try:
        with pytest.raises(ValueError, match="orphan_test_feature.*in no group"):
            check_groups(groups, lambda name: False)
    finally:
        del SPECS["orphan_test_feature"]
    with pytest.raises(ValueError, match="has no FeatureSpec"):
        check_groups({**groups, "extra": ["not_a_feature"]}, lambda name: False)


def test_a_new_spec_is_one_place_for_the_lab_and_the_scorer():
    """A feature added as one spec (and its name in a group, same file) is computed by the
    batch (lab) and the streaming (scorer) forms alike, with no other file touched."""
    def ratio(o, c):
        return o / c

    fixed("open_to_close_test", 1, lambda s, _: ratio(s.open, s.close),
          lambda g, _: g.fn("open_to_close_test", ratio, g.input("open"), g.close()))
    FEATURE_GROUPS["range"].append("open_to_close_test")
    try:
        check_groups({g: m for g, m in FEATURE_GROUPS.items() if g not in STREAM_GROUPS},
                     lambda name: False)
        assert "open_to_close_test" in every_spec_feature()
        names = ["open_to_close_test", "rsi_14"]
        frame = random_bars(300, 5)
        want = compute_features(frame, names).to_numpy()
        assert_same(stream(frame, names), want, names)
        assert np.allclose(want[:, 0], frame["open"] / frame["close"])
    finally:
        FEATURE_GROUPS["range"].remove("open_to_close_test")
        del SPECS["open_to_close_test"]
