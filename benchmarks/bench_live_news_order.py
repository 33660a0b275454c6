"""How much simulated news reaches the live scorer in time for its own bar.

    python benchmarks/bench_live_news_order.py [--bars 150] [--speed 600]

The dashboard's setup on a private embedded broker and SQLite file: the news simulator feeds
bars to the producer and news to the news producer (two workers, two topics), the indexers
store both, and the scorer serves a champion trained in the model lab with the sentiment
group. Prints one JSON line: news items the scorer read (history included), those published
during the live bars, how many were late (published before
the end of a bar already predicted), and how many live bars' sentiment values differ from the
batch values of the same bars and news (atol 1e-9).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", type=int, default=150, help="live bars per symbol")
    ap.add_argument("--speed", type=float, default=600.0, help="simulated s per wall s")
    args = ap.parse_args()

    from models.adaptation import RetrainPolicy
    from models.lab import LabConfig, run_comparison
    from models.lab_runs import save_version
    from models.features.sentiment import SENTIMENT_GROUP, sentiment_features
    from pipeline.workers.broker import EmbeddedBroker
    from pipeline.contracts.config import load_config
    from pipeline.workers.runtime import Runtime, SimulatorSpec

    symbols = ("ACME", "GLOBX")
    tmp = Path(tempfile.mkdtemp(prefix="bench-news-order-"))
    broker = EmbeddedBroker(tmp / "broker.json")
    info = broker.start(reuse=False)
    rt = Runtime(load_config(env={"KAFKA_BOOTSTRAP_SERVERS": info.bootstrap,
                                  "KAPPALAB_DATA_DIR": str(tmp)}))
    try:
        spec = dict(symbols=symbols, news_rate=0.3, news_impact=1.5)
        rt.start_indexer()
        rt.start_simulator(SimulatorSpec(speed=None, bars=400, **spec))
        _wait(lambda: rt.store.count_bars() == 800, 120)
        rt.workers["producer"].stop()
        version = save_version(rt.store, run_comparison(rt.store, LabConfig(
            symbols=list(symbols), features=["default", "sentiment"],
            models=[("linear", {})])), "Linear regression", champion=True)
        scorer = rt.start_scorer(adapt=False, train_default=False,
                                 policy=RetrainPolicy(every_bars=None, drift_factor=None))
        _wait(lambda: "lag" in scorer.worker.stats(history=False)["gauges"], 60)
        before = len(scorer.worker.extras.providers[0].served)
        rt.start_simulator(SimulatorSpec(speed=args.speed, bars=args.bars, seed=8, **spec))
        live = scorer.worker.extras.providers[0]
        _wait(lambda: len(live.served) - before >= args.bars * len(symbols), 300)
        time.sleep(2)  # the last items
        counts = dict(live.counts)
        served = list(live.served)[before:]
        bars = pd.concat([rt.store.query_bars(s, "1m") for s in symbols], ignore_index=True)
        news = pd.concat([rt.store.query_news(s) for s in symbols], ignore_index=True)
        want = sentiment_features(bars, news, SENTIMENT_GROUP)
        want.index = pd.MultiIndex.from_arrays([bars["symbol"], bars["ts"]])
        got = np.array([[v[n] for n in SENTIMENT_GROUP] for *_, v in served])
        ref = want.loc[[(s, ts) for s, _, ts, _ in served]].to_numpy()
        differ = int((np.abs(got - ref) > 1e-9).any(axis=1).sum())
        print(json.dumps({"version": version, "live_bars": len(served),
                          "news_read": counts.get("read", 0),
                          "live_news": int((news["ts"] >= min(r[2] for r in served)).sum()),
                          "late": counts.get("late", 0),
                          "bars_differing_from_batch": differ,
                          "speed": args.speed}))
    finally:
        rt.shutdown()
        broker.stop()


def _wait(cond, timeout_s: float) -> None:
    deadline = time.time() + timeout_s
    while not cond():
        if time.time() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.1)


if __name__ == "__main__":
    main()
