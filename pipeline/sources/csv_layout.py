"""How a CSV header maps onto a bar: which columns hold the time, the prices, the volume and
the symbol (see :mod:`pipeline.sources.csv_replay` for the accepted layouts)."""
from __future__ import annotations

import re
from datetime import timezone
from pathlib import Path
from typing import Any, Callable

from pipeline.contracts.schema import Bar, InvalidBar, bar_from_mapping
from pipeline.sources.base import SourceError
from pipeline.sources.csv_time import _clip, generic_parser, seed_parser
from pipeline.sources.daily import normalise_daily_ts

TIMESTAMP_ALIASES = ("timestamp", "datetime", "date_time", "time_stamp", "ts", "date", "time")
#: A first column named like this (or not named at all) holds the time: pandas' to_csv().
INDEX_NAMES = ("", "index", "unnamed:_0", "unnamed_0", "price")
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "open": ("open", "o"),
    "high": ("high", "h"),
    "low": ("low", "l"),
    "close": ("close", "c"),
    "volume": ("volume", "vol", "v"),
}
ADJ_CLOSE_ALIASES = ("adj_close", "adjclose", "adj._close", "adjusted_close")
SYMBOL_ALIASES = ("symbol", "ticker", "sym")
NO_COLUMN = -1
SEED_HEADER = "Date,Time,Open,High,Low,Close,Volume"
GENERIC_HEADER = "timestamp,open,high,low,close,volume"


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


class CsvLayout:
    """Where each field sits in a row and how to read the timestamp."""

    def __init__(self, path: Path, header: list[str], template: str,
                 ts_columns: tuple[int, ...], fields: dict[str, int], symbol_col: int | None,
                 parse_ts: Callable[..., int], zone=timezone.utc, adjusted: str | None = None):
        self.path = path
        self.header = header
        self.template = template
        self.ts_columns = ts_columns
        self.fields = fields
        self.symbol_col = symbol_col
        self.parse_ts = parse_ts
        self.zone = zone
        self.adjusted = adjusted
        self.ts_label = "+".join(header[i] for i in ts_columns)
        self.width = len(header)
        self.numeric = [(name, idx, header[idx]) for name, idx in fields.items()
                        if idx != NO_COLUMN]

    @classmethod
    def from_header(cls, raw: list[str], path: Path, line: int, zone, *,
                    has_symbol: bool) -> "CsvLayout":
        header = [cell.strip() for cell in raw]
        keys = [_normalise(cell) for cell in header]
        index: dict[str, int] = {}
        for i, key in enumerate(keys):
            if key in index and key:
                raise CsvFormatError(path, line, None, f"the header names column {i + 1} like "
                                     "an earlier one")
            index[key] = i
        fields: dict[str, int] = {}
        adjusted = next((header[index[a]] for a in ADJ_CLOSE_ALIASES if a in index), None)
        if adjusted is not None and not any(a in index for a in FIELD_ALIASES["close"]):
            index["close"] = index[_normalise(adjusted)]  # only an adjusted close: use it
        for name, aliases in FIELD_ALIASES.items():
            found = next((index[a] for a in aliases if a in index), None)
            if found is None and name == "volume":
                fields[name] = NO_COLUMN  # forex files often have none: stored as 0
                continue
            if found is None:
                raise CsvFormatError(path, line, name,
                                     f"the header has no {name} column (it has "
                                     f"{_columns(header)}); expected {SEED_HEADER} or "
                                     f"{GENERIC_HEADER}")
            fields[name] = found
        symbol_col = next((index[a] for a in SYMBOL_ALIASES if a in index), None)
        if symbol_col is None and not has_symbol:
            raise CsvFormatError(path, line, "symbol", "the file has no symbol column and its "
                                 "name gives none; type the symbol (the Symbol field, or "
                                 "--symbols on the command line)")
        strong = [a for a in TIMESTAMP_ALIASES[:5] if a in index]
        if not strong and keys[0] in INDEX_NAMES:
            # pandas' df.to_csv() writes the DatetimeIndex as an unnamed (or "index") first
            # column; yfinance's files label it "Price" (with Ticker and Date rows below)
            return cls(path, header, "pandas", (0,), fields, symbol_col, generic_parser(zone), zone, adjusted)
        if not strong and "date" in index and "time" in index:
            return cls(path, header, "seed", (index["date"], index["time"]), fields, symbol_col,
                       seed_parser(zone), zone, adjusted)
        chosen = strong[0] if strong else next((a for a in ("date", "time") if a in index), None)
        if chosen is None:
            raise CsvFormatError(path, line, "timestamp",
                                 f"the header has no timestamp column (it has "
                                 f"{_columns(header)});"
                                 f" name it timestamp, datetime, ts, date or time, leave the "
                                 f"first column unnamed (as pandas writes it), or use "
                                 f"{SEED_HEADER}")
        return cls(path, header, "generic", (index[chosen],), fields, symbol_col,
                   generic_parser(zone), zone, adjusted)

    @property
    def notes(self) -> list[str]:
        """What the reader decided, in words, for the preview."""
        ts = "+".join(self.header[i] or "(unnamed first column)" for i in self.ts_columns)
        out = [f"time from {ts}"]
        if self.adjusted is not None:
            used = self.header[self.fields["close"]]
            out.append(f"close from {used}" + ("" if used == self.adjusted
                                               else f" ({self.adjusted} not used)"))
        if self.symbol_col is not None:
            out.append(f"symbol from column {self.header[self.symbol_col]}")
        if self.fields["volume"] == NO_COLUMN:
            out.append("no volume column: volume stored as 0")
        return out

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
        if interval == "1d":
            ts = normalise_daily_ts(ts, self.zone)
        f = self.fields
        try:
            mapping: dict[str, Any] = {
                "symbol": symbol, "interval": interval, "ts": ts, "open": float(row[f["open"]]),
                "high": float(row[f["high"]]), "low": float(row[f["low"]]),
                "close": float(row[f["close"]]), "volume": float(row[f["volume"]]) if f["volume"] != NO_COLUMN else 0.0,
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
                                 "is empty and no symbol was typed (the Symbol field, or "
                                 "--symbols)")
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


def _columns(header: list[str]) -> str:
    """How many columns the header has, never their text: a header error must not echo the
    first line of a file (a server path could name any file the server can read)."""
    return f"{len(header)} column" + ("" if len(header) == 1 else "s")


def _normalise(cell: str) -> str:
    return re.sub(r"[\s\-]+", "_", cell.strip().lower())
