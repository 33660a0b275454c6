"""Simulated news whose sentiment carries a known, configurable amount of information.

:class:`NewsMarketSimulator` wraps :class:`~pipeline.sources.simulator.MarketSimulator`: it
passes the bars through and, after each bar of a symbol, publishes a news item for that symbol
with probability ``news_rate``. The item is published inside the bar (its ``ts`` is drawn
uniformly in ``[bar ts, bar end)``), so it is visible as of that bar's close. Its fields:

- ``sentiment_score = tanh(z)`` with ``z ~ N(0, 1)``;
- ``relevance ~ U(0.2, 1)``.

The information: the *next* bar's log return gets an extra
``news_impact * bar_sigma * sentiment_score * relevance``, where ``bar_sigma`` is the
simulator's long-run volatility of one bar (``annual_vol * sqrt(interval / year)``). The whole
rest of that bar (and every later bar) is shifted by the same factor, so prices stay
continuous (the next bar opens at the previous close). So:

- ``news_impact = 0`` (the default): news is pure noise, and the honest answer of the model
  lab is "sentiment features give no skill";
- ``news_impact = 1``: an item with ``score * relevance = 0.5`` moves the next bar by half a
  typical bar move; on bars right after news, the correlation between ``score * relevance``
  and the next return is about ``impact * 0.35 / sqrt(1 + (impact * 0.35) ** 2)`` (0.33 at
  impact 1; ``sd(score * relevance)`` is about 0.35), diluted by the bars without news.

The news is drawn at the moment the bar it belongs to is produced, before the next bar exists,
so the information flows forward in time only: a live scorer that reads it gains exactly what
the lab measures. Seeded: the same seed gives the same bars and news.
"""
from __future__ import annotations

import math
import threading
import zlib
from collections import deque
from typing import Callable, Iterator

import numpy as np
import pandas as pd

from pipeline.contracts.news import NEWS_COLUMNS, NewsItem
from pipeline.contracts.schema import Bar
from pipeline.sources.base import Source
from pipeline.sources.simulator import _YEAR_MS, MarketSimulator

NEWS_SOURCE = "simulator"
_TOPICS = ("earnings", "guidance", "analyst rating", "product launch", "lawsuit",
           "supply chain", "management change", "buyback")


class NewsMarketSimulator(Source):
    """Bars of a :class:`MarketSimulator` plus informative news (see the module docstring).

    ``news_rate``: probability of a news item per symbol per bar (0..1).
    ``news_impact``: the information level, in bar standard deviations per unit of
    ``score * relevance`` (0 = no information).
    ``on_news``: called with each :class:`NewsItem` as it is published (the news producer's
    hook); without it, items are kept in :attr:`news` (a bounded deque) for the caller.
    Other keyword arguments go to :class:`MarketSimulator`.
    """

    def __init__(self, news_rate: float = 0.2, news_impact: float = 0.0,
                 on_news: Callable[[NewsItem], None] | None = None, max_kept: int = 100_000,
                 **simulator_kwargs):
        if not 0.0 <= news_rate <= 1.0:
            raise ValueError("news rate must be between 0 and 1 (items per symbol per bar)")
        if not math.isfinite(news_impact) or news_impact < 0:
            raise ValueError("news impact must be a finite number >= 0 (0 = no information)")
        self.market = MarketSimulator(**simulator_kwargs)
        self.name = self.market.name
        self.news_rate = float(news_rate)
        self.news_impact = float(news_impact)
        self.on_news = on_news
        self.news: deque[NewsItem] = deque(maxlen=max_kept)
        self.news_emitted = 0
        self._bar_sigma = self.market.params.annual_vol * math.sqrt(self.market.step_ms / _YEAR_MS)

    def describe(self) -> str:
        return (f"{self.market.describe()}, news {self.news_rate:g}/bar, "
                f"impact {self.news_impact:g}")

    def stats(self) -> dict:
        return {**self.market.stats(), "news_emitted": self.news_emitted}

    def bars(self, stop: threading.Event) -> Iterator[Bar]:
        m = self.market
        rngs = {s: np.random.default_rng([m.seed, 0x4E455753, zlib.crc32(s.encode())])
                for s in m.symbols}
        factor = {s: 1.0 for s in m.symbols}  # cumulative price multiplier from news so far
        pending = {s: 0.0 for s in m.symbols}  # log shift owed to the symbol's next bar
        for raw in m.bars(stop):
            s = raw.symbol
            before = factor[s]
            after = before * math.exp(pending[s])
            factor[s], pending[s] = after, 0.0
            yield _shifted(raw, before, after)
            rng = rngs[s]
            u, z, rel, when, topic = rng.random(), rng.standard_normal(), rng.uniform(0.2, 1.0), \
                rng.random(), int(rng.integers(len(_TOPICS)))
            if u >= self.news_rate:
                continue
            score = math.tanh(z)
            pending[s] = self.news_impact * self._bar_sigma * score * rel
            ts = raw.ts + int(when * m.step_ms)
            mood = "upbeat" if score > 0.3 else "gloomy" if score < -0.3 else "mixed"
            item = NewsItem(s, ts, NEWS_SOURCE, f"{s}: {mood} {_TOPICS[topic]} news",
                            f"sim://{s}/{ts}", round(score, 6), round(rel, 6))
            self.news_emitted += 1
            if self.on_news is not None:
                self.on_news(item)
            else:
                self.news.append(item)


def _shifted(bar: Bar, before: float, after: float) -> Bar:
    if before == after == 1.0:
        return bar
    open_ = round(bar.open * before, 4)
    close = round(bar.close * after, 4)
    high = max(round(bar.high * after, 4), open_, close)
    low = min(round(bar.low * after, 4), open_, close)
    return Bar(bar.symbol, bar.interval, bar.ts, open_, high, low, close, bar.volume, bar.source)


def simulate_frames(symbols=("ACME", "GLOBX"), interval: str = "1m", bars: int = 2000,
                    seed: int = 7, news_rate: float = 0.2, news_impact: float = 0.0,
                    **simulator_kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Bars and news of a finite run as DataFrames (for the model lab, tests and scripts)."""
    sim = NewsMarketSimulator(news_rate=news_rate, news_impact=news_impact,
                              symbols=list(symbols), interval=interval, bars=bars, seed=seed,
                              **simulator_kwargs)
    rows = [b.to_dict() for b in sim.bars(threading.Event())]
    news = pd.DataFrame([n.to_dict() for n in sim.news], columns=NEWS_COLUMNS)
    return pd.DataFrame(rows), news
