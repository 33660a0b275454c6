"""Replay bars from a CSV file, row by row, as fast as possible or at a speed factor.

Two templates, recognised from the header (any column order, any case):

* the seed project's: ``Date,Time,Open,High,Low,Close,Volume`` with day-first dates
  (``31/01/2024``; ISO ``2024-01-31`` also works) and times ``09:30`` or ``09:30:00``;
* a generic one: one timestamp column (``timestamp``, ``datetime``, ``ts``, ``date`` or
  ``time``) holding ISO strings (``2024-01-31T09:30:00Z``) or epoch seconds / milliseconds,
  plus ``open,high,low,close,volume``.

An optional ``symbol`` (or ``ticker``) column overrides the ``symbol`` argument per row.
Timestamps without a zone are read in ``tz`` (UTC by default). The file is streamed with the
``csv`` module and never held in memory. Every row goes through
:func:`~pipeline.schema.bar_from_mapping`; a malformed row raises :class:`CsvFormatError`
naming the line and column, or with ``skip_bad=True`` is counted, sampled in ``stats()`` and
skipped.
"""
from __future__ import annotations

import csv
import logging
import re
import threading
import time
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline.schema import INTERVALS, Bar, InvalidBar, bar_from_mapping
from pipeline.sources.base import Source, SourceError

log = logging.getLogger(__name__)

TIMESTAMP_ALIASES = ("timestamp", "datetime", "date_time", "time_stamp", "ts", "date", "time")
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "open": ("open", "o"),
    "high": ("high", "h"),
    "low": ("low", "l"),
    "close": ("close", "c"),
    "volume": ("volume", "vol", "v"),
}
SYMBOL_ALIASES = ("symbol", "ticker", "sym")
SEED_HEADER = "Date,Time,Open,High,Low,Close,Volume"
GENERIC_HEADER = "timestamp,open,high,low,close,volume"
BAD_SAMPLES = 10
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_DAY_FIRST_SPLIT = re.compile(r"[/.\-]")


class CsvFormatError(SourceError):
    """A CSV row or header the replay cannot use: file, line, column and why."""

    def __init__(self, path: str | Path, line: int, column: str | None, why: str):
        where = f"{Path(path).name} line {line}"
        if column:
            where += f", column {column!r}"
        super().__init__(f"{where}: {why}.")
        self.path = str(path)
        self.line = line
        self.column = column
        self.why = why


