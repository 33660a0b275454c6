"""Retraining policy on a real SQLite store (no broker): the default model, champion vs
challenger on a chronological holdout, drift monitoring, and the live error figures."""
from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression

from models.adaptation import (
    DEFAULT_TARGET, RetrainPolicy, default_features, load_training_data, retrain, split_holdout,
    train_default_model,
)
from models.live.errors import (DriftMonitor, LiveErrors, live_summary, rolling_live_errors,
                                 score_frame)
from models.metrics import close_error
from models.registry import get_champion, load_model_version, promote, save_model_version
from models.zoo import get_spec
from pipeline.sources.simulator import MarketSimulator, SimulatorParams

SYMBOLS = ("ACME", "GLOBX", "INITECH")


def fill(store, bars_per_symbol: int, seed: int = 5, **params) -> None:
    sim = MarketSimulator(symbols=SYMBOLS, bars=bars_per_symbol, seed=seed,
                          params=SimulatorParams(**params))
    store.upsert_bars(list(sim.bars(threading.Event())))


def biased_linear_version(store) -> str:
    """A saved version of the zoo's linear model trained on a target biased by +0.2 % per
    bar: a champion any sensible challenger beats."""
    data = load_training_data(store, list(SYMBOLS), "1m", default_features(),
                              DEFAULT_TARGET, 1, 300)
    bad = get_spec("linear").build({})
    bad.fit(data[default_features()], data["y"] + 0.002)
    return save_model_version(store, bad, {
        "name": "Linear regression (biased)", "model_key": "linear",
        "features": default_features(), "target": DEFAULT_TARGET, "interval": "1m",
        "train_end_ms": int(data["target_ts"].max()), "metrics": {"mape_pct": 0.2}})


def test_default_model_waits_for_data_then_trains_saves_and_promotes(sqlite_store):
    fill(sqlite_store, 60)
    waiting = train_default_model(sqlite_store, "1m")
    assert waiting.waiting and not waiting.promoted
    assert "waiting for data" in waiting.reason and "need 300" in waiting.reason
    assert get_champion(sqlite_store) is None and not sqlite_store.list_events("retrain")

    fill(sqlite_store, 500)
    d = train_default_model(sqlite_store, "1m", bar_ts=123)
    assert d.promoted and not d.waiting
    meta = get_champion(sqlite_store)
    assert meta["version_id"] == d.champion_version_id
    assert meta["target"] == DEFAULT_TARGET and meta["features"] == default_features()
    assert not any(f in ("close", "open", "high", "low") for f in meta["features"])
    # The holdout is after the training rows, and the metrics were measured on it.
    assert meta["train_end_ms"] < d.figures["holdout_start_ms"] + 60_000
    assert 0 < meta["metrics"]["mape_pct"] and meta["metrics"]["n"] == d.figures["holdout_rows"]
    (event,) = sqlite_store.list_events("retrain")
    assert event["trigger"] == "bootstrap" and event["promoted"] and event["bar_ts"] == 123


def test_holdout_is_the_latest_rows_and_never_trained_on(sqlite_store):
    fill(sqlite_store, 600)
    policy = RetrainPolicy(train_bars=300, holdout_bars=100)
    data = load_training_data(sqlite_store, list(SYMBOLS), "1m", default_features(),
                              DEFAULT_TARGET, 1, 400)
    train, holdout = split_holdout(data, policy)
    for sym in SYMBOLS:
        t, h = train[train["symbol"] == sym], holdout[holdout["symbol"] == sym]
        assert len(t) == 300 and len(h) == 100
        assert t["target_ts"].max() <= h["ts"].min()  # not even a training target in it
    assert np.isfinite(train[default_features()].to_numpy()).all()


