"""Corrections follow one rule, last write wins (docs/STREAM_ROBUSTNESS.md, "Corrections"), in
every part that holds bars: the store, the scorer's series state and its predictions, the Live
chart's cached candles and the model lab.

Real parts: the embedded broker over TCP, a kafka-python producer, the indexer, the scorer
with a trained champion, a SQLite file, :class:`~dashboard.candles.CandleFeed` with a warm
cache, :func:`models.lab.load_bars`. Three cases on one series: a correction of the newest
bar, of an older bar (four bars back), and a late bar filling a gap.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer
from streamlit.testing.v1 import AppTest

from dashboard.candles import CandleFeed
from dashboard.formatting import fmt_sig
from models.adaptation import RetrainPolicy, train_default_model
from models.features import compute_features
from models.lab import load_bars
from models.lab_types import LabConfig
from models.registry import get_champion, load_model_version
from pipeline.contracts.schema import Bar
from pipeline.sources.simulator import MarketSimulator
from pipeline.store.revisions import revision
from pipeline.store.sqlite import SqliteStore
from tests.test_scorer import counters, joined, start_indexer, start_scorer, wait_for
from tests.test_time_sanity import record_figures

STEP = 60_000
ROOT = Path(__file__).resolve().parent.parent


def _bar(ts: int, close: float) -> Bar:
    return Bar("ACME", "1m", ts, close, close * 1.001, close * 0.999, close, 1000.0, "test")


def _batch_prediction(store, model, base_ts: int) -> float:
    """What the lab's batch features and the model say for the bar at ``base_ts`` now."""
    bars = store.query_bars("ACME", "1m")
    X = compute_features(bars, model.features)
    row = X[bars["ts"].to_numpy() == base_ts]
    return float(model.predict(row)[0])


def _prediction(store, model_id: str, base_ts: int):
    p = store.query_predictions(symbol="ACME", interval="1m", model_id=model_id)
    p = p[p["base_ts"] == base_ts]
    return p.iloc[0] if len(p) else None


