"""Fundamentals features in the live scorer, on real parts: embedded broker over TCP, SQLite
file, the bar indexer, the scorer reading bars and the snapshots topic.

- a champion trained in the model lab with the ``fundamentals`` group is served, not refused;
- a snapshot published on the topic mid-stream reaches exactly the bars that end after its
  effective time (as of), and every prediction equals the model applied to the lab's batch
  feature row of its bar (stored snapshots + the one from the topic);
- retraining data for such a champion carries the stored snapshots.
"""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
from kafka import KafkaProducer

from models.adaptation import RetrainPolicy, load_training_data
from models.features import compute_features
from models.features.fundamentals import FUNDAMENTALS_GROUP, fundamentals_features
from models.lab import LabConfig, run_comparison
from models.lab_runs import save_version
from models.registry import load_model_version
from pipeline.workers.broker import ensure_topics
from pipeline.contracts.fundamentals import FUNDAMENTALS_COLUMNS, FundamentalsSnapshot
from pipeline.workers.indexer import Indexer
from pipeline.workers.scorer import Scorer
from pipeline.sources.simulator import MarketSimulator
from pipeline.workers.worker import WorkerThread
from tests.test_scorer import wait_for
from tests.test_scorer_sentiment import bar_objects

SYMBOLS = ("ACME", "GLOBX")
STEP = 60_000


def bars_frame(n: int) -> pd.DataFrame:
    import threading

    bars = list(MarketSimulator(symbols=SYMBOLS, bars=n, seed=11).bars(threading.Event()))
    return pd.DataFrame([b.to_dict() for b in bars]).sort_values(["ts", "symbol"],
                                                                  kind="stable")