def test_better_challenger_replaces_a_bad_champion(sqlite_store):
    fill(sqlite_store, 800, phi=0.3)  # a learnable autocorrelation
    vid = biased_linear_version(sqlite_store)
    promote(sqlite_store, vid)
    d = retrain(sqlite_store, load_model_version(sqlite_store, vid), "schedule",
                "every 5,000 bars", RetrainPolicy(), interval="1m", bar_ts=42)
    assert d.promoted and d.champion_version_id == d.challenger_version_id != vid
    assert get_champion(sqlite_store)["version_id"] == d.challenger_version_id
    assert sqlite_store.get_model_version(vid)[0]["status"] == "retired"
    new = sqlite_store.get_model_version(d.challenger_version_id)[0]
    assert new["model_key"] == "linear" and new["parent_version_id"] == vid
    f = d.figures
    assert f["challenger_error"] < f["champion_error"] and f["improvement"] > 0.2
    assert f["challenger_error"] < f["persistence_error"]  # phi=0.3 is worth learning
    assert d.challenger_metrics["directional_accuracy"] > 0.55
    assert f["holdout_rows"] == 3 * 200 and f["symbols"] == 3
    event = next(e for e in sqlite_store.list_events("retrain") if e["trigger"] == "schedule")
    assert event["promoted"] and event["bar_ts"] == 42 and "promoted" in event["reason"]
    assert event["champion_version_id"] == d.challenger_version_id


def test_worse_challenger_is_not_promoted_and_the_decision_is_recorded(sqlite_store):
    fill(sqlite_store, 600)
    assert train_default_model(sqlite_store, "1m").promoted
    champion = get_champion(sqlite_store)["version_id"]
    tiny = RetrainPolicy(train_bars=12, min_train_rows=10, challenger_factory=LinearRegression)
    d = retrain(sqlite_store, load_model_version(sqlite_store, champion), "drift",
                "rolling live error 0.09% > 2 × reference 0.03%", tiny, interval="1m")
    assert not d.promoted
    assert d.champion_version_id == d.previous_version_id == champion
    assert get_champion(sqlite_store)["version_id"] == champion
    assert d.figures["challenger_error"] > d.figures["champion_error"]
    assert d.figures["train_rows"] == 36
    kept = sqlite_store.get_model_version(d.challenger_version_id)[0]
    assert kept["status"] == "candidate"  # kept, so it can still be promoted by hand
    event = next(e for e in sqlite_store.list_events("retrain") if e["trigger"] == "drift")
    assert event["promoted"] is False and "champion kept" in event["reason"]
    assert event["challenger_metrics"]["mape_pct"] > event["champion_metrics"]["mape_pct"]
    assert event["policy"]["train_bars"] == 12


def test_drift_monitor_fires_above_factor_and_rebaselines():
    policy = RetrainPolicy(drift_factor=2.0, drift_window=50, drift_min_errors=20)
    m = DriftMonitor(policy, reference=0.1)
    for _ in range(50):
        m.add(0.1)
    assert not m.drifted() and m.ratio == pytest.approx(1.0)
    for _ in range(30):
        m.add(0.4)  # the window now holds 20 × 0.1 and 30 × 0.4: mean 0.28 > 0.2
    assert m.drifted() and m.ratio == pytest.approx(2.8)
    m.rebaseline(0.4)
    assert not m.drifted() and m.errors.n == 0
    for _ in range(50):
        m.add(0.4)
    assert not m.drifted()


def test_drift_reference_comes_from_live_errors_when_the_model_has_none():
    policy = RetrainPolicy(drift_window=10, drift_min_errors=5)
    m = DriftMonitor(policy, reference=None)
    for _ in range(10):
        m.add(0.05)
    assert m.reference == pytest.approx(0.05)
    off = DriftMonitor(RetrainPolicy(drift_factor=None, drift_min_errors=1), reference=0.01)
    off.add(1.0)
    assert not off.drifted()


