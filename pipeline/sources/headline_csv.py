"""Plain headlines from a CSV file, scored with VADER, as news items.

The file needs a header with a symbol column (``symbol`` or ``ticker``), a publication time
column (``published``, ``time``, ``datetime``, ``date`` or ``ts``) and a headline column
(``title`` or ``headline``); ``url``, ``source`` and ``relevance`` columns are used when present
(relevance defaults to 1). A symbol for the whole file can be given instead of the column.

Times: epoch milliseconds or seconds (integers), or ISO 8601 text. Text without an offset is
read in ``time_zone`` (default UTC). Each headline's ``sentiment_score`` is VADER's
``compound`` score in [-1, 1], from the lexicon that ships inside the ``vaderSentiment``
package: nothing is downloaded at run time. VADER is a general-purpose social-media lexicon,
not a finance model: it reads "beats" and "soar" as positive, but knows nothing of "guidance
cut"; treat its scores as a baseline.

Rows that cannot be read are skipped and counted (``stats()``), with the first few reasons.
"""
from __future__ import annotations

import csv
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pipeline.contracts.news import InvalidNews, NewsItem, news_from_mapping
from pipeline.sources.base import SourceError

SYMBOL_COLUMNS = ("symbol", "ticker")
TIME_COLUMNS = ("published", "time", "datetime", "date", "ts")
TITLE_COLUMNS = ("title", "headline")
BATCH = 500


@dataclass
class HeadlinePreview:
    """What an import of the file would publish, read once without publishing anything."""

    rows: int = 0  # data rows in the file
    items: int = 0  # rows that became news items
    skipped: int = 0  # malformed rows that will be skipped
    skipped_samples: list[str] = field(default_factory=list)  # "line N: reason", first few
    symbols: dict[str, int] = field(default_factory=dict)  # items per symbol, most first
    first_ts: int | None = None
    last_ts: int | None = None
    score_min: float | None = None
    score_max: float | None = None
    score_mean: float | None = None
    sample: list[dict[str, Any]] = field(default_factory=list)  # the first items, as dicts


