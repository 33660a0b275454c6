"""Replay bars from a CSV file, in time order, as fast as possible or at a speed factor.

Layouts recognised from the header (any column order, any case; see
:mod:`pipeline.sources.csv_layout`):

* pandas' ``df.to_csv()``: ``,Open,High,Low,Close,Volume`` with the dates in the unnamed (or
  ``index`` / ``Unnamed: 0``) first column; ``Adj Close`` is recognised (``Close`` is used
  when both are present);
* the seed project's: ``Date,Time,Open,High,Low,Close,Volume`` with day-first dates
  (``31/01/2024``; ISO ``2024-01-31`` also works) and times ``09:30`` or ``09:30:00``;
* a generic one: one timestamp column (``timestamp``, ``datetime``, ``ts``, ``date`` or
  ``time``) holding ISO strings, day-first dates or epoch seconds / milliseconds.

The symbol comes from a ``symbol`` (or ``ticker``) column, else the ``symbol`` argument, else
the file name (``GOOG.csv`` -> ``GOOG``, see :func:`symbol_from_filename`). The interval, when
not given, is inferred from the median spacing of the rows (:func:`infer_interval`).
Timestamps without a zone are read in ``tz`` (UTC by default; ``America/New_York`` for files
from US exchanges). Daily bars follow :mod:`pipeline.sources.daily`: midnight UTC of the date.

Before replaying, :meth:`CsvReplaySource.inspect` reads the file once in constant memory:
it checks every row, infers the interval and counts rows out of time order and duplicate
times. A file already in order is then streamed; one that is not (newest first, say) is loaded,
sorted by time and de-duplicated (the last row of a repeated time wins), and the counts are in
``stats()``. A malformed row raises :class:`CsvFormatError` naming the line and column, or with
``skip_bad=True`` is counted, sampled in ``stats()`` and skipped.
"""
from __future__ import annotations

import csv
import logging
import re
import statistics
import threading
import time
from dataclasses import dataclass, field
from datetime import timezone
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline.contracts.schema import INTERVALS, Bar
from pipeline.sources.base import Source, SourceError
from pipeline.sources.csv_layout import (
    GENERIC_HEADER, SEED_HEADER, CsvFormatError, CsvLayout,
)

log = logging.getLogger(__name__)

__all__ = ["CsvReplaySource", "CsvFormatError", "CsvInspection", "infer_interval",
           "symbol_from_filename", "US_EXCHANGE_TZ"]

BAD_SAMPLES = 10
PREVIEW_ROWS = 10
SPACING_SAMPLE = 5_000  # gaps used to infer the interval (enough for a stable median)
US_EXCHANGE_TZ = "America/New_York"
_NAME_NOISE = re.compile(
    r"([_\-. ](1m|5m|15m|30m|1h|60m|1d|daily|hourly|minute|min|intraday|data|prices?|bars|ohlcv?)"
    r"|[_\-. ]\d{4}([_\-.]?\d{2}){0,2})+$", re.IGNORECASE)


@dataclass
class CsvInspection:
    """What one read of the file found: shown to the user before anything is imported."""

    layout: str  # pandas / seed / generic
    notes: list[str]  # which column became what
    symbols: list[str]  # symbols in the rows (the column, the argument or the file name)
    symbol_from: str  # "column", "typed" or "file name"
    interval: str | None  # inferred (or given) interval
    spacing_ms: int | None  # median gap between consecutive rows of a symbol
    rows: int = 0  # data rows read
    bars: int = 0  # distinct bars after sorting and de-duplication
    bad_lines: int = 0
    out_of_order: int = 0  # rows earlier than the row before them
    duplicates: int = 0  # rows repeating a (symbol, time) already seen
    first_ts: int | None = None
    last_ts: int | None = None
    preview: list[dict[str, Any]] = field(default_factory=list)
    bad_samples: list[str] = field(default_factory=list)

    @property
    def sorted(self) -> bool:
        return not self.out_of_order and not self.duplicates

    def summary(self) -> str:
        """One line for the preview and the CLI."""
        origin = {"column": " (symbol column)", "file name": " (file name)"}.get(
            self.symbol_from, "")
        parts = [f"{self.rows:,} rows", f"{self.bars:,} bars of {', '.join(self.symbols) or '?'}"
                 f"{origin}", f"interval {self.interval or '?'}"]
        if self.out_of_order:
            parts.append(f"{self.out_of_order:,} out of time order (sorted before import)")
        if self.duplicates:
            parts.append(f"{self.duplicates:,} duplicate times (last row kept)")
        if self.bad_lines:
            parts.append(f"{self.bad_lines:,} malformed lines skipped")
        return "; ".join(parts)