def snapshots(t0: int, t1: int, every: int, seed: int = 4) -> list[FundamentalsSnapshot]:
    """One snapshot per symbol every ``every`` bars from before the first bar, values drifting
    so the features are not constant (the lab would leave constant ones out)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, ts in enumerate(range(t0 - 5 * STEP + 7, t1, every * STEP)):
        for s in SYMBOLS:
            out.append(FundamentalsSnapshot(s, ts, "test", "2024-12-31", {
                "pe_ratio": float(15 + rng.normal(0, 3)), "eps": float(2 + rng.normal(0, .5)),
                "market_cap": float(1e9 * (1 + rng.random())),
                "dividend_yield": float(0.02 * rng.random()),
                "price_to_book": float(3 + rng.normal()), "beta": float(1 + rng.normal(0, .2))}))
    return out


def frame_of(snaps: list[FundamentalsSnapshot]) -> pd.DataFrame:
    return pd.DataFrame([s.to_row() for s in snaps], columns=FUNDAMENTALS_COLUMNS)


def test_scorer_without_the_snapshots_topic_refuses_a_fundamentals_champion(sqlite_store):
    scorer = Scorer(sqlite_store, "127.0.0.1:9", stream_topics={"fundamentals": None})
    with pytest.raises(ValueError, match="fund_pe_ratio needs the fundamentals stream"):
        scorer.extras.check(["ret_1", "fund_pe_ratio"])
    Scorer(sqlite_store, "127.0.0.1:9").extras.check(["ret_1", *FUNDAMENTALS_GROUP])


def test_retraining_a_fundamentals_champion_reads_the_stored_snapshots(sqlite_store):
    bars = bars_frame(300)
    sqlite_store.upsert_bars(bar_objects(bars))
    snaps = snapshots(int(bars["ts"].min()), int(bars["ts"].max()), 40)
    sqlite_store.upsert_fundamentals(snaps)
    data = load_training_data(sqlite_store, list(SYMBOLS), "1m", ["ret_1", *FUNDAMENTALS_GROUP],
                              "next_return", 1, 200)
    stored = pd.concat([sqlite_store.query_fundamentals(s) for s in SYMBOLS])
    want = fundamentals_features(bars, stored, FUNDAMENTALS_GROUP)
    want.index = pd.MultiIndex.from_arrays([bars["symbol"], bars["ts"]])
    got = data.set_index(["symbol", "ts"])[FUNDAMENTALS_GROUP]
    assert len(got) == 400
    np.testing.assert_allclose(got.to_numpy(), want.loc[got.index].to_numpy(), rtol=0,
                               atol=0)


@pytest.mark.slow
def test_live_fundamentals_champion_predicts_as_the_batch_join(broker, topics, sqlite_store):
    store = sqlite_store
    n_hist, n_stream = 300, 40
    bars = bars_frame(n_hist + n_stream)
    t0 = int(bars["ts"].min())
    t_split = t0 + n_hist * STEP
    hist, stream = bars[bars["ts"] < t_split], bars[bars["ts"] >= t_split]
    store.upsert_bars(bar_objects(hist))
    store.upsert_fundamentals(snapshots(t0, t_split, 40))
    # Published on the topic during the stream, effective 1 ms after the 20th streamed bar's
    # end: that bar must not see it, the next one must.
    t_mid = sorted(stream["ts"].unique())[20]
    fresh = FundamentalsSnapshot("ACME", t_mid + STEP + 1, "test", "2025-03-31", {
        "pe_ratio": 99.0, "eps": -7.0, "market_cap": 5e11, "dividend_yield": 0.3,
        "price_to_book": 40.0, "beta": 3.0})

    cfg = LabConfig(symbols=list(SYMBOLS), features=["default", "fundamentals"],
                    models=[("linear", {})], target="next_return")
    result = run_comparison(store, cfg)
    version = save_version(store, result, result.best_label(include_baselines=False),
                           champion=True)
    model = load_model_version(store, version)
    used = [f for f in model.features if f in FUNDAMENTALS_GROUP]
    assert used, model.features

    fund_topic = f"{topics['bars']}.fundamentals"
    ensure_topics(broker.bootstrap, (fund_topic,))
    indexer = WorkerThread(Indexer(store, broker.bootstrap, topic=topics["bars"],
                                   dlq_topic=topics["dlq"], group_id=f"ix-{topics['bars']}"))
    scorer = WorkerThread(Scorer(store, broker.bootstrap, topic=topics["bars"],
                                 group_id=f"sc-{topics['bars']}", stream_topics={"news": None, "fundamentals": fund_topic},
                                 publish=False, adapt=False,
                                 train_default=False,
                                 policy=RetrainPolicy(every_bars=None, drift_factor=None)))
    indexer.start()
    scorer.start()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        wait_for(lambda: "lag" in scorer.worker.stats(history=False)["gauges"], 30,
                 "the scorer to join its group")
        live = next(p for p in scorer.worker.extras.providers if p.kind == "fundamentals")
        for t in sorted(stream["ts"].unique()):
            if t == t_mid + STEP:  # the snapshot is read before the bar after it
                producer.send(fund_topic, key=b"ACME", value=fresh.to_json())
                producer.flush()
                wait_for(lambda: live.counts["read"] >= 1, 30, "the scorer to read it")
            for bar in bar_objects(stream[stream["ts"] == t]):
                producer.send(topics["bars"], key=bar.symbol.encode(), value=bar.to_json())
            producer.flush()
        wait_for(lambda: len(store.query_predictions(model_id=version)) >= len(stream), 60,
                 "a prediction for every streamed bar")
        assert scorer.worker.last_error is None or "not usable" not in scorer.worker.last_error
        assert live.counts["from_store"] > 0 and live.counts["late"] == 0
    finally:
        producer.close()
        scorer.stop()
        indexer.stop()

    all_bars = pd.concat([store.query_bars(s, "1m") for s in SYMBOLS], ignore_index=True)
    snaps = pd.concat([frame_of(snapshots(t0, t_split, 40)), frame_of([fresh])],
                      ignore_index=True)
    feats = compute_features(all_bars, model.features, fundamentals=snaps)
    index = pd.MultiIndex.from_arrays([all_bars["symbol"], all_bars["ts"]])
    expected = pd.Series(model.predict(feats), index=index)
    preds = store.query_predictions(model_id=version)
    got = preds.set_index(["symbol", "base_ts"])["predicted"]
    assert len(got) == len(stream) and not got.index.duplicated().any()
    np.testing.assert_allclose(got.to_numpy(), expected.loc[got.index].to_numpy(), rtol=1e-9,
                               atol=1e-12)
    # the live snapshot changed the prediction of the bar after it, not of its own bar
    f = pd.DataFrame(feats.to_numpy(), index=index, columns=feats.columns)
    assert f.loc[("ACME", t_mid), used[0]] != f.loc[("ACME", t_mid + STEP), used[0]]
    assert f.loc[("ACME", t_mid + STEP), "fund_pe_ratio"] == 99.0