def test_live_errors_on_both_target_scales():
    # next_close: predicted 101 for a bar that closed at 102 from 100; next_return: the same.
    for target, predicted, actual in (("next_close", 101.0, 102.0),
                                      ("next_return", 0.01, 0.02)):
        abs_err, pct, hit = close_error(target, predicted, actual, 100.0)
        assert abs_err == pytest.approx(1.0) and pct == pytest.approx(100 / 102)
        assert hit is True
    assert close_error("next_close", 99.0, 102.0, 100.0)[2] is False
    assert close_error("next_close", 99.0, 100.0, 100.0)[2] is None  # no move: not counted
    errs = LiveErrors(window=3)
    for a in (1.0, 2.0, 3.0, 4.0):
        errs.add(a, a, a > 2)
    s = errs.summary()
    assert s["n"] == 3 and s["scored"] == 4 and s["mae"] == pytest.approx(3.0)
    assert s["rmse"] == pytest.approx(np.sqrt((4 + 9 + 16) / 3))
    assert s["directional_accuracy"] == pytest.approx(2 / 3)


def test_score_frame_and_summaries_from_stored_predictions():
    preds = pd.DataFrame({
        "model_id": ["a", "a", "b", "b"], "symbol": "ACME", "interval": "1m",
        "ts": [2, 3, 2, 3], "base_ts": [1, 2, 1, 2],
        "target": ["next_close", "next_close", "next_return", "next_return"],
        "predicted": [101.0, 99.0, 0.01, 0.0], "base_close": [100.0, 100.0, 100.0, 100.0],
        "actual": [102.0, None, 0.02, None], "error": None, "produced_ms": None,
        "stored_ms": None, "latency_ms": None,
    })
    s = score_frame(preds)
    np.testing.assert_allclose(s["predicted_close"], [101, 99, 101, 100])
    np.testing.assert_allclose(s["abs_error"].iloc[[0, 2]], [1.0, 1.0])
    assert s["abs_error"].iloc[[1, 3]].isna().all() and s["hit"].iloc[[1, 3]].isna().all()
    summary = live_summary(s).set_index("model_id")
    assert summary.loc["a", "predictions"] == 2 and summary.loc["a", "scored"] == 1
    assert summary.loc["b", "mae"] == pytest.approx(1.0)
    assert summary.loc["b", "persistence_mae"] == pytest.approx(2.0)
    rolling = rolling_live_errors(s, window=5)
    assert set(rolling["model_id"]) == {"a", "b"} and len(rolling) == 2
    assert live_summary(score_frame(preds.iloc[0:0])).empty


def test_live_errors_running_sums_equal_the_window_recomputed():
    """LiveErrors keeps its window's sums as errors come and go (an O(1) summary for the
    gauge): after any number of additions, evictions and non-finite percentages, the
    summary equals the window's errors summarised from scratch."""
    rng = np.random.default_rng(4)
    errs = LiveErrors(window=50)
    for i in range(5_000):
        a = float(abs(rng.normal()) * 10 ** rng.uniform(-6, 6))
        pct = [a, float("nan"), float("inf"), 3 * a][i % 4 if i % 7 else 0]
        errs.add(a, pct, [True, False, None][int(rng.integers(3))])
        if i % 97 == 0 or i == 4_999:
            window = np.array(errs._abs)
            finite = [p for p in errs._pct if np.isfinite(p)]
            s = errs.summary()
            assert s["n"] == len(window) and s["scored"] == i + 1
            assert s["mae"] == pytest.approx(window.mean(), rel=1e-12)
            assert s["rmse"] == pytest.approx(np.sqrt(np.mean(window ** 2)), rel=1e-12)
            if finite:
                assert s["mape_pct"] == pytest.approx(np.mean(finite), rel=1e-12)
            else:
                assert s["mape_pct"] is None
            # One window for every figure: the moves among the same last 50 scored.
            moves = [h for h in errs._hits if h is not None]
            assert len(errs._hits) == len(window) and s["moves"] == len(moves)
            if moves:
                assert s["directional_accuracy"] == pytest.approx(np.mean(moves), rel=1e-12)
            else:
                assert s["directional_accuracy"] is None


