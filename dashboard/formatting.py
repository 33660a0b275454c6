"""Formatting of numbers and timestamps for the pages: significant figures, never ``1.56e-07``
or ``None``; times in UTC, shown next to the epoch milliseconds they come from."""
from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

import pandas as pd

MISSING = "—"


def ts_to_datetime(ts_ms) -> pd.Series | datetime:
    if isinstance(ts_ms, (pd.Series, pd.Index)):
        return pd.to_datetime(ts_ms, unit="ms", utc=True)
    return datetime.fromtimestamp(int(ts_ms) / 1000, tz=timezone.utc)


def fmt_ts(ts_ms) -> str:
    if ts_ms is None or (isinstance(ts_ms, float) and ts_ms != ts_ms):
        return MISSING
    return ts_to_datetime(ts_ms).strftime("%Y-%m-%d %H:%M UTC")


def fmt_sig(x: Any, digits: int = 4) -> str:
    """``digits`` significant figures in plain notation: 1.5612e-07 -> ``0.0000001561``,
    1234567 -> ``1,234,567``, None/NaN -> ``—``."""
    if x is None or isinstance(x, bool):
        return MISSING if x is None else str(x)
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(v):
        return MISSING
    if v == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(v)))
    if magnitude >= digits - 1:
        return f"{v:,.0f}"
    decimals = min(digits - 1 - magnitude, 12)
    return f"{v:,.{decimals}f}".rstrip("0").rstrip(".")


def fmt_num(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and x != x):
        return MISSING
    if abs(x) >= 1_000_000:
        return f"{x / 1_000_000:,.{digits}f}M"
    if abs(x) >= 10_000:
        return f"{x / 1_000:,.1f}k"
    if x and abs(x) < 10 ** -digits:
        return fmt_sig(x, 3)  # tiny values keep their digits instead of showing 0.00
    return f"{x:,.{digits}f}"


def fmt_pct_change(ratio: float) -> str:
    """A signed percentage that never reads +0.00% for a real move: +0.12%, +0.00077%."""
    pct = ratio * 100
    if not math.isfinite(pct):
        return MISSING
    if pct == 0:
        return "0%"
    text = f"{pct:.2f}" if abs(pct) >= 0.01 else fmt_sig(pct, 2)
    return ("+" if pct > 0 else "") + text + "%"


def fmt_duration(seconds: float | None) -> str:
    if not seconds:
        return MISSING
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s"


def with_time_column(df: pd.DataFrame, column: str = "ts") -> pd.DataFrame:
    """``df`` with ``time (UTC)`` (ISO 8601) right after the epoch-ms ``column``: for tables
    and for CSV exports, so a person reads the date and a program keeps the exact number."""
    if column not in df.columns or df.empty:
        return df
    out = df.copy()
    at = list(out.columns).index(column) + 1
    out.insert(at, "time (UTC)", ts_to_datetime(out[column]).dt.strftime("%Y-%m-%d %H:%M:%S"))
    return out


def display_frame(df: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """``df`` with every number written out (:func:`fmt_sig`; epoch ms as plain integers) and
    missing values as ``—``: st.dataframe shows a null cell as "None" whatever the Styler says,
    so the text is made here."""
    out = df.copy()
    for c in out.columns:
        col = out[c]
        if pd.api.types.is_bool_dtype(col):
            continue
        if is_epoch_column(c) and pd.api.types.is_numeric_dtype(col):
            out[c] = [MISSING if v != v or v is None else f"{int(v)}" for v in col]
        elif pd.api.types.is_numeric_dtype(col):
            out[c] = [fmt_sig(v, digits) for v in col]
        elif col.dtype == object:
            out[c] = [MISSING if v is None or (isinstance(v, float) and v != v)
                      else fmt_sig(v, digits) if isinstance(v, (int, float))
                      and not isinstance(v, bool) else v for v in col]
    return out


def sig_styler(df: pd.DataFrame, digits: int = 4):
    """A Styler of :func:`display_frame` (so styles can still be added)."""
    return display_frame(df, digits).style


def is_epoch_column(name) -> bool:
    """Epoch-millisecond columns are shown as plain integers, never rounded or grouped."""
    name = str(name)
    return name == "ts" or name.endswith("_ts") or name.endswith("_ms")
