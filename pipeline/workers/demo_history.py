"""The live demo's simulator settings and its history rules: where a restarted simulator
resumes each series and how much warm-up it still owes (none when the store already holds the
history). Used by :class:`pipeline.workers.runtime.Runtime` and the demo pipeline process."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.sources.simulator import DEFAULT_SYMBOLS
from pipeline.store import Store


@dataclass
class SimulatorSpec:
    """What the dashboard's simulator produces: symbols, interval, pace, warm-up, seed and the
    simulated news. Plain settings, copied into the producer when it starts."""

    symbols: tuple[str, ...] = DEFAULT_SYMBOLS
    interval: str = "1m"
    speed: float | None = 60.0  # a 1m bar per second per symbol
    warmup_bars: int = 0  # bars per symbol emitted at once before the live pace starts
    bars: int | None = None
    seed: int = 7
    params: dict[str, Any] = field(default_factory=dict)
    #: Simulated news on finance-news (pipeline/sources/news_simulator.py): items per symbol
    #: per bar (0 = no news feed) and their information about the next return (0 = none).
    news_rate: float = 0.0
    news_impact: float = 0.0


#: The dashboard's live demo: the simulator's default symbols, a 1m bar per second each, with a
#: warm-up history so charts and the model lab have data at once. Simulated news is on (cheap:
#: a few random draws per bar) but uninformative (impact 0).
DEFAULT_DEMO = SimulatorSpec(speed=60.0, warmup_bars=1500, news_rate=0.1)


def resume_points(store: Store, symbols, interval: str) -> dict[str, tuple[int, float]]:
    """Last stored (ts, close) per symbol, so a restarted simulator continues the series;
    a bar far ahead of the wall clock counts only as the end of a chain the time rule
    accepts (pipeline/workers/bar_rules.py: a simulator ahead of the clock, not a bar dated 2099)."""
    from pipeline.workers.bar_rules import MAX_AHEAD_MS, last_in_chain
    from pipeline.store.base import now_ms

    last = store.latest_bars(symbols, interval, 1)
    points = {r.symbol: (int(r.ts), float(r.close)) for r in last.itertuples(index=False)}
    edge = now_ms() + MAX_AHEAD_MS
    for symbol in [s for s, (ts, _) in points.items() if ts > edge]:
        point = last_in_chain(store, symbol, interval)  # a stray bar far ahead is no clock
        if point is None:
            del points[symbol]
        else:
            points[symbol] = point
    return points


def warmup_needed(store: Store, spec: SimulatorSpec) -> int:
    """Warm-up bars still to emit at once: none when the store already holds that much
    history for every symbol (a restart resumes the live demo, it adds no simulated day nobody
    saw), else what tops the shortest series up to ``spec.warmup_bars``."""
    if spec.warmup_bars <= 0:
        return 0
    have = min(store.count_bars(s, spec.interval) for s in spec.symbols)
    return max(0, spec.warmup_bars - have)