class CsvReplaySource(Source):
    """Bars from a CSV file (see the module docstring for the accepted layouts).

    Parameters
    ----------
    path: the CSV file.
    symbol: symbol for every row, unless the file has a symbol column (then optional).
    interval: KappaLab interval written into each bar (1m/5m/15m/30m/1h/1d).
    speed: None replays as fast as possible; a factor (1.0 = real time, 60 = a minute per
        second) sleeps the gap between consecutive timestamps divided by ``speed``.
    skip_bad: skip malformed rows (counted and sampled in ``stats()``) instead of raising.
    tz: zone for timestamps that carry none (default UTC).
    max_gap: at a speed factor, longest single sleep in seconds (None: no cap), so overnight
        gaps need not stall a replay.
    delimiter: field separator; None detects one of , ; tab | from the header line.
    encoding: file encoding (a UTF-8 byte-order mark is ignored).
    name: written into each bar's ``source`` field.
    """

    name = "csv"

    def __init__(self, path: str | Path, symbol: str | None = None, interval: str = "1m",
                 speed: float | None = None, skip_bad: bool = False, *, tz: str = "UTC",
                 max_gap: float | None = None, delimiter: str | None = None,
                 encoding: str = "utf-8-sig", name: str = "csv"):
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"The CSV file {str(self.path)!r} does not exist or is not a file.")
        if interval not in INTERVALS:
            raise SourceError(f"CSV replay interval {interval!r} is not one of "
                              f"{', '.join(INTERVALS)}.")
        if speed is not None and not speed > 0:
            raise SourceError(f"CSV replay speed must be a positive factor or None, not {speed!r}.")
        try:
            self.zone = timezone.utc if tz.upper() == "UTC" else ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise SourceError(f"CSV replay tz {tz!r} is not a known time zone like "
                              "'UTC' or 'America/New_York'.") from None
        self.symbol = symbol.strip() if symbol else None
        self.interval = interval
        self.speed = speed
        self.skip_bad = skip_bad
        self.max_gap = max_gap
        self.delimiter = delimiter
        self.encoding = encoding
        self.name = name
        self._stats: dict[str, Any] = {"lines": 0, "bars": 0, "bad_lines": 0, "out_of_order": 0,
                                       "template": None}
        self._bad_samples: list[str] = []

    def describe(self) -> str:
        pace = "as fast as possible" if self.speed is None else f"at {self.speed:g}x"
        return f"CSV replay of {self.path.name} ({self.symbol or 'symbol column'} {self.interval}, {pace})"

    def stats(self) -> dict[str, Any]:
        out = dict(self._stats)
        out["bad_samples"] = list(self._bad_samples)
        return out

    def bars(self, stop: threading.Event) -> Iterator[Bar]:
        try:
            fh = open(self.path, newline="", encoding=self.encoding)
        except OSError as exc:
            raise SourceError(f"Cannot open the CSV file {self.path.name!r}: "
                              f"{exc.strerror or exc}.") from None
        with fh:
            try:
                yield from self._replay(fh, stop)
            except UnicodeDecodeError as exc:
                raise CsvFormatError(self.path, self._stats["lines"] + 1, None,
                                     f"the file is not {self.encoding} text ({exc.reason})") from None

    # -- details

    def _replay(self, fh, stop: threading.Event) -> Iterator[Bar]:
        delimiter = self.delimiter or _sniff_delimiter(fh)
        reader = csv.reader(fh, delimiter=delimiter)
        header: list[str] | None = None
        for header in reader:
            if any(cell.strip() for cell in header):
                break
        if not header or not any(cell.strip() for cell in header):
            raise CsvFormatError(self.path, max(reader.line_num, 1), None,
                                 "the file is empty; expected a header like "
                                 f"{SEED_HEADER} or {GENERIC_HEADER}")
        layout = _Layout.from_header(header, self.path, reader.line_num, self.zone,
                                     has_symbol=self.symbol is not None)
        self._stats["template"] = layout.template
        stats, samples = self._stats, self._bad_samples
        to_bar = layout.row_to_bar
        symbol, interval, source = self.symbol, self.interval, self.name
        speed, max_gap = self.speed, self.max_gap
        prev_ts: int | None = None
        due = 0.0
        lines = 0
        bars = 0
        try:
            for row in reader:
                lines += 1
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                try:
                    bar = to_bar(row, reader.line_num, symbol, interval, source)
                except CsvFormatError as exc:
                    if not self.skip_bad:
                        raise
                    stats["bad_lines"] += 1
                    if len(samples) < BAD_SAMPLES:
                        samples.append(str(exc))
                    continue
                if stop.is_set():
                    return
                if prev_ts is not None:
                    gap = bar.ts - prev_ts
                    if gap < 0:
                        stats["out_of_order"] += 1
                    if speed is not None:
                        pause = max(gap, 0) / 1000.0 / speed
                        if max_gap is not None:
                            pause = min(pause, max_gap)
                        due += pause
                        wait = due - time.monotonic()
                        if wait > 0 and stop.wait(wait):
                            return
                elif speed is not None:
                    due = time.monotonic()
                prev_ts = bar.ts
                bars += 1
                if bars & 0x3FF == 0:  # keep stats() fresh without paying per row
                    stats["lines"], stats["bars"] = lines, bars
                yield bar
        finally:
            stats["lines"], stats["bars"] = lines, bars
            if stats["bad_lines"]:
                log.warning("%s: skipped %d malformed line(s), e.g. %s", self.path.name,
                            stats["bad_lines"], samples[0] if samples else "")


