"""The live scorer on real parts: embedded broker over TCP, SQLite file, simulator, indexer.

- the rolling-window features equal the batch features (no train/serve skew);
- end to end: one prediction per bar per champion, each scored once its bar arrives, nothing
  predicted twice across a restart or a full replay;
- with too little data the scorer waits and says so, then trains and promotes a default model;
- a regime change triggers a drift retrain, and a worse challenger is not promoted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kafka import KafkaConsumer, TopicPartition
from sklearn.linear_model import LinearRegression

from models.adaptation import RetrainPolicy, train_default_model
from models.features import DEFAULT_FEATURES, compute_features, max_lookback
from models.registry import get_champion, load_model_version
from pipeline.workers.indexer import Indexer
from pipeline.workers.producer import Producer
from pipeline.workers.runtime import resume_points
from pipeline.contracts.schema import Bar
from models.live.series import SeriesState, bars_from_frame
from models.streaming import FeatureSet
from pipeline.workers.scorer import Scorer
from pipeline.sources.simulator import MarketSimulator, SimulatorParams
from pipeline.store.sqlite import SqliteStore
from pipeline.workers.worker import WorkerThread

SYMBOLS = ("ACME", "GLOBX", "INITECH")
STEP = 60_000
ROOT = Path(__file__).resolve().parent.parent


# ---- helpers ---------------------------------------------------------------------------------
def store_history(store, bars_per_symbol: int, seed: int = 11, params=None) -> list[Bar]:
    bars = list(MarketSimulator(symbols=SYMBOLS, bars=bars_per_symbol, seed=seed,
                                params=params).bars(threading.Event()))
    store.upsert_bars(bars)
    return bars


def start_stream(broker, topic, store, bars_per_symbol: int, steps_per_s: float,
                 seed: int = 12, params=None) -> WorkerThread:
    """The simulator continuing the stored series, live-paced, through a real producer."""
    source = MarketSimulator(symbols=SYMBOLS, bars=bars_per_symbol, seed=seed,
                             speed=steps_per_s * 60.0, params=params,
                             resume=resume_points(store, SYMBOLS, "1m"))
    return WorkerThread(Producer(source, broker.bootstrap, topic=topic, live=True)).start()


def start_indexer(store, broker, topics, tag: str) -> WorkerThread:
    return WorkerThread(Indexer(store, broker.bootstrap, topic=topics["bars"],
                                dlq_topic=topics["dlq"], group_id=f"ix-{tag}")).start()


def start_scorer(store, broker, topics, group: str, **kw) -> WorkerThread:
    return WorkerThread(Scorer(store, broker.bootstrap, topic=topics["bars"], group_id=group,
                               predictions_topic=topics["predictions"], **kw)).start()


def wait_for(cond, timeout_s: float, what: str, every: float = 0.1) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if cond():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def joined(wt: WorkerThread) -> bool:
    """The scorer's consumer has its partitions (it reports its lag only then)."""
    return "lag" in wt.worker.stats(history=False)["gauges"]


def counters(wt: WorkerThread) -> dict:
    return wt.worker.stats(history=False)["counters"]


# ---- no train/serve skew ---------------------------------------------------------------------
def test_scorer_series_features_equal_batch_features(sqlite_store):
    features = [*DEFAULT_FEATURES, "macd_hist", "ema_20", "close_lag_3", "volume_change"]
    bars = store_history(sqlite_store, 300)
    feature_set = FeatureSet(features)
    size = feature_set.lookback
    assert size == max_lookback(features)
    for symbol in SYMBOLS:
        batch = sqlite_store.query_bars(symbol, "1m")  # what the model lab reads
        want = compute_features(batch, features).to_numpy()
        series = [b for b in bars if b.symbol == symbol]
        state = SeriesState.new(feature_set)  # a scorer from scratch
        got = np.vstack([state.update(b) for b in series])
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        assert (np.isnan(got) == np.isnan(want)).all()
        assert not np.isnan(want[size - 1:]).any()  # warm-up ends exactly at the lookback

        # A restarted scorer rebuilds the state from the store: same numbers again.
        k = 150
        restarted = SeriesState.new(feature_set)
        restarted.warm(bars_from_frame(sqlite_store.query_bars(symbol, "1m", end_ms=series[k].ts,
                                                               limit=size)))
        again = np.vstack([restarted.update(b) for b in series[k:]])
        np.testing.assert_allclose(again, want[k:], rtol=1e-12, atol=1e-12)


