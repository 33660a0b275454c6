"""Formatting of numbers and timestamps for the pages."""
from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd


def ts_to_datetime(ts_ms) -> pd.Series | datetime:
    if isinstance(ts_ms, (pd.Series, pd.Index)):
        return pd.to_datetime(ts_ms, unit="ms", utc=True)
    return datetime.fromtimestamp(int(ts_ms) / 1000, tz=timezone.utc)


def fmt_ts(ts_ms) -> str:
    if ts_ms is None:
        return "—"
    return ts_to_datetime(ts_ms).strftime("%Y-%m-%d %H:%M UTC")


def fmt_num(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "—"
    if abs(x) >= 1_000_000:
        return f"{x / 1_000_000:,.{digits}f}M"
    if abs(x) >= 10_000:
        return f"{x / 1_000:,.1f}k"
    return f"{x:,.{digits}f}"


def fmt_duration(seconds: float | None) -> str:
    if not seconds:
        return "—"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s"
