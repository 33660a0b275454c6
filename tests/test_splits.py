"""Splits never put a test timestamp before a training timestamp, with several symbols too."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import TimeSeriesSplit

from models.splits import (RANDOM_SPLIT_WARNING, chronological_holdout, make_splits,
                           random_split, split_warnings, walk_forward_splits)


def multi_symbol_ts(seed: int = 0) -> np.ndarray:
    """Three symbols with different start times and random gaps, rows in no particular order."""
    rng = np.random.default_rng(seed)
    parts = []
    for start in (0, 37, 120):
        ts = np.arange(start, 1000) * 60_000
        parts.append(ts[rng.random(len(ts)) > 0.1])
    ts = np.concatenate(parts)
    return ts[rng.permutation(len(ts))]


def assert_no_lookahead(ts, split, gap=0):
    train, test = ts[split.train], ts[split.test]
    assert len(train) and len(test)
    assert train.max() < test.min()
    assert not set(split.train) & set(split.test)
    between = np.unique(ts[(ts > train.max()) & (ts < test.min())])
    assert len(between) >= gap


@pytest.mark.parametrize("fraction,gap", [(0.2, 0), (0.3, 5), (0.05, 0)])
def test_chronological_holdout(fraction, gap):
    ts = multi_symbol_ts()
    s = chronological_holdout(ts, fraction, gap)
    assert_no_lookahead(ts, s, gap)
    # every row of a test timestamp is in the test set, every earlier non-gap row in training
    assert set(s.test) == set(np.flatnonzero(ts >= ts[s.test].min()))
    uniq = np.unique(ts)
    assert abs(len(np.unique(ts[s.test])) - fraction * len(uniq)) <= 1
    if gap == 0:
        assert len(s.train) + len(s.test) == len(ts)


@pytest.mark.parametrize("folds,gap", [(5, 0), (3, 10), (1, 0)])
def test_walk_forward(folds, gap):
    ts = multi_symbol_ts(1)
    splits = walk_forward_splits(ts, folds, gap)
    assert len(splits) == folds
    previous_test_max = -1
    for k, s in enumerate(splits):
        assert s.fold == k
        assert_no_lookahead(ts, s, gap)
        assert ts[s.test].min() > previous_test_max  # folds move forward, never overlap
        previous_test_max = ts[s.test].max()
        if k:
            assert len(s.train) > len(splits[k - 1].train)  # expanding window
    assert previous_test_max == ts.max()


def test_walk_forward_equals_time_series_split_for_one_series():
    ts = np.arange(103) * 1000
    ours = walk_forward_splits(ts, 4, gap=2)
    theirs = list(TimeSeriesSplit(n_splits=4, gap=2).split(ts))
    for s, (tr, te) in zip(ours, theirs):
        np.testing.assert_array_equal(s.train, tr)
        np.testing.assert_array_equal(s.test, te)


def test_random_split_is_the_seeds_method_with_a_warning():
    ts = multi_symbol_ts(2)
    s = random_split(ts, 0.25, seed=3)
    assert sorted(np.concatenate([s.train, s.test]).tolist()) == list(range(len(ts)))
    assert ts[s.test].min() < ts[s.train].max()  # it does look ahead: that is the point
    again = random_split(ts, 0.25, seed=3)
    np.testing.assert_array_equal(s.test, again.test)
    assert split_warnings("random") == [RANDOM_SPLIT_WARNING]
    assert "leak" in RANDOM_SPLIT_WARNING.lower()
    assert split_warnings("chronological") == [] == split_warnings("walk_forward")


def test_make_splits_and_errors():
    ts = multi_symbol_ts(3)
    assert len(make_splits(ts, "walk_forward", n_folds=4)) == 4
    assert len(make_splits(ts, "chronological")) == 1
    with pytest.raises(ValueError, match="unknown split"):
        make_splits(ts, "shuffle")
    with pytest.raises(ValueError, match="too few"):
        walk_forward_splits(np.arange(5), 10)
    with pytest.raises(ValueError, match="too few"):
        chronological_holdout(np.arange(3), 0.1)
    with pytest.raises(ValueError, match="between 0 and 1"):
        chronological_holdout(ts, 1.5)


def _sim_bars(interval: str = "1m", n: int = 600):
    import threading

    import pandas as pd

    from pipeline.sources.simulator import MarketSimulator

    bars = list(MarketSimulator(["ACME"], interval, seed=3, bars=n).bars(threading.Event()))
    return pd.DataFrame([b.to_dict() for b in bars])


def test_every_feature_set_is_scored_on_the_same_test_bars():
    # The cut is made on time before warm-up rows are dropped, so a 100-bar warm-up feature
    # set and a 1-bar one are tested on exactly the same bars.
    from models import lab

    bars = _sim_bars()
    runs = []
    for feats in (["ret_1"], ["ret_1", "sma_100"]):
        cfg = lab.LabConfig(symbols=["ACME"], interval="1m", features=feats,
                            models=[("linear", {})], target="next_return")
        runs.append(lab.run_comparison(bars, cfg))
    a, b = (r.predictions["ts"].tolist() for r in runs)
    assert a == b and len(a) > 0
    assert runs[1].summary["n_train"] < runs[0].summary["n_train"]  # warm-up left the train side
    assert runs[1].summary["warmup_dropped"]["train"] > 0


def test_constant_features_on_daily_bars_are_left_out_with_a_note():
    from models import lab

    bars = _sim_bars("1d", 400)
    cfg = lab.LabConfig(symbols=["ACME"], interval="1d", features=["ret_1", "minute_sin",
                                                                    "minute_cos"],
                        models=[("linear", {})], target="next_return")
    result = lab.run_comparison(bars, cfg)
    assert result.summary["features_constant"] == ["minute_sin", "minute_cos"]
    assert result.fitted["Linear regression"].features == ["ret_1"]
    assert sum("minute_sin" in w for w in result.warnings) == 1