# ---- end to end --------------------------------------------------------------------------------
@pytest.mark.slow
def test_one_prediction_per_bar_scored_once_across_restart_and_replay(broker, topics,
                                                                      sqlite_store):
    store = sqlite_store
    store_history(store, 400)
    assert train_default_model(store, "1m").promoted
    model = load_model_version(store, get_champion(store)["version_id"])
    n_stream = 300
    quiet = RetrainPolicy(every_bars=None, drift_factor=None)  # one champion throughout
    group = f"sc-{topics['bars']}"
    indexer = start_indexer(store, broker, topics, topics["bars"])
    first = start_scorer(store, broker, topics, group, policy=quiet)
    producer = None
    try:
        wait_for(lambda: joined(first), 30, "the scorer to join its group")
        producer = start_stream(broker, topics["bars"], store, n_stream, steps_per_s=40)
        wait_for(lambda: counters(first)["predictions"] >= 150, 30, "150 predictions")
        assert first.stop(), "scorer did not stop"
        assert producer.alive, "the stream should still be flowing (a mid-stream stop)"
        c1 = counters(first)

        second = start_scorer(store, broker, topics, group, policy=quiet)
        expected = n_stream * len(SYMBOLS)
        wait_for(lambda: not producer.alive, 60, "the stream to end")
        wait_for(lambda: counters(second)["scored"] + c1["scored"] >= expected - len(SYMBOLS),
                 60, "every prediction but the last per symbol to be scored")
        assert second.stop()
        c2 = counters(second)
    finally:
        for wt in (first, producer, indexer):
            if wt is not None:
                wt.stop()

    preds = store.query_predictions(interval="1m")
    # One prediction per streamed bar and champion, none twice: the two runs' counters add up
    # to exactly what is stored.
    assert len(preds) == expected == store.count_predictions(model_id=model.version_id)
    assert preds["model_id"].unique().tolist() == [model.version_id]
    assert c1["predictions"] + c2["predictions"] == expected
    assert c1["invalid"] == c2["invalid"] == 0
    # Scored exactly once each, and only once the bar arrived: the last bar's is pending.
    assert c1["scored"] + c2["scored"] == expected - len(SYMBOLS)
    assert preds["actual"].isna().sum() == len(SYMBOLS)

    for symbol in SYMBOLS:
        bars = store.query_bars(symbol, "1m").reset_index(drop=True)
        p = preds[preds["symbol"] == symbol].set_index("base_ts").sort_index()
        assert len(p) == n_stream
        # The stored prediction is the batch prediction for the same bar: no skew.
        batch = pd.Series(model.predict(compute_features(bars, model.features)),
                          index=bars["ts"].to_numpy())
        np.testing.assert_allclose(p["predicted"], batch.loc[p.index], rtol=1e-9, atol=1e-15)
        # ts is the next bar; actual is that bar's return; error = predicted - actual.
        assert (p["ts"] - p.index == STEP).all()
        close = bars.set_index("ts")["close"]
        done = p[p["actual"].notna()]
        want = close.loc[done["ts"]].to_numpy() / close.loc[done.index].to_numpy() - 1.0
        np.testing.assert_allclose(done["actual"], want, rtol=1e-12)
        np.testing.assert_allclose(done["error"], done["predicted"] - done["actual"], rtol=1e-12)
        np.testing.assert_allclose(done["base_close"], close.loc[done.index].to_numpy())
    assert (preds["latency_ms"] >= 0).all() and preds["produced_ms"].notna().all()

    # Everything also went to the predictions topic (made, then scored: the same doc ids).
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=3000)
    consumer.assign([TopicPartition(topics["predictions"], 0)])
    published = [json.loads(m.value) for m in consumer]
    consumer.close()
    ids = {d["doc_id"] for d in published}
    assert ids == {f"{r.model_id}|{r.symbol}|{r.interval}|{r.ts}" for r in preds.itertuples()}

    # A new group replays the whole topic from the start: nothing is predicted or scored again.
    replay = start_scorer(store, broker, topics, group + "-replay", policy=quiet)
    try:
        wait_for(lambda: counters(replay)["consumed"] >= expected, 60, "the full replay")
        time.sleep(0.5)
    finally:
        assert replay.stop()
    c3 = counters(replay)
    assert c3["predictions"] == 0 and c3["scored"] == 0
    assert c3["already_predicted"] == expected
    assert store.count_predictions() == expected


