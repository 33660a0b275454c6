"""Time sanity, alignment and keys (docs/STREAM_ROBUSTNESS.md, "Data rules") on real parts:
the embedded broker over TCP, a kafka-python producer, the indexer, the scorer with a trained
champion, a SQLite file, the Live chart's candle feed and the simulator's resume.

One bar dated 2099 is dead-lettered with the reason, so it blocks no later real bar of its
series (stored, predicted), the chart's latest-150 view spans 150 minutes, and a restarted
simulator resumes after the last real bar. A simulator running ahead of the wall clock (its
own clock) is not refused; a misaligned bar, a daily bar off midnight UTC and a bar keyed
with another symbol are dead-lettered; a null-keyed bar is stored and counted.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from dashboard.candles import CandleFeed
from models.adaptation import RetrainPolicy, train_default_model
from pipeline.workers.bar_rules import MAX_AHEAD_MS, SeriesClock
from pipeline.workers.runtime import resume_points
from pipeline.contracts.schema import Bar, Misaligned, parse_bar
from pipeline.sources.daily import DAY_MS
from pipeline.sources.simulator import MarketSimulator
from tests.test_scorer import counters, joined, start_indexer, start_scorer, wait_for

import pytest

STEP = 60_000
ROOT = Path(__file__).resolve().parent.parent


def _bar(symbol: str, ts: int, close: float = 100.0, interval: str = "1m") -> Bar:
    return Bar(symbol, interval, ts, close, close + 1.0, close - 1.0, close, 1000.0, "test")


def dead_letters(bootstrap: str, topic: str) -> list[dict]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=3000)
    consumer.assign([TopicPartition(topic, 0)])
    out = [{"key": m.key, "value": m.value, **{k: v.decode() for k, v in m.headers}}
           for m in consumer]
    consumer.close()
    return out


def record_figures(name: str, figures: dict) -> None:
    print(json.dumps({"test": name, **figures}))
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    with open(out / "fault_figures.jsonl", "a") as f:
        f.write(json.dumps({"test": name, **figures}) + "\n")


# ---- the rules alone ---------------------------------------------------------------------------
def test_aligned_bars_only_and_daily_bars_at_midnight_utc():
    base = {"symbol": "A", "interval": "1m", "ts": 1_767_225_600_000, "open": 1.0, "high": 2.0,
            "low": 1.0, "close": 1.0, "volume": 0.0, "source": "s"}
    assert parse_bar(json.dumps(base)).ts == base["ts"]
    for interval, ts, says in [("1m", base["ts"] + 30_000, "30 s into its minute"),
                               ("1h", base["ts"] + 7 * STEP, "420 s into its quarter hour"),
                               ("1d", base["ts"] + 4 * 3_600_000, "midnight UTC"),
                               ("5m", base["ts"] + 1, "0.001 s")]:
        with pytest.raises(Misaligned) as err:
            parse_bar(json.dumps({**base, "interval": interval, "ts": ts}))
        assert "not aligned" in err.value.reason and says in err.value.reason
        # the careful path says the same (an int given as a float takes it)
        with pytest.raises(Misaligned, match="not aligned"):
            parse_bar(json.dumps({**base, "interval": interval, "ts": float(ts)}))
    assert parse_bar(json.dumps({**base, "interval": "1d", "ts": 20_000 * DAY_MS})).ts
    # hourly bars of a session opening at :30 or :15 UTC (US stocks at 9:30 ET; India)
    assert parse_bar(json.dumps({**base, "interval": "1h", "ts": base["ts"] + 30 * STEP}))
    assert parse_bar(json.dumps({**base, "interval": "1h", "ts": base["ts"] + 45 * STEP}))


def test_an_hourly_series_keeps_its_phase():
    t = 1_767_225_600_000 + 30 * STEP  # 00:30 UTC
    clock = SeriesClock(lambda keys: {}, lambda: t + 10 * 3_600_000)
    bars = [_bar("H", t + k * 3_600_000, interval="1h") for k in range(3)]
    bars.insert(2, _bar("H", t + 3_600_000 + 15 * STEP, interval="1h"))  # 01:45: off phase
    screen = clock.screen(bars)
    assert list(screen.suspects) == [2]
    assert screen.suspects[2].startswith("Misaligned: ") and "15 min off" in screen.suspects[2]


def test_series_clock_refuses_far_ahead_and_follows_a_simulator_ahead_of_now():
    now = 1_800_000_000_000 - 1_800_000_000_000 % STEP
    stored = {("ACME", "1m"): now - 10 * STEP}
    clock = SeriesClock(lambda keys: {k: stored[k] for k in keys if k in stored}, lambda: now)
    far = _bar("ACME", 4_070_908_800_000)  # 2099-01-01
    edge = _bar("NEW", now + MAX_AHEAD_MS + STEP)  # a new series: now + 1 day + one interval
    over = _bar("NEW2", now + MAX_AHEAD_MS + 2 * STEP)
    screen = clock.screen([_bar("ACME", now - 9 * STEP), far, _bar("ACME", now - 8 * STEP),
                           edge, over])
    assert sorted(screen.suspects) == [1, 4]
    assert "2099-01-01" in screen.suspects[1] and "after the later of now" in screen.suspects[1]
    assert screen.latest[("ACME", "1m")] == now - 8 * STEP
    clock.commit(screen)
    # a simulated series ahead of the wall clock: two days of bars, one interval at a time
    chain = [_bar("NEW", now + MAX_AHEAD_MS + k * STEP) for k in range(2, 2 * 1440)]
    assert not clock.screen(chain).suspects
    # a correction (same ts) and a late bar are not ahead: they are "revised"
    again = clock.screen([_bar("ACME", now - 8 * STEP, 101.0), _bar("ACME", now - 20 * STEP)])
    assert not again.suspects and again.revised == [0, 1]


def test_simulator_resumes_after_the_last_real_bar_of_a_store_poisoned_before_the_rule(
        sqlite_store):
    """A store written before the rule (or around the indexer) holds a 2099 bar and four
    bars a simulator resumed after it; a simulated series runs two days ahead of the wall
    clock. The resume skips the first and follows the second."""
    store = sqlite_store
    now = int(time.time() * 1000) // STEP * STEP
    real = [_bar("ACME", now - k * STEP, 100.0 + k) for k in range(10, 0, -1)]
    poison = [_bar("ACME", 4_070_908_800_000 + k * STEP) for k in range(5)]
    ahead = [_bar("FAST", now + k * STEP, 50.0) for k in range(2 * 1440)]
    store.upsert_bars(real + poison + ahead)
    points = resume_points(store, ["ACME", "FAST"], "1m")
    assert points["ACME"] == (real[-1].ts, real[-1].close)
    assert points["FAST"] == (ahead[-1].ts, 50.0)
    first = next(iter(MarketSimulator(symbols=("ACME",), resume=points).bars(threading.Event())))
    assert first.ts == real[-1].ts + STEP


# ---- end to end ------------------------------------------------------------------------------
@pytest.mark.slow
def test_far_future_misaligned_and_mismatched_bars_are_dead_lettered_and_block_nothing(
        broker, topics, sqlite_store):
    store = sqlite_store
    history = list(MarketSimulator(symbols=("ACME", "GLOBX"), bars=400, seed=5)
                   .bars(threading.Event()))
    store.upsert_bars(history)
    assert train_default_model(store, "1m").promoted
    last = max(b.ts for b in history if b.symbol == "ACME")
    quiet = RetrainPolicy(every_bars=None, drift_factor=None)
    indexer = start_indexer(store, broker, topics, topics["bars"])
    scorer = start_scorer(store, broker, topics, f"sc-{topics['bars']}", policy=quiet)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        wait_for(lambda: joined(scorer), 30, "the scorer to join its group")
        real = [_bar("ACME", last + k * STEP, 180.0 + k) for k in range(1, 9)]
        now = int(time.time() * 1000) // STEP * STEP
        fast = [_bar("FAST", now - 10 * STEP + k * STEP) for k in range(1600)]  # its own clock
        sends: list[tuple[bytes | None, Bar]] = [
            *[(b"ACME", b) for b in real[:3]],
            (b"ACME", _bar("ACME", 4_070_908_800_000)),  # 2099-01-01, valid otherwise
            *[(b"ACME", b) for b in real[3:]],
            (b"ACME", _bar("ACME", real[-1].ts + 30_000)),  # a 1m bar at :30 s
            (b"ACME", _bar("GLOBX", last + STEP)),  # keyed with another symbol
            (None, _bar("GLOBX", last + 2 * STEP)),  # a null key
            (b"ACME", _bar("ACME", 20_100 * DAY_MS + 12 * 3_600_000, interval="1d")),  # noon
            (b"ACME", _bar("ACME", 20_100 * DAY_MS, interval="1d")),  # midnight UTC
            (b"NEWCO", _bar("NEWCO", now + 3 * DAY_MS)),  # a new series, 3 days ahead
            *[(b"FAST", b) for b in fast],
        ]
        for key, bar in sends:
            producer.send(topics["bars"], key=key, value=bar.to_json())
        producer.flush()
        n = len(sends)
        wait_for(lambda: counters(indexer)["consumed"] >= n, 60, "the indexer to read all")
        wait_for(lambda: counters(scorer)["consumed"] >= n, 60, "the scorer to read all")
        wait_for(lambda: len(store.query_predictions(symbol="ACME", start_ms=real[3].ts + STEP))
                 >= 5, 30, "the predictions after the 2099 bar")
        ic, sc = counters(indexer), counters(scorer)
    finally:
        producer.close()
        for wt in (scorer, indexer):
            wt.stop()

    dlq = dead_letters(broker.bootstrap, topics["dlq"])
    reasons = [d["reason"] for d in dlq]
    kinds = sorted(r.split(":")[0] for r in reasons)
    assert kinds == ["KeyMismatch", "Misaligned", "Misaligned", "SuspectTime", "SuspectTime"], \
        reasons
    assert any("2099-01-01" in r for r in reasons) and any("30 s into" in r for r in reasons)
    assert any("midnight UTC" in r for r in reasons)
    acme = store.query_bars("ACME", "1m")
    assert int(acme["ts"].max()) == real[-1].ts  # the real bars, not 2099
    assert set(acme["ts"]) >= {b.ts for b in real} and len(acme) == 400 + len(real)
    assert len(store.query_bars("GLOBX", "1m")) == 401  # the null-keyed bar
    assert len(store.query_bars("ACME", "1d")) == 1
    assert len(store.query_bars("FAST", "1m")) == len(fast)  # ahead of the wall clock: kept
    assert store.count_bars() == 2 * 400 + len(real) + 1 + 1 + len(fast)
    assert ic["stored"] + ic["rejected"] == n == ic["consumed"]
    assert ic["unkeyed"] == 1
    # The scorer skipped what the indexer refused and predicted every real bar after 2099.
    preds = store.query_predictions(symbol="ACME", interval="1m")
    after = preds[preds["base_ts"] > real[2].ts]
    assert sorted(after["base_ts"]) == [b.ts for b in real[3:]]
    assert sc["suspect"] == 2 and sc["invalid"] == 3
    # The Live chart's latest 150 one-minute candles span 150 minutes.
    candles = CandleFeed(store).latest("ACME", "1m", STEP, 150)
    assert int(candles["ts"].iloc[-1] - candles["ts"].iloc[0]) == 149 * STEP
    # A restarted simulator continues after the last real bar.
    point = resume_points(store, ["ACME"], "1m")["ACME"]
    assert point[0] == real[-1].ts
    first = next(iter(MarketSimulator(symbols=("ACME",), resume={"ACME": point})
                      .bars(threading.Event())))
    assert first.ts == real[-1].ts + STEP
    record_figures("time_sanity", {
        "sent": n, "stored": ic["stored"], "dead_lettered": len(dlq), "lost": 0,
        "dlq_reasons": kinds, "unkeyed_stored": ic["unkeyed"],
        "acme_predicted_after_2099": int(len(after)), "scorer_suspect": sc["suspect"],
        "latest_150_span_min": int(candles["ts"].iloc[-1] - candles["ts"].iloc[0]) // STEP + 1,
        "resume_first_ts": first.ts})
