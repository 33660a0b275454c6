"""Timestamp parsing for CSV replay: every parser returns epoch milliseconds UTC and raises
``ValueError`` with the reason (the replay adds file, line and column)."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Callable

_DAY_FIRST_SPLIT = re.compile(r"[/.\-]")


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- timestamps: all return epoch milliseconds UTC and raise ValueError with the reason


def generic_parser(zone) -> Callable[[str], int]:
    utc = zone is timezone.utc

    def parse(text: str) -> int:
        s = text.strip()
        if not s:
            raise ValueError("is empty")
        if s[0].isdigit() and s.replace(".", "", 1).isdigit():
            return _epoch_to_ms(float(s), s)
        if "/" in s:
            return _day_first(s, zone)
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            raise ValueError(f"{_clip(s)!r} is not an ISO date-time, day-first date or epoch "
                             "seconds/milliseconds") from None
        if dt.tzinfo is None:
            if utc:
                return (dt - _NAIVE_EPOCH) // _MS
            dt = dt.replace(tzinfo=zone)
        return int(dt.timestamp() * 1000)

    return parse


def seed_parser(zone) -> Callable[[str, str], int]:
    utc = zone is timezone.utc

    def parse(date_text: str, time_text: str) -> int:
        d = date_text.strip()
        t = time_text.strip()
        if not d:
            raise ValueError("the date is empty")
        if not t:
            raise ValueError("the time is empty")
        if utc:
            return _day_ms(d) + _time_ms(t)
        day = _day(d)
        h, m, s, us = _time_parts(t)
        local = datetime(day.year, day.month, day.day, h, m, s, us, tzinfo=zone)
        return int(local.timestamp() * 1000)

    return parse


_NAIVE_EPOCH = datetime(1970, 1, 1)
_MS = timedelta(milliseconds=1)


def _epoch_to_ms(value: float, text: str) -> int:
    # Magnitude decides the unit: seconds until year 5138, then ms, us, ns.
    if value < 1e11:
        return int(round(value * 1000))
    if value < 1e14:
        return int(round(value))
    if value < 1e17:
        return int(value // 1000)
    if value < 1e20:
        return int(value // 1_000_000)
    raise ValueError(f"{_clip(text)!r} is too large for epoch seconds or milliseconds")


@lru_cache(maxsize=4096)
def _day(text: str) -> datetime:
    """A date: ISO ``2024-01-31`` or day-first ``31/01/2024`` / ``31.01.24``."""
    if len(text) >= 10 and text[4] == "-" and text[:4].isdigit():
        try:
            return datetime.fromisoformat(text[:10])
        except ValueError:
            raise ValueError(f"{_clip(text)!r} is not a valid date") from None
    parts = _DAY_FIRST_SPLIT.split(text)
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"{_clip(text)!r} is not a date like 31/01/2024")
    day, month, year = (int(p) for p in parts)
    if year < 100:
        year += 2000
    try:
        return datetime(year, month, day)
    except ValueError as exc:
        raise ValueError(f"{_clip(text)!r} is not a valid day-first date ({exc})") from None


@lru_cache(maxsize=4096)
def _day_ms(text: str) -> int:
    return (_day(text) - _NAIVE_EPOCH) // _MS


def _time_parts(text: str) -> tuple[int, int, int, int]:
    parts = text.split(":")
    try:
        if len(parts) == 2:
            h, m, sec = int(parts[0]), int(parts[1]), 0.0
        elif len(parts) == 3:
            h, m, sec = int(parts[0]), int(parts[1]), float(parts[2])
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"{_clip(text)!r} is not a time like 09:30 or 09:30:00") from None
    if not (0 <= h < 24 and 0 <= m < 60 and 0 <= sec < 61):
        raise ValueError(f"{_clip(text)!r} is not a valid time of day")
    whole = int(sec)
    return h, m, whole, int(round((sec - whole) * 1e6))


@lru_cache(maxsize=4096)
def _time_ms(text: str) -> int:
    h, m, s, us = _time_parts(text)
    return ((h * 60 + m) * 60 + s) * 1000 + us // 1000


def _day_first(text: str, zone) -> int:
    date_part, _, time_part = text.replace("T", " ").partition(" ")
    time_part = time_part.strip()
    if zone is timezone.utc:
        return _day_ms(date_part) + (_time_ms(time_part) if time_part else 0)
    day = _day(date_part)
    h, m, s, us = _time_parts(time_part) if time_part else (0, 0, 0, 0)
    return int(datetime(day.year, day.month, day.day, h, m, s, us, tzinfo=zone).timestamp() * 1000)