def symbol_from_filename(path: str | Path) -> str | None:
    """``GOOG.csv`` -> ``GOOG``; ``eurusd_1h_2024.csv`` -> ``EURUSD``; None when nothing is left."""
    name = Path(path).name
    stem = name[: -len(Path(name).suffix)] if Path(name).suffix.lower() in (".csv", ".txt") \
        else name
    stem = _NAME_NOISE.sub("", stem.strip())
    stem = re.sub(r"[^A-Za-z0-9.^=\-]+", "", stem)
    return stem.upper() or None


def infer_interval(spacing_ms: int | None) -> str | None:
    """The interval whose length is nearest to the median spacing, within 10%; None if none.

    Daily files skip weekends and holidays, but most gaps are one day, so the median is too.
    """
    if not spacing_ms:
        return None
    name, length = min(INTERVALS.items(), key=lambda kv: abs(kv[1] - spacing_ms))
    return name if abs(length - spacing_ms) <= 0.1 * length else None


def describe_spacing(ms: int | None) -> str:
    if not ms:
        return "unknown"
    for unit, size in (("day", 86_400_000), ("hour", 3_600_000), ("minute", 60_000)):
        if ms >= size:
            n = ms / size
            return f"{n:g} {unit}{'' if n == 1 else 's'}"
    return f"{ms / 1000:g} s"