class HeadlineCsv:
    """News items from a headline CSV (see the module docstring)."""

    name = "csv"

    def __init__(self, path: str | Path, symbol: str | None = None, time_zone: str = "UTC",
                 source: str = "csv"):
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"The headline file {self.path} does not exist; choose an "
                              "existing CSV file.")
        try:
            self.zone = ZoneInfo(time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise SourceError(f"Unknown time zone {time_zone!r}; use a name like UTC or "
                              "America/New_York.") from None
        self.symbol = symbol.strip().upper() if symbol else None
        self.source = source
        self.scorer = _vader()
        self.counters: dict[str, Any] = {"rows": 0, "items": 0, "skipped": 0}
        self.skipped_samples: list[str] = []

    def describe(self) -> str:
        return f"headlines from {self.path.name} (VADER scores)"

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "skipped_samples": list(self.skipped_samples)}

    def items(self, stop: threading.Event) -> Iterator[list[NewsItem]]:
        """The file's items in batches (a news :class:`~pipeline.workers.stream_producer.StreamProducer` feed)."""
        batch: list[NewsItem] = []
        for item in self._read():
            if stop.is_set():
                return
            batch.append(item)
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch

    def read(self) -> list[NewsItem]:
        return list(self._read())

    def preview(self, sample: int = 8) -> HeadlinePreview:
        """Read and score the whole file once (constant memory apart from ``sample`` rows)
        and say what an import would publish; raises :class:`SourceError` like ``items``."""
        out = HeadlinePreview()
        per_symbol: dict[str, int] = {}
        total = 0.0
        for item in self._read():
            per_symbol[item.symbol] = per_symbol.get(item.symbol, 0) + 1
            total += item.sentiment_score
            out.first_ts = item.ts if out.first_ts is None else min(out.first_ts, item.ts)
            out.last_ts = item.ts if out.last_ts is None else max(out.last_ts, item.ts)
            out.score_min = (item.sentiment_score if out.score_min is None
                             else min(out.score_min, item.sentiment_score))
            out.score_max = (item.sentiment_score if out.score_max is None
                             else max(out.score_max, item.sentiment_score))
            if len(out.sample) < sample:
                out.sample.append({"symbol": item.symbol, "ts": item.ts, "title": item.title,
                                   "sentiment_score": round(item.sentiment_score, 4),
                                   "relevance": item.relevance})
        out.rows, out.items = self.counters["rows"], self.counters["items"]
        out.skipped, out.skipped_samples = self.counters["skipped"], list(self.skipped_samples)
        out.symbols = dict(sorted(per_symbol.items(), key=lambda kv: (-kv[1], kv[0])))
        out.score_mean = total / out.items if out.items else None
        return out

    def score(self, headline: str) -> float:
        return float(self.scorer.polarity_scores(headline)["compound"])

    # -- details

    def _read(self) -> Iterator[NewsItem]:
        # Each pass counts afresh, so a preview followed by an import reports the import.
        self.counters = {"rows": 0, "items": 0, "skipped": 0}
        self.skipped_samples = []
        with self.path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
            reader = csv.DictReader(fh)
            columns = {c.strip().lower(): c for c in reader.fieldnames or []}
            sym_col = _pick(columns, SYMBOL_COLUMNS)
            time_col = _pick(columns, TIME_COLUMNS)
            title_col = _pick(columns, TITLE_COLUMNS)
            missing = [what for what, col in (("a time (published/time/ts)", time_col),
                                             ("a headline (title/headline)", title_col))
                       if col is None]
            if sym_col is None and self.symbol is None:
                missing.insert(0, "a symbol (symbol/ticker), or give the symbol for the file")
            if missing:
                raise SourceError(f"The headline file {self.path.name} lacks "
                                  f"{' and '.join(missing)} column; add it to the header row.")
            for line, row in enumerate(reader, start=2):
                self.counters["rows"] += 1
                try:
                    yield self._item(row, sym_col, time_col, title_col, columns)
                    self.counters["items"] += 1
                except (InvalidNews, ValueError, TypeError) as exc:
                    self.counters["skipped"] += 1
                    reason = exc.reason if isinstance(exc, InvalidNews) else str(exc)
                    if len(self.skipped_samples) < 5:
                        self.skipped_samples.append(f"line {line}: {reason}")

    def _item(self, row: dict, sym_col, time_col, title_col, columns: dict) -> NewsItem:
        title = " ".join(str(row.get(title_col) or "").split())
        symbol = (str(row.get(sym_col) or "").strip().upper() if sym_col else "") or self.symbol
        relevance = row.get(columns["relevance"]) if "relevance" in columns else None
        return news_from_mapping({
            "symbol": symbol or "", "ts": self._ts(str(row.get(time_col) or "").strip()),
            "source": (str(row.get(columns["source"]) or "").strip() if "source" in columns
                       else "") or self.source,
            "title": title, "url": str(row.get(columns["url"]) or "").strip()
            if "url" in columns else "",
            "sentiment_score": self.score(title) if title else 0.0,
            "relevance": float(relevance) if relevance not in (None, "") else 1.0,
        })

    def _ts(self, text: str) -> int:
        if not text:
            raise ValueError("empty publication time")
        if text.lstrip("-").isdigit():
            value = int(text)
            return value if abs(value) >= 10 ** 11 else value * 1000  # seconds -> ms
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=self.zone)
        return int(stamp.timestamp() * 1000)


def _pick(columns: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((columns[n] for n in names if n in columns), None)


def _vader():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise SourceError("Scoring headlines needs the vaderSentiment package; run "
                          "pip install -r requirements.txt.") from None
    return SentimentIntensityAnalyzer()