@pytest.mark.slow
def test_waits_for_data_then_trains_and_promotes_a_default_model(broker, topics, sqlite_store):
    store = sqlite_store
    store_history(store, 60)  # too little to train on
    scorer = start_scorer(store, broker, topics, f"sc-{topics['bars']}", bootstrap_check_s=0.3)
    try:
        wait_for(lambda: "waiting for data" in scorer.worker.stats()["gauges"].get("status", ""),
                 20, "the scorer to say it waits for data")
        assert get_champion(store) is None
        store_history(store, 400)  # the indexer would do this; enough now
        wait_for(lambda: get_champion(store) is not None, 30, "a default champion")
        wait_for(lambda: "default model" in scorer.worker.stats()["gauges"].get("status", ""),
                 10, "the status to say so")
    finally:
        assert scorer.stop()
    meta = get_champion(store)
    assert meta["target"] == "next_return" and meta["trained_by"] == "scorer"
    assert "close" not in meta["features"] and meta["metrics"]["mape_pct"] > 0
    (event,) = store.list_events("retrain")
    assert event["trigger"] == "bootstrap" and event["promoted"] is True
    assert event["champion_version_id"] == meta["version_id"]


@pytest.mark.slow
def test_bars_that_arrive_while_the_first_model_trains_wait_for_it(broker, topics, sqlite_store):
    """The default model trains in the retrain process (its start-up takes seconds); bars
    that arrive meanwhile stay in Kafka and are predicted once it is ready, not skipped."""
    store = SlowTrainingStore(sqlite_store.path)
    store_history(store, 400, seed=31)
    source = MarketSimulator(symbols=SYMBOLS, bars=20, seed=32,
                             resume=resume_points(store, SYMBOLS, "1m"))
    producer = Producer(source, broker.bootstrap, topic=topics["bars"], live=False)
    producer.run_guarded(threading.Event())
    assert producer.state == "finished", producer.last_error
    scorer = start_scorer(store, broker, topics, f"sc-hold-{topics['bars']}")
    try:
        wait_for(lambda: counters(scorer).get("predictions", 0) >= 20 * len(SYMBOLS), 120,
                 "a prediction for every streamed bar")
        stats = scorer.worker.stats(history=False)
    finally:
        assert scorer.stop()
    assert stats["counters"].get("no_model", 0) == 0
    assert stats["gauges"]["retrain_in"].startswith("process")
    assert get_champion(store)["trained_by"] == "scorer"
    assert store.count_predictions() == 20 * len(SYMBOLS)
    # Every one was produced before the model was ready: stored with its latency, but the
    # live latency gauge (what the pages show) does not count them.
    assert store.query_predictions()["latency_ms"].notna().all()
    assert "latency_ms" not in stats["gauges"]


class SlowTrainingStore(SqliteStore):
    """The test's SQLite store, reopened as itself in the retrain process (pickled by
    reference), where its first read of bars takes 5 s: the first model is then certainly
    still training when the streamed bars reach the scorer."""

    def query_bars(self, *args, **kwargs):
        import multiprocessing

        if multiprocessing.parent_process() is not None and not getattr(self, "_slept", False):
            self._slept = True
            time.sleep(5.0)
        return super().query_bars(*args, **kwargs)


