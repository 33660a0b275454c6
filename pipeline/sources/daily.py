"""The one convention for daily bars, shared by every source.

A daily bar's ``ts`` is **midnight UTC of the trading date**, whatever the exchange's time zone.
Alpha Vantage labels a day ``2024-01-31``, Polygon sends midnight US/Eastern in epoch
milliseconds, a CSV file holds a date (or a date-time in the zone of ``--tz``): all three become
``2024-01-31T00:00:00Z``. One day is then one bar with one document ID in the store, whichever
source wrote it, and the date shown in UTC is the date the exchange printed.
"""
from __future__ import annotations

from datetime import date, datetime, timezone, tzinfo

DAY_MS = 86_400_000


def daily_ts(day: date) -> int:
    """Epoch milliseconds of midnight UTC on ``day``."""
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp() * 1000)


def normalise_daily_ts(ts_ms: int, zone: tzinfo = timezone.utc) -> int:
    """A bar start in ``zone`` (epoch ms) moved to midnight UTC of its local date in ``zone``."""
    local = datetime.fromtimestamp(ts_ms / 1000, tz=zone)
    return daily_ts(local.date())


def nearest_utc_midnight(ts_ms: int) -> int:
    """Polygon's daily ``t`` is midnight in the exchange's zone (04:00/05:00 UTC for US stocks,
    00:00 UTC for crypto and forex); the nearest UTC midnight is the trading date in all cases."""
    return int(round(ts_ms / DAY_MS)) * DAY_MS