class _Layout:
    """Where each field sits in a row and how to read the timestamp."""

    def __init__(self, path: Path, header: list[str], template: str,
                 ts_columns: tuple[int, ...], fields: dict[str, int], symbol_col: int | None,
                 parse_ts: Callable[..., int]):
        self.path = path
        self.header = header
        self.template = template
        self.ts_columns = ts_columns
        self.fields = fields
        self.symbol_col = symbol_col
        self.parse_ts = parse_ts
        self.ts_label = "+".join(header[i] for i in ts_columns)
        self.width = len(header)
        self.numeric = [(name, idx, header[idx]) for name, idx in fields.items()]

    @classmethod
    def from_header(cls, raw: list[str], path: Path, line: int, zone, *,
                    has_symbol: bool) -> "_Layout":
        header = [cell.strip() for cell in raw]
        keys = [_normalise(cell) for cell in header]
        index: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key in index and key:
                raise CsvFormatError(path, line, header[i], "the header names this column twice")
            index[key] = i
        fields: dict[str, int] = {}
        for name, aliases in FIELD_ALIASES.items():
            found = next((index[a] for a in aliases if a in index), None)
            if found is None:
                raise CsvFormatError(path, line, name,
                                     f"the header has no {name} column (it has "
                                     f"{', '.join(header)}); expected {SEED_HEADER} or "
                                     f"{GENERIC_HEADER}")
            fields[name] = found
        symbol_col = next((index[a] for a in SYMBOL_ALIASES if a in index), None)
        if symbol_col is None and not has_symbol:
            raise CsvFormatError(path, line, "symbol", "the file has no symbol column, so "
                                 "pass symbol= to CsvReplaySource")
        strong = [a for a in TIMESTAMP_ALIASES[:5] if a in index]
        if not strong and "date" in index and "time" in index:
            return cls(path, header, "seed", (index["date"], index["time"]), fields, symbol_col,
                       _seed_parser(zone))
        chosen = strong[0] if strong else next((a for a in ("date", "time") if a in index), None)
        if chosen is None:
            raise CsvFormatError(path, line, "timestamp",
                                 f"the header has no timestamp column (it has {', '.join(header)});"
                                 f" name it timestamp, datetime, ts, date or time, or use "
                                 f"{SEED_HEADER}")
        return cls(path, header, "generic", (index[chosen],), fields, symbol_col,
                   _generic_parser(zone))

    def row_to_bar(self, row: list[str], line: int, symbol: str | None, interval: str,
                   source: str) -> Bar:
        if len(row) != self.width:
            self._check_width(row, line)
        ts_cols = self.ts_columns
        try:
            ts = (self.parse_ts(row[ts_cols[0]]) if len(ts_cols) == 1
                  else self.parse_ts(row[ts_cols[0]], row[ts_cols[1]]))
        except ValueError as exc:
            raise CsvFormatError(self.path, line, self.ts_label, str(exc)) from None
        f = self.fields
        try:
            mapping: dict[str, Any] = {
                "symbol": symbol, "interval": interval, "ts": ts, "open": float(row[f["open"]]),
                "high": float(row[f["high"]]), "low": float(row[f["low"]]),
                "close": float(row[f["close"]]), "volume": float(row[f["volume"]]),
                "source": source}
        except ValueError:
            self._number_error(row, line)
            raise  # not reached: _number_error raises
        if self.symbol_col is not None:
            cell = row[self.symbol_col].strip()
            if cell:
                mapping["symbol"] = cell
        if not mapping["symbol"]:
            raise CsvFormatError(self.path, line, self.header[self.symbol_col or 0],
                                 "is empty and no symbol= was given")
        try:
            return bar_from_mapping(mapping)
        except InvalidBar as exc:
            raise CsvFormatError(self.path, line, self._column_of(exc.reason), exc.reason) from None

    def _number_error(self, row: list[str], line: int) -> None:
        for name, idx, label in self.numeric:
            text = row[idx]
            try:
                float(text)
            except ValueError:
                why = "is empty" if not text.strip() else f"{_clip(text)!r} is not a number"
                raise CsvFormatError(self.path, line, label, why) from None

    def _check_width(self, row: list[str], line: int) -> None:
        if len(row) < self.width:
            missing = self.header[len(row)]
            raise CsvFormatError(self.path, line, missing,
                                 f"the row has {len(row)} fields but the header has {self.width},"
                                 f" so this column is missing")
        if any(cell.strip() for cell in row[self.width:]):
            raise CsvFormatError(self.path, line, None,
                                 f"the row has {len(row)} fields but the header has {self.width}")

    def _column_of(self, reason: str) -> str | None:
        words = reason.split()
        name = words[1] if words and words[0] == "field" and len(words) > 1 else (words or [""])[0]
        if name == "ts":
            return self.ts_label
        if name in self.fields:
            return self.header[self.fields[name]]
        if name == "symbol" and self.symbol_col is not None:
            return self.header[self.symbol_col]
        return name or None


def _normalise(cell: str) -> str:
    return re.sub(r"[\s\-]+", "_", cell.strip().lower())


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _sniff_delimiter(fh) -> str:
    """The separator of the header line (one of , ; tab |), by :class:`csv.Sniffer`; a
    single-column file has none, so ``,``."""
    first = fh.readline()
    fh.seek(0)
    try:
        return csv.Sniffer().sniff(first, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


# -- timestamps: all return epoch milliseconds UTC and raise ValueError with the reason


def _generic_parser(zone) -> Callable[[str], int]:
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


def _seed_parser(zone) -> Callable[[str, str], int]:
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