@pytest.mark.slow
def test_newest_older_and_late_bars_follow_last_write_wins_everywhere(broker, topics,
                                                                     data_dir):
    store = SqliteStore(data_dir / "kappalab.sqlite")  # the Live page's store too
    history = list(MarketSimulator(symbols=("ACME", "GLOBX"), bars=400, seed=3)
                   .bars(threading.Event()))
    store.upsert_bars(history)
    assert train_default_model(store, "1m").promoted
    model = load_model_version(store, get_champion(store)["version_id"])
    vid = model.version_id
    t0 = max(b.ts for b in history if b.symbol == "ACME")
    c0 = float(store.query_bars("ACME", "1m", limit=1)["close"].iloc[-1])
    live = {k: _bar(t0 + k * STEP, c0 * (1 + 0.001 * k)) for k in range(1, 8)}
    feed = CandleFeed(store)  # the Live chart's shared cache (rebuilt only every 600 s)
    five = 5 * STEP

    def chart_agrees() -> bool:
        """The cached 1m and 5m candles equal a fresh aggregation of the store."""
        for bucket, n in ((STEP, 150), (five, 40)):
            cached = feed.latest("ACME", "1m", bucket, n)
            fresh = store.ohlc_latest("ACME", "1m", bucket, n)
            if not cached.reset_index(drop=True).equals(fresh.reset_index(drop=True)):
                return False
        return True

    def pending_agrees(base_ts: int) -> bool:
        p = _prediction(store, vid, base_ts)
        return p is not None and np.isclose(p["predicted"], _batch_prediction(store, model, base_ts),
                                            rtol=1e-9, atol=1e-15)

    quiet = RetrainPolicy(every_bars=None, drift_factor=None)
    indexer = start_indexer(store, broker, topics, topics["bars"])
    scorer = start_scorer(store, broker, topics, f"sc-{topics['bars']}", policy=quiet)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    figures = {}

    def send(*bars: Bar) -> None:
        for b in bars:
            producer.send(topics["bars"], key=b"ACME", value=b.to_json())
        producer.flush()

    def settled(n: int) -> None:
        wait_for(lambda: counters(indexer)["consumed"] >= n and counters(scorer)["consumed"] >= n,
                 30, f"{n} bars read by the indexer and the scorer")

    try:
        wait_for(lambda: joined(scorer), 30, "the scorer to join its group")
        send(*(live[k] for k in (1, 2, 3, 5, 6)))  # 4 is missing: a gap
        settled(5)
        wait_for(lambda: _prediction(store, vid, live[6].ts) is not None, 30, "a prediction")
        assert chart_agrees()  # the cache is warm now
        marker0 = feed.marker("ACME", "1m")
        page = AppTest.from_file(str(ROOT / "pages/live_market.py"), default_timeout=60).run()
        assert not page.exception and page.session_state["lm_builds"] == 1

        # 1. the newest bar corrected
        new6 = _bar(live[6].ts, live[6].close * 1.02)
        send(new6)
        settled(6)
        wait_for(lambda: counters(scorer).get("rederived", 0) >= 1, 30, "re-derived prediction")
        stored6 = store.query_bars("ACME", "1m", start_ms=new6.ts)
        assert float(stored6["close"].iloc[0]) == new6.close
        assert counters(indexer)["corrected"] == 1 and counters(scorer)["corrected"] == 1
        wait_for(lambda: pending_agrees(new6.ts), 10, "the waiting prediction to follow")
        assert float(_prediction(store, vid, new6.ts)["base_close"]) == new6.close
        assert feed.marker("ACME", "1m") != marker0 and chart_agrees()
        page.run()  # the Live page's refresh: the revision makes it draw again, corrected
        assert not page.exception and page.session_state["lm_builds"] == 2
        assert page.session_state["lm_drawn"]["kpis"][0][1] == fmt_sig(new6.close, 6)
        figures["newest"] = {"stored_close": float(stored6["close"].iloc[0]),
                             "revision": revision(store, "ACME", "1m")["seq"]}

        # 2. an older bar corrected (four bars back, inside the features' lookback)
        scored2 = _prediction(store, vid, live[1].ts)  # it predicted bar 2
        assert scored2 is not None and not np.isnan(scored2["actual"])
        new2 = _bar(live[2].ts, live[2].close * 0.97)
        send(new2)
        settled(7)
        wait_for(lambda: counters(scorer)["corrected"] == 2, 30, "the scorer to see it")
        wait_for(lambda: pending_agrees(new6.ts), 10, "the waiting prediction to follow again")
        rescored = _prediction(store, vid, live[1].ts)
        assert np.isclose(rescored["actual"], new2.close / rescored["base_close"] - 1, rtol=1e-12)
        assert not np.isclose(rescored["actual"], scored2["actual"])
        assert chart_agrees()

        # 3. the late bar filling the gap
        late4 = live[4]
        send(late4)
        settled(8)
        wait_for(lambda: counters(scorer).get("late", 0) == 1, 30, "the late bar in the scorer")
        assert counters(indexer)["late"] == 1
        assert len(store.query_bars("ACME", "1m", start_ms=live[1].ts)) == 6
        wait_for(lambda: pending_agrees(new6.ts), 10, "the waiting prediction to follow the gap")
        assert chart_agrees()

        # the next bar is predicted from features over the corrected, filled series
        send(live[7])
        settled(9)
        wait_for(lambda: _prediction(store, vid, live[7].ts) is not None, 30, "prediction 7")
        assert pending_agrees(live[7].ts)
        scored6 = _prediction(store, vid, new6.ts)
        assert np.isclose(scored6["actual"], live[7].close / new6.close - 1, rtol=1e-12)
        ic, sc = counters(indexer), counters(scorer)
    finally:
        producer.close()
        for wt in (scorer, indexer):
            wt.stop()

    # The scorer's kept bars are the store's last bars; the lab reads the same series.
    state = scorer.worker.series._states[("ACME", "1m")]
    kept = [(b.ts, b.close) for b in state.recent]
    tail = store.query_bars("ACME", "1m", limit=len(kept))
    assert kept == list(zip(tail["ts"].tolist(), tail["close"].tolist()))
    lab, _ = load_bars(store, LabConfig(symbols=["ACME"], interval="1m"))
    closes = dict(zip(lab["ts"], lab["close"]))
    assert (closes[new6.ts], closes[new2.ts], closes[late4.ts]) == (new6.close, new2.close,
                                                                   late4.close)
    assert ic["stored"] == 9 and ic["rejected"] == 0 and store.count_bars(symbol="ACME") == 407
    record_figures("corrections", {
        "sent": 9, "stored": ic["stored"], "dead_lettered": ic["rejected"], "lost": 0,
        "indexer": {k: ic.get(k, 0) for k in ("corrected", "late", "replayed")},
        "scorer": {k: sc.get(k, 0) for k in ("corrected", "late", "rederived", "rescored")},
        "revisions": revision(store, "ACME", "1m")["seq"], **figures})
    store.close()


def test_the_pipeline_page_says_the_data_rule_figures():
    from dashboard.view_models import data_rules_note

    assert data_rules_note({"stored": 5}) is None and data_rules_note(None) is None
    note = data_rules_note({"corrected": 2, "late": 1, "unkeyed": 1234})
    assert note.startswith("Data rules: 2 corrected bar(s) (the last write wins), 1 late bar(s)")
    assert "1,234 bar(s) without a Kafka key" in note and "read again" not in note