def test_a_model_that_never_calls_a_move_has_no_live_directional_accuracy():
    """As in the Model lab: persistence (predicted close = base close) gets no directional
    accuracy, neither in the scorer's rolling errors nor in the Predictions page's tables;
    a model that calls a move keeps its "no change" rows as misses."""
    from models.live.errors import live_summary, rolling_live_errors, score_frame
    from models.metrics import calls_a_move

    flat, moving = LiveErrors(window=20), LiveErrors(window=20)
    rows = []
    for i in range(30):
        actual = 0.01 if i % 2 else -0.01
        for errs, model, pred in ((flat, "persistence", 0.0), (moving, "m", 0.002 * (i % 3))):
            abs_err, pct, hit = close_error("next_return", pred, actual, 100.0)
            errs.add(abs_err, pct, hit, calls_a_move("next_return", pred, 100.0))
            rows.append({"model_id": model, "symbol": "ACME", "interval": "1m", "ts": i,
                         "target": "next_return", "predicted": pred, "actual": actual,
                         "base_close": 100.0})
    assert flat.summary()["directional_accuracy"] is None
    assert moving.summary()["directional_accuracy"] == pytest.approx(
        np.mean([close_error("next_return", 0.002 * (i % 3), 0.01 if i % 2 else -0.01,
                             100.0)[2] for i in range(10, 30)]))
    scored = score_frame(pd.DataFrame(rows))
    table = live_summary(scored).set_index("model_id")
    assert np.isnan(table.loc["persistence", "directional_accuracy"])
    assert 0 < table.loc["m", "directional_accuracy"] < 1
    rolling = rolling_live_errors(scored, window=10)
    assert rolling[rolling["model_id"] == "persistence"]["directional_accuracy"].isna().all()
    assert rolling[rolling["model_id"] == "m"]["directional_accuracy"].notna().any()


@pytest.mark.parametrize("reason, replaced", [("manual (Predictions page)", False),
                                              ("bootstrap: enough bars", True)])
def test_hand_promoted_champion_stays_unless_the_challenger_beats_persistence(
        sqlite_store, reason, replaced):
    """No signal in the returns (phi 0): a retrained challenger beats a biased champion but
    not persistence. A champion a person promoted stays; the scorer's own one is replaced."""
    fill(sqlite_store, 800, seed=1, phi=0.0)
    vid = biased_linear_version(sqlite_store)
    promote(sqlite_store, vid, reason=reason)
    d = retrain(sqlite_store, load_model_version(sqlite_store, vid), "schedule",
                "every 5,000 bars", RetrainPolicy(), interval="1m")
    f = d.figures
    assert f["challenger_error"] < f["champion_error"]  # it beats the biased champion...
    assert f["challenger_error"] >= f["persistence_error"]  # ...not persistence
    assert d.promoted is replaced
    assert (get_champion(sqlite_store)["version_id"] == vid) is not replaced
    if not replaced:
        assert f["champion_promoted_by_hand"] and "does not beat persistence" in d.reason


def test_waiting_reason_counts_what_is_stored(sqlite_store):
    """78 bars per symbol stored: the reason says how many rows that makes and how many more
    bars are needed, not "0 training rows" alone."""
    from models.features import max_lookback

    fill(sqlite_store, 78)
    d = train_default_model(sqlite_store, "1m")
    assert d.waiting
    rows = 78 - max_lookback(default_features())  # warm-up (lookback - 1), last bar: no target
    assert f"have {rows} rows with complete features" in d.reason
    # 100 training rows per symbol after a 20 % holdout: 125 rows
    assert f"about {125 - rows} more bars per symbol" in d.reason


def test_waiting_reason_with_no_complete_row_yet(sqlite_store):
    """Bars stored, but fewer than the features' warm-up: no symbol has a complete row yet.
    The scorer says it waits (it said "retrain failed: ValueError: cannot convert float NaN
    to integer" at 500 symbols, in the first seconds of bench_scorer_latency.py)."""
    fill(sqlite_store, 10)
    d = train_default_model(sqlite_store, "1m")
    assert d.waiting
    assert "have 0 rows with complete features" in d.reason
