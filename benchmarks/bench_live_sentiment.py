"""Cost of the scorer's live sentiment features per bar, next to the bar features.

    python benchmarks/bench_live_sentiment.py [--bars 20000] [--news-rate 0.2]

Replays simulated bars and news (news first, as the scorer applies a poll's news before its
bars) through the scorer's parts on one thread, no broker or store: the streaming bar
features of the default group, :class:`models.live.news.LiveSentiment` for the sentiment
group, and the row merge of :class:`models.live.providers.ExtraFeatures`. Prints one JSON line: the
time per bar of each part in microseconds (median of 5 repeats) and per news item read.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from models.features import DEFAULT_FEATURES  # noqa: E402
from models.live.news import LiveSentiment  # noqa: E402
from models.live.providers import ExtraFeatures  # noqa: E402
from models.features.sentiment import SENTIMENT_GROUP  # noqa: E402
from models.streaming import StreamingFeatures  # noqa: E402
from pipeline.contracts.news import NewsItem  # noqa: E402
from pipeline.contracts.schema import Bar  # noqa: E402
from pipeline.sources.news_simulator import simulate_frames  # noqa: E402


class _NoStore:
    """No stored news: the benchmark measures the stream path only."""

    def query_news(self, symbol, start_ms=None, end_ms=None):
        import pandas as pd

        return pd.DataFrame(columns=["symbol", "ts", "source", "title", "url",
                                     "sentiment_score", "relevance"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", type=int, default=20_000, help="bars (one symbol)")
    ap.add_argument("--news-rate", type=float, default=0.2, help="news items per bar")
    args = ap.parse_args()
    frame, news = simulate_frames(("ACME",), "1m", args.bars, seed=3, news_rate=args.news_rate)
    bars = [Bar(r.symbol, r.interval, int(r.ts), r.open, r.high, r.low, r.close, r.volume,
                r.source) for r in frame.itertuples(index=False)]
    items = [NewsItem(r.symbol, int(r.ts), r.source, r.title, r.url, r.sentiment_score,
                      r.relevance) for r in news.itertuples(index=False)]
    step = 60_000
    by_bar: dict[int, list[NewsItem]] = {}
    for n in items:  # each item goes in just before the bar it belongs to
        by_bar.setdefault(n.ts - n.ts % step, []).append(n)
    features = [*DEFAULT_FEATURES, *SENTIMENT_GROUP]
    bar_names = list(DEFAULT_FEATURES)

    def run_bar_features() -> float:
        sf = StreamingFeatures(bar_names)
        t0 = time.perf_counter()
        for b in bars:
            sf.update(b.ts, b.open, b.high, b.low, b.close, b.volume)
        return time.perf_counter() - t0

    def run_sentiment() -> tuple[float, float, float]:
        live = LiveSentiment(_NoStore())
        extras = ExtraFeatures([live])
        extras.use(features)
        extras.start_series("ACME", "1m", bars[0].ts)
        row = np.zeros(len(bar_names))
        t_news = t_update = t_row = 0.0
        for b in bars:
            t0 = time.perf_counter()
            for n in by_bar.get(b.ts, ()):
                live.update_item(n)
            t1 = time.perf_counter()
            values = extras.update(b)
            t2 = time.perf_counter()
            extras.row(features, bar_names, row, values)
            t3 = time.perf_counter()
            t_news, t_update, t_row = t_news + t1 - t0, t_update + t2 - t1, t_row + t3 - t2
        return t_news, t_update, t_row

    bar_s = float(np.median([run_bar_features() for _ in range(5)]))
    runs = np.array([run_sentiment() for _ in range(5)])
    news_s, update_s, row_s = np.median(runs, axis=0)
    n = len(bars)
    print(json.dumps({
        "bars": n, "news": len(items), "sentiment_names": SENTIMENT_GROUP,
        "bar_features_us_per_bar": round(bar_s / n * 1e6, 2),
        "sentiment_update_us_per_bar": round(update_s / n * 1e6, 2),
        "row_merge_us_per_bar": round(row_s / n * 1e6, 2),
        "news_item_us": round(news_s / max(len(items), 1) * 1e6, 2),
    }))


if __name__ == "__main__":
    main()
