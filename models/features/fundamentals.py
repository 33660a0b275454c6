"""The ``fundamentals`` feature group: each bar sees the latest fundamentals snapshot fetched
*before its end* (as-of join, no look-ahead).

A feature is ``fund_<value>`` for a value of :data:`pipeline.contracts.fundamentals.FUNDAMENTAL_VALUES`
(``fund_pe_ratio``, ``fund_eps``, ``fund_market_cap``...). With ``E`` = the bar's end (``ts`` +
interval), its value is the one in the symbol's snapshot with the largest effective time
``< E`` (half-open, like the sentiment windows: a snapshot fetched exactly at ``E`` belongs to
the next bar). It is NaN before the symbol's first snapshot and where that snapshot has no
figure (e.g. no P/E at a loss): unknown, not zero. The model lab leaves such rows out.

A snapshot's effective time is its fetch time, so history older than the first fetch has no
fundamentals: Alpha Vantage's OVERVIEW is a snapshot of *now*, and dating it back would leak
today's figures into the past. Collecting snapshots daily builds the history going forward.

One implementation, two shapes: :func:`fundamentals_features` (batch, the model lab) and
:class:`FundamentalsTracker` (incremental, for the live scorer: ``update_item(snapshot)``
whenever one arrives, ``update(bar)`` once per bar); ``tests/test_fundamentals_features.py``
checks that they agree bar for bar.
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Iterable

import numpy as np
import pandas as pd

from pipeline.contracts.fundamentals import FUNDAMENTAL_VALUES

PREFIX = "fund_"
FUNDAMENTALS_GROUP = ["fund_pe_ratio", "fund_eps", "fund_market_cap", "fund_dividend_yield",
                      "fund_price_to_book", "fund_beta"]


def is_fundamentals_feature(name: Any) -> bool:
    return (isinstance(name, str) and name.startswith(PREFIX)
            and name[len(PREFIX):] in FUNDAMENTAL_VALUES)


def fundamentals_features(bars: pd.DataFrame, fundamentals: pd.DataFrame | None,
                          names: list[str], interval: str | None = None) -> pd.DataFrame:
    """Feature frame (same index as ``bars``) for the fundamentals ``names``.

    ``bars`` needs ``ts`` and, when several series are mixed, ``symbol``; the interval comes
    from its ``interval`` column or from ``interval``. ``fundamentals`` has the store's
    columns (``symbol, ts`` and the values); ``None`` or empty means every feature NaN.
    """
    from pipeline.contracts.schema import interval_ms

    _check(names)
    out = np.full((len(bars), len(names)), np.nan)
    if not len(bars) or fundamentals is None or not len(fundamentals):
        return pd.DataFrame(out, index=bars.index, columns=names)
    if "interval" in bars.columns:
        steps = bars["interval"].astype(str).map(interval_ms).to_numpy(dtype="int64")
    elif interval is not None:
        steps = np.full(len(bars), interval_ms(interval), dtype="int64")
    else:
        raise ValueError("fundamentals features need the bar interval (an 'interval' column "
                         "or the interval argument)")
    ends = bars["ts"].to_numpy(dtype="int64") + steps
    symbols = (bars["symbol"].astype(str).to_numpy() if "symbol" in bars.columns
               else np.full(len(bars), "?", dtype=object))
    values = [n[len(PREFIX):] for n in names]
    snaps = fundamentals.sort_values(["ts"], kind="stable")
    for symbol, group in snaps.groupby(snaps["symbol"].astype(str), sort=False):
        pos = np.flatnonzero(symbols == symbol) if "symbol" in bars.columns else \
            np.arange(len(bars))
        if not len(pos):
            continue
        snap_ts = group["ts"].to_numpy(dtype="int64")
        # index of the last snapshot with ts < end; -1: none yet
        last = np.searchsorted(snap_ts, ends[pos], side="left") - 1
        known = last >= 0
        for j, value in enumerate(values):
            column = group[value].to_numpy(dtype="float64")
            out[pos[known], j] = column[last[known]]
    return pd.DataFrame(out, index=bars.index, columns=names)


def load_fundamentals(data: Any, bars: pd.DataFrame) -> pd.DataFrame | None:
    """Snapshots for the symbols of ``bars`` up to past their last bar, from a store (None for
    a DataFrame or a store without fundamentals)."""
    if isinstance(data, pd.DataFrame) or not hasattr(data, "query_fundamentals") \
            or not len(bars):
        return None
    end = int(bars["ts"].max()) + 86_400_000 * 8  # past the last bar's end, any interval
    parts = [data.query_fundamentals(str(s), None, end)
             for s in bars["symbol"].astype(str).unique()]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else None


class FundamentalsTracker:
    """Incremental fundamentals features for any number of symbols.

    ``update_item(snapshot)`` for each snapshot (a
    :class:`~pipeline.contracts.fundamentals.FundamentalsSnapshot` or a mapping with ``symbol, ts`` and
    the values, flat or under ``values``), in any order; ``update(bar)`` for each new bar of a
    symbol in ts order returns that bar's features. A snapshot that arrives late (effective
    before a bar already served) cannot change what was returned; later bars see it exactly
    as the batch join does.
    """

    def __init__(self, names: Iterable[str]):
        self.names = list(dict.fromkeys(names))
        _check(self.names)
        self._values = [n[len(PREFIX):] for n in self.names]
        # per symbol: snapshots sorted by ts as (ts, seq, values tuple); seq keeps arrival
        # order for equal ts, like the batch's stable sort by ts
        self._snaps: dict[str, list[tuple[int, int, tuple[float, ...]]]] = {}
        self._last_end: dict[tuple[str, str], int] = {}  # (symbol, interval) -> last bar end
        self._last: dict[tuple[str, str], dict[str, float]] = {}
        self._seq = 0

    def update_item(self, item: Any) -> None:
        get = item.get if isinstance(item, dict) else lambda k: getattr(item, k, None)
        nested = get("values")
        lookup = nested.get if isinstance(nested, dict) else get
        row = tuple(_float(lookup(v)) for v in self._values)
        self._seq += 1
        bisect.insort(self._snaps.setdefault(str(get("symbol")), []),
                      (int(get("ts")), self._seq, row))

    def update(self, bar: Any) -> dict[str, float]:
        from pipeline.contracts.schema import interval_ms

        get = bar.get if isinstance(bar, dict) else lambda k: getattr(bar, k)
        symbol, interval = str(get("symbol")), str(get("interval"))
        series = (symbol, interval)
        end = int(get("ts")) + interval_ms(interval)
        if series in self._last_end and end <= self._last_end[series]:
            return dict(self._last[series])  # a replayed or older bar
        # Snapshots are kept (a few per symbol and day): bars of another interval of the same
        # symbol may still need an older one.
        snaps = self._snaps.get(symbol, [])
        i = bisect.bisect_left(snaps, (end, -1, ())) - 1  # last with ts < end
        row = snaps[i][2] if i >= 0 else (math.nan,) * len(self.names)
        values = dict(zip(self.names, row))
        self._last_end[series], self._last[series] = end, values
        return dict(values)


def _float(v: Any) -> float:
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _check(names: Iterable[str]) -> None:
    bad = [n for n in names if not is_fundamentals_feature(n)]
    if bad:
        raise ValueError(f"unknown fundamentals feature {bad[0]!r}; use fund_ followed by one "
                         f"of: {', '.join(FUNDAMENTAL_VALUES)}")