@pytest.mark.slow
def test_regime_change_triggers_drift_retrain_and_worse_challenger_is_kept_out(
        broker, topics, sqlite_store):
    store = sqlite_store
    store_history(store, 400)
    assert train_default_model(store, "1m").promoted  # the champion knows only the calm regime
    champion = get_champion(store)["version_id"]
    regime_at = 40  # stream bar index where volatility triples and the autocorrelation flips
    params = SimulatorParams(regime_change_at=regime_at)
    # A challenger doomed to lose: unregularised least squares on 12 bars per symbol.
    policy = RetrainPolicy(every_bars=None, drift_factor=2.0, drift_window=60,
                           drift_min_errors=45, cooldown_bars=0, train_bars=12,
                           holdout_bars=60, min_train_rows=10,
                           challenger_factory=LinearRegression)
    first_ts = int(store.query_bars("ACME", "1m", limit=1)["ts"].iloc[-1]) + STEP
    regime_ts = first_ts + regime_at * STEP
    indexer = start_indexer(store, broker, topics, topics["bars"])
    scorer = start_scorer(store, broker, topics, f"sc-{topics['bars']}", policy=policy)
    producer = None
    try:
        wait_for(lambda: joined(scorer), 30, "the scorer to join its group")
        producer = start_stream(broker, topics["bars"], store, 160, steps_per_s=60,
                                params=params)
        wait_for(lambda: any(e["trigger"] == "drift" for e in store.list_events("retrain")),
                 60, "a drift retrain")
        wait_for(lambda: counters(scorer)["retrains"] >= 1, 10, "the scorer to see its decision")
    finally:
        for wt in (scorer, producer, indexer):
            if wt is not None:
                wt.stop()
    stats = scorer.worker.stats()  # the final snapshot, published on stop

    drift = [e for e in store.list_events("retrain") if e["trigger"] == "drift"]
    event = drift[-1]  # the first drift decision (newest first)
    assert all(e["bar_ts"] >= regime_ts for e in drift), "drift seen before the regime changed"
    assert event["bar_ts"] <= regime_ts + 60 * STEP, "drift detected too late"
    assert event["promoted"] is False
    assert event["previous_version_id"] == event["champion_version_id"] == champion
    f = event["figures"]
    assert f["challenger_error"] > f["champion_error"] > 0
    assert f["live"]["drift"]["rolling_mape_pct"] > 2.0 * f["live"]["drift"]["reference_mape_pct"]
    assert "rolling live error" in event["reason"] and "champion kept" in event["reason"]
    assert get_champion(store)["version_id"] == champion  # unchanged
    rejected = store.get_model_version(event["challenger_version_id"])[0]
    assert rejected["status"] == "candidate" and rejected["parent_version_id"] == champion
    assert stats["counters"]["promotions"] == 0
    assert stats["gauges"]["last_retrain"]["promoted"] is False


@pytest.mark.slow
def test_cli_score_bootstraps_predicts_and_prints_a_summary(broker, tmp_path):
    """``python -m pipeline score`` (attach mode) on the configured broker and data dir."""
    from pipeline.contracts.schema import BARS_TOPIC
    from pipeline.store.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "kappalab.sqlite")
    store_history(store, 400, seed=21)
    source = MarketSimulator(symbols=SYMBOLS, bars=30, seed=22,
                             resume=resume_points(store, SYMBOLS, "1m"))
    producer = Producer(source, broker.bootstrap, topic=BARS_TOPIC, live=False)
    producer.run_guarded(threading.Event())
    assert producer.state == "finished", producer.last_error
    env = {**os.environ, "KAPPALAB_DATA_DIR": str(tmp_path),
           "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "PYTHONPATH": str(ROOT)}
    env.pop("ELASTICSEARCH_URL", None)
    out = subprocess.run([sys.executable, "-m", "pipeline", "score", "--group", "sc-cli",
                          "--until-idle", "2"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["summary"] == "scorer" and summary["state"] == "stopped"
    assert summary["consumed"] >= 90 and summary["predictions"] > 0
    assert store.count_predictions() == summary["predictions"]
    assert get_champion(store)["trained_by"] == "scorer"  # it bootstrapped the default model
    store.close()