class CsvReplaySource(Source):
    """Bars from a CSV file (see the module docstring for the accepted layouts).

    Parameters
    ----------
    path: the CSV file.
    symbol: symbol for every row, unless the file has a symbol column; None takes the symbol
        from the file name.
    interval: KappaLab interval (1m/5m/15m/30m/1h/1d); None infers it from the rows' spacing.
    speed: None replays as fast as possible; a factor (1.0 = real time, 60 = a minute per
        second) sleeps the gap between consecutive timestamps divided by ``speed``.
    skip_bad: skip malformed rows (counted and sampled in ``stats()``) instead of raising.
    tz: zone for timestamps that carry none (default UTC).
    max_gap: at a speed factor, longest single sleep in seconds (None: no cap), so overnight
        gaps need not stall a replay.
    delimiter: field separator; None detects one of , ; tab | from the header line.
    encoding: file encoding (a UTF-8 byte-order mark is ignored).
    name: written into each bar's ``source`` field.
    display_name: the file name shown in messages (an uploaded file's original name).
    """

    name = "csv"

    def __init__(self, path: str | Path, symbol: str | None = None, interval: str | None = "1m",
                 speed: float | None = None, skip_bad: bool = False, *, tz: str = "UTC",
                 max_gap: float | None = None, delimiter: str | None = None,
                 encoding: str = "utf-8-sig", name: str = "csv",
                 display_name: str | None = None):
        self.path = Path(path)
        self.display_name = display_name or self.path.name
        if not self.path.is_file():
            raise SourceError(f"The CSV file {str(self.path)!r} does not exist or is not a file.")
        if interval is not None and interval not in INTERVALS:
            raise SourceError(f"The interval {interval!r} is not one of {', '.join(INTERVALS)} "
                              "(--interval, or the Interval field).")
        if speed is not None and not speed > 0:
            raise SourceError(f"The replay speed must be above 0, not {speed!r} (--speed, or the "
                              "Speed field; leave it out, or 0 in the field, for as fast as "
                              "possible).")
        try:
            self.zone = timezone.utc if tz.upper() == "UTC" else ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise SourceError(f"The time zone {tz!r} is unknown: use a name like UTC or "
                              f"{US_EXCHANGE_TZ} (--tz, or the Time zone field).") from None
        self.symbol_typed = bool(symbol and symbol.strip())
        self.symbol = symbol.strip() if self.symbol_typed else symbol_from_filename(
            self.display_name)
        self.interval = interval
        self.speed = speed
        self.skip_bad = skip_bad
        self.max_gap = max_gap
        self.delimiter = delimiter
        self.encoding = encoding
        self.name = name
        self._stats: dict[str, Any] = {"lines": 0, "bars": 0, "bad_lines": 0, "out_of_order": 0,
                                       "duplicates": 0, "template": None, "interval": interval}
        self._bad_samples: list[str] = []
        self._inspection: CsvInspection | None = None

    def describe(self) -> str:
        pace = "as fast as possible" if self.speed is None else f"at {self.speed:g}x"
        return (f"CSV replay of {self.display_name} ({self.symbol or 'symbol column'} "
                f"{self.interval or 'interval from the file'}, {pace})")

    def stats(self) -> dict[str, Any]:
        out = dict(self._stats)
        out["bad_samples"] = list(self._bad_samples)
        return out

    def inspect(self, preview_rows: int = PREVIEW_ROWS) -> CsvInspection:
        """Read the whole file once (constant memory): layout, symbols, interval, order, counts.

        Raises :class:`CsvFormatError` for the first malformed row unless ``skip_bad``, and
        :class:`SourceError` when no interval was given and none fits the rows' spacing.
        """
        with self._open() as fh:
            reader, layout = self._reader(fh)
            insp = self._scan(reader, layout, preview_rows)
        if self.interval is None:
            insp.interval = infer_interval(insp.spacing_ms)
            if insp.interval is None and insp.bars:
                raise SourceError(
                    f"{self.display_name}: the rows are {describe_spacing(insp.spacing_ms)} "
                    f"apart, which matches no interval ({', '.join(INTERVALS)}); choose one "
                    "(--interval, or the Interval field).")
        else:
            insp.interval = self.interval
        self._inspection = insp
        self._stats.update(template=insp.layout, interval=insp.interval)
        return insp

    def bars(self, stop: threading.Event) -> Iterator[Bar]:
        """Checks the file first (:meth:`inspect`, unless done), then returns the bars in time
        order: streamed when the file is in order, sorted in memory when it is not."""
        insp = self._inspection or self.inspect()
        self.interval = self.interval or insp.interval or "1m"
        self._stats.update(out_of_order=insp.out_of_order, duplicates=insp.duplicates)
        ordered = self._stream(stop) if insp.sorted else iter(self._sorted(stop))
        return self._paced(ordered, stop)

    # -- reading

    def _open(self):
        try:
            return open(self.path, newline="", encoding=self.encoding)
        except OSError as exc:
            raise SourceError(f"Cannot open the CSV file {self.display_name!r}: "
                              f"{exc.strerror or exc}.") from None

    def _reader(self, fh) -> tuple[Any, CsvLayout]:
        delimiter = self.delimiter or _sniff_delimiter(fh)
        reader = csv.reader(fh, delimiter=delimiter)
        header: list[str] | None = None
        try:
            for header in reader:
                if any(cell.strip() for cell in header):
                    break
        except UnicodeDecodeError as exc:
            raise CsvFormatError(self.display_name, 1, None,
                                 f"the file is not {self.encoding} text ({exc.reason})") from None
        if not header or not any(cell.strip() for cell in header):
            raise CsvFormatError(self.display_name, max(reader.line_num, 1), None,
                                 "the file is empty; expected a header like "
                                 f"{SEED_HEADER} or {GENERIC_HEADER}")
        rows = _HeaderRows(reader)
        ticker = rows.skip_extra_header_rows(header)
        if ticker and not self.symbol_typed:
            self.symbol = ticker  # yfinance's "Ticker" row names the symbol
        layout = CsvLayout.from_header(header, Path(self.display_name), reader.line_num,
                                       self.zone, has_symbol=self.symbol is not None)
        return rows, layout

    def _rows(self, reader, layout: CsvLayout, interval: str) -> Iterator[tuple[int, Bar]]:
        """(line number, bar) per good row; bad rows raise or are counted and sampled."""
        to_bar, symbol, source = layout.row_to_bar, self.symbol, self.name
        try:
            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                try:
                    yield reader.line_num, to_bar(row, reader.line_num, symbol, interval, source)
                except CsvFormatError as exc:
                    if not self.skip_bad:
                        raise
                    self._stats["bad_lines"] += 1
                    if len(self._bad_samples) < BAD_SAMPLES:
                        self._bad_samples.append(str(exc))
        except UnicodeDecodeError as exc:
            raise CsvFormatError(self.display_name, reader.line_num + 1, None,
                                 f"the file is not {self.encoding} text ({exc.reason})") from None

    def _scan(self, reader, layout: CsvLayout, preview_rows: int) -> CsvInspection:
        last: dict[str, int] = {}
        gaps: list[int] = []
        symbols: dict[str, None] = {}
        insp = CsvInspection(layout.template, layout.notes, [], "", None, None)
        # Raw times (no daily normalisation) while the interval is not known yet.
        interval = self.interval or "1m"
        self._stats["bad_lines"], self._bad_samples[:] = 0, []
        for _, bar in self._rows(reader, layout, interval):
            insp.rows += 1
            symbols.setdefault(bar.symbol)
            prev = last.get(bar.symbol)
            if prev is not None:
                if bar.ts < prev:
                    insp.out_of_order += 1
                elif bar.ts == prev:
                    insp.duplicates += 1
                if bar.ts != prev and len(gaps) < SPACING_SAMPLE:
                    gaps.append(abs(bar.ts - prev))
            last[bar.symbol] = bar.ts
            insp.first_ts = bar.ts if insp.first_ts is None else min(insp.first_ts, bar.ts)
            insp.last_ts = bar.ts if insp.last_ts is None else max(insp.last_ts, bar.ts)
            if len(insp.preview) < preview_rows:
                insp.preview.append({"line": reader.line_num, "symbol": bar.symbol, "ts": bar.ts,
                                     "open": bar.open, "high": bar.high, "low": bar.low,
                                     "close": bar.close, "volume": bar.volume})
        insp.symbols = list(symbols)
        insp.symbol_from = ("column" if layout.symbol_col is not None else
                            "typed" if self.symbol_typed else "file name")
        insp.spacing_ms = int(statistics.median(gaps)) if gaps else None
        insp.bad_lines = self._stats["bad_lines"]
        insp.bad_samples = list(self._bad_samples)
        # Duplicates out of order are only found by sorting; the exact count comes then.
        insp.bars = insp.rows - insp.duplicates
        return insp

    def _stream(self, stop: threading.Event) -> Iterator[Bar]:
        with self._open() as fh:
            reader, layout = self._reader(fh)
            self._stats["bad_lines"], self._bad_samples[:] = 0, []
            lines = bars = 0
            try:
                for line, bar in self._rows(reader, layout, self.interval):
                    if stop.is_set():
                        return
                    bars += 1
                    lines = line
                    if bars & 0x3FF == 0:  # keep stats() fresh without paying per row
                        self._stats["lines"], self._stats["bars"] = lines, bars
                    yield bar
            finally:
                self._stats["lines"], self._stats["bars"] = lines, bars
                self._log_bad()

    def _sorted(self, stop: threading.Event) -> list[Bar]:
        """The whole file in time order, one bar per (symbol, time): the last row wins."""
        with self._open() as fh:
            reader, layout = self._reader(fh)
            self._stats["bad_lines"], self._bad_samples[:] = 0, []
            latest: dict[tuple[str, int], Bar] = {}
            lines = 0
            for line, bar in self._rows(reader, layout, self.interval):
                if stop.is_set():
                    return []
                latest[(bar.symbol, bar.ts)] = bar
                lines += 1
        self._stats["duplicates"] = lines - len(latest)
        self._stats["lines"] = reader.line_num
        self._log_bad()
        return sorted(latest.values(), key=lambda b: (b.ts, b.symbol))

    def _paced(self, bars: Iterator[Bar], stop: threading.Event) -> Iterator[Bar]:
        speed, max_gap = self.speed, self.max_gap
        prev_ts: int | None = None
        due = 0.0
        count = 0
        for bar in bars:
            if stop.is_set():
                return
            if speed is not None:
                if prev_ts is None:
                    due = time.monotonic()
                else:
                    pause = max(bar.ts - prev_ts, 0) / 1000.0 / speed
                    if max_gap is not None:
                        pause = min(pause, max_gap)
                    due += pause
                    wait = due - time.monotonic()
                    if wait > 0 and stop.wait(wait):
                        return
            prev_ts = bar.ts
            count += 1
            self._stats["bars"] = count
            yield bar

    def _log_bad(self) -> None:
        if self._stats["bad_lines"]:
            log.warning("%s: skipped %d malformed line(s), e.g. %s", self.display_name,
                        self._stats["bad_lines"],
                        self._bad_samples[0] if self._bad_samples else "")


