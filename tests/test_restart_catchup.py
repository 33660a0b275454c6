"""A restart resumes the live demo: no new warm-up when history exists; a scorer working
through a backlog reports those predictions as catch-up (not in the latency figures, not
counted by the retrain schedule), so a hand-promoted champion is kept. Real broker, SQLite."""
from __future__ import annotations

import threading
import time

from models.adaptation import default_features, load_training_data, DEFAULT_TARGET
from models.adaptation import RetrainPolicy
from models.registry import get_champion, promote, save_model_version
from models.zoo import get_spec
from pipeline.contracts.config import load_config
from pipeline.workers.producer import Producer
from pipeline.workers.runtime import Runtime, SimulatorSpec, resume_points, warmup_needed
from pipeline.workers.scorer import Scorer
from pipeline.sources.simulator import MarketSimulator
from pipeline.workers.worker import WorkerThread

SYMBOLS = ("ACME", "GLOBX")


def store_history(store, n: int, seed: int = 3) -> None:
    store.upsert_bars(list(MarketSimulator(symbols=SYMBOLS, bars=n, seed=seed)
                           .bars(threading.Event())))


def produce(store, broker, topic: str, n: int, speed: float | None = None,
            after: int = 0) -> Producer:
    """``n`` bars per symbol continuing the stored series (``after`` bars later)."""
    resume = {s: (ts + after * 60_000, close)
              for s, (ts, close) in resume_points(store, SYMBOLS, "1m").items()}
    source = MarketSimulator(symbols=SYMBOLS, bars=n, seed=4, speed=speed, resume=resume)
    return Producer(source, broker.bootstrap, topic=topic, live=speed is not None)


def wait_for(cond, timeout_s: float, what: str) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_warm_up_only_tops_up_missing_history(sqlite_store):
    spec = SimulatorSpec(symbols=SYMBOLS, warmup_bars=300)
    assert warmup_needed(sqlite_store, spec) == 300
    store_history(sqlite_store, 120)
    assert warmup_needed(sqlite_store, spec) == 180
    store_history(sqlite_store, 300)
    assert warmup_needed(sqlite_store, spec) == 0


def test_restarted_simulator_adds_no_warm_up(data_dir, monkeypatch, broker, sqlite_store):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap)
    rt = Runtime(load_config(), store=sqlite_store)
    store_history(sqlite_store, 300)
    try:
        wt = rt.start_simulator(SimulatorSpec(symbols=SYMBOLS, warmup_bars=300, speed=60.0))
        time.sleep(3.0)
        produced = wt.worker.stats()["counters"]["produced"]
        # Live pace only: about one bar per symbol per second, not a 300-bar burst.
        assert 0 < produced <= 2 * 6, produced
    finally:
        rt.shutdown()


def test_catch_up_burst_keeps_hand_champion_and_latency_clean(broker, topics, sqlite_store):
    store = sqlite_store
    store_history(store, 400)
    data = load_training_data(store, list(SYMBOLS), "1m", default_features(), DEFAULT_TARGET,
                              1, 300)
    model = get_spec("linear").build({})
    model.fit(data[default_features()], data["y"])
    vid = save_model_version(store, model, {
        "name": "Linear regression", "model_key": "linear", "features": default_features(),
        "target": DEFAULT_TARGET, "interval": "1m",
        "train_end_ms": int(data["target_ts"].max()), "metrics": {"mape_pct": 0.05}})
    promote(store, vid, reason="manual (Predictions page)")

    # The backlog a stopped scorer finds: 2 x 150 bars, produced seconds before it starts.
    backlog = produce(store, broker, topics["bars"], 150)
    backlog.run_guarded(threading.Event())
    assert backlog.state == "finished", backlog.last_error
    time.sleep(Scorer.CAUGHT_UP_MS / 1000 + 0.5)

    # A schedule of 100 bars: the 300-bar burst would fire it if it counted.
    scorer = Scorer(store, broker.bootstrap, topic=topics["bars"], group_id=f"s-{topics['bars']}",
                    predictions_topic=topics["predictions"], train_default=False,
                    retrain_in="thread", policy=RetrainPolicy(every_bars=100))
    wt = WorkerThread(scorer).start()
    try:
        wait_for(lambda: scorer.stats()["counters"]["consumed"] >= 300, 60, "the backlog")
        time.sleep(1.0)
        c = scorer.stats()["counters"]
        assert c["catch_up"] == c["predictions"] > 250
        assert scorer.scheduler.since_decision[vid] == 0
        assert "latency_ms" not in scorer.stats()["gauges"]

        # Live bars again: caught up; these count for latency and the schedule.
        live = WorkerThread(produce(store, broker, topics["bars"], 20, speed=600.0,
                                        after=150)).start()
        wait_for(lambda: "latency_ms" in scorer.stats()["gauges"], 30, "live latency")
        live.thread.join(30)

        def live_counted() -> bool:  # the gauge is published once a second: wait for the last
            snap = scorer.stats()
            c = snap["counters"]
            return snap["gauges"]["latency_ms"]["n"] == c["predictions"] - c["catch_up"]
        wait_for(live_counted, 15, "every live prediction (and only those) in the latency gauge")
        c = scorer.stats()["counters"]
        assert c["catch_up"] < c["predictions"]
        assert c["retrains"] == 0 and not store.list_events("retrain")
        assert get_champion(store)["version_id"] == vid
    finally:
        wt.stop()