class _HeaderRows:
    """The csv reader after the header, past the extra header rows yfinance writes
    (``Price,Close,…`` then ``Ticker,GOOG,…`` then ``Date,,,…``), keeping ``line_num``."""

    def __init__(self, reader):
        self.reader = reader
        self.pending: list[list[str]] = []

    @property
    def line_num(self) -> int:
        return self.reader.line_num

    def __iter__(self):
        return self

    def __next__(self) -> list[str]:
        return self.pending.pop() if self.pending else next(self.reader)

    def skip_extra_header_rows(self, header: list[str]) -> str | None:
        if header[0].strip().lower() != "price":
            return None
        ticker = None
        for row in self.reader:
            first = row[0].strip().lower() if row else ""
            rest = {c.strip() for c in row[1:]}
            if first == "ticker" and len(rest) == 1:
                ticker = rest.pop() or None
            elif first in ("date", "datetime") and rest <= {""}:
                pass  # yfinance's empty "Date,,,," row: no data, nothing to learn
            else:
                self.pending.append(row)
                break
        return ticker


def _sniff_delimiter(fh) -> str:
    """The separator of the header line (one of , ; tab |), by :class:`csv.Sniffer`; a
    single-column file has none, so ``,``."""
    first = fh.readline()
    fh.seek(0)
    try:
        return csv.Sniffer().sniff(first, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","
