"""The fundamentals contract: slowly changing per-symbol values on ``finance-fundamentals``.

One message is one *snapshot* of a company's figures (Kafka key = symbol), UTF-8 JSON:

===============  ==========================================================================
field            rule
===============  ==========================================================================
symbol           1-32 characters, no ``|``, no leading/trailing space, no control character
ts               **effective time** = when KappaLab fetched the figures, epoch ms UTC,
                 2000-2100. A bar sees a snapshot only if ``ts`` is before the bar's end.
source           1-64 characters (``alphavantage``...)
latest_quarter   the quarter the figures are based on, ``YYYY-MM-DD``, or ``""``
values           an object whose keys are among :data:`FUNDAMENTAL_VALUES`; each value a
                 finite number or ``null`` (the provider has none, e.g. no P/E at a loss)
===============  ==========================================================================

Why the fetch time and not ``latest_quarter``: Alpha Vantage's OVERVIEW is a snapshot *now*
(its P/E uses today's price, its market capitalisation today's shares and price), so dating it
back to the quarter's end would hand earlier bars figures from their future. A snapshot is
therefore valid from its fetch onwards, until the next one.

Parsing is as strict as the bar and news parsers (size limit, no ``NaN``, no duplicate keys,
no huge integer literals). The document ID is ``symbol|source|ts``: replays never duplicate.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from pipeline.contracts.schema import (MAX_SOURCE_LEN, MAX_SYMBOL_LEN, MAX_TS_MS, MIN_TS_MS, InvalidBar,
                             _check_text, _show, decode_object)

FUNDAMENTALS_TOPIC = "finance-fundamentals"
FUNDAMENTALS_DLQ_TOPIC = "finance-fundamentals.dlq"

#: Alpha Vantage OVERVIEW field -> KappaLab value name (all numbers; text fields are left out).
OVERVIEW_FIELDS: dict[str, str] = {
    "MarketCapitalization": "market_cap",
    "PERatio": "pe_ratio",
    "ForwardPE": "forward_pe",
    "PEGRatio": "peg_ratio",
    "EPS": "eps",
    "BookValue": "book_value",
    "PriceToBookRatio": "price_to_book",
    "DividendYield": "dividend_yield",
    "ProfitMargin": "profit_margin",
    "ReturnOnEquityTTM": "return_on_equity",
    "QuarterlyEarningsGrowthYOY": "earnings_growth_yoy",
    "QuarterlyRevenueGrowthYOY": "revenue_growth_yoy",
    "Beta": "beta",
}
FUNDAMENTAL_VALUES: tuple[str, ...] = tuple(OVERVIEW_FIELDS.values())
FUNDAMENTALS_COLUMNS = ["symbol", "ts", "source", "latest_quarter", *FUNDAMENTAL_VALUES]
MESSAGE_FIELDS = ("symbol", "ts", "source", "latest_quarter", "values")
MAX_FUNDAMENTALS_BYTES = 8_192
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class InvalidFundamentals(InvalidBar):
    """A message that is not a valid snapshot; ``reason`` is one sentence for the DLQ."""


@dataclass(frozen=True)
class FundamentalsSnapshot:
    """One company's fundamentals as fetched at ``ts`` (the contract of the
    ``finance-fundamentals`` topic): effective from ``ts`` until the next snapshot.
    Immutable; its document id is ``symbol|source|ts``."""

    symbol: str
    ts: int  # effective from (the fetch time)
    source: str
    latest_quarter: str = ""
    values: Mapping[str, float | None] = field(default_factory=dict)

    @property
    def doc_id(self) -> str:
        return f"{self.symbol}|{self.source}|{int(self.ts)}"

    def value(self, name: str) -> float:
        """The value, NaN when the snapshot has none."""
        v = self.values.get(name)
        return math.nan if v is None else float(v)

    def to_dict(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "ts": int(self.ts), "source": self.source,
                "latest_quarter": self.latest_quarter,
                "values": {k: self.values.get(k) for k in FUNDAMENTAL_VALUES
                           if k in self.values}}

    def to_row(self) -> tuple:
        """One row of :data:`FUNDAMENTALS_COLUMNS` (None where a value is missing)."""
        return (self.symbol, int(self.ts), self.source, self.latest_quarter,
                *(self.values.get(k) for k in FUNDAMENTAL_VALUES))

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()


def parse_fundamentals(raw: bytes | str) -> FundamentalsSnapshot:
    """Decode and validate one message; raise :class:`InvalidFundamentals` with the reason."""
    obj = decode_object(raw, MAX_FUNDAMENTALS_BYTES, InvalidFundamentals)
    return fundamentals_from_mapping(obj)


def fundamentals_from_mapping(obj: Mapping[str, Any]) -> FundamentalsSnapshot:
    try:
        return _from_mapping(obj)
    except InvalidFundamentals:
        raise
    except InvalidBar as exc:  # the shared text checks of pipeline.contracts.schema
        raise InvalidFundamentals(exc.reason) from None


def _from_mapping(obj: Mapping[str, Any]) -> FundamentalsSnapshot:
    missing = [f for f in MESSAGE_FIELDS if f not in obj]
    if missing:
        raise InvalidFundamentals(f"missing field(s): {', '.join(missing)}")
    extra = sorted(set(obj) - set(MESSAGE_FIELDS))
    if extra:
        raise InvalidFundamentals("unexpected field(s): "
                                  + ", ".join(_show(str(e), 20) for e in extra[:5]))
    symbol = _check_text("symbol", obj["symbol"], MAX_SYMBOL_LEN)
    if "|" in symbol or symbol != symbol.strip():
        raise InvalidFundamentals(f"field symbol {_show(symbol)} contains '|' or "
                                  "leading/trailing spaces")
    source = _check_text("source", obj["source"], MAX_SOURCE_LEN)
    quarter = obj["latest_quarter"]
    if not isinstance(quarter, str) or (quarter and not _DATE.match(quarter)):
        raise InvalidFundamentals(f"field latest_quarter must be YYYY-MM-DD or empty, got "
                                  f"{_show(str(quarter), 20)}")
    ts = obj["ts"]
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or (
            isinstance(ts, float) and (not math.isfinite(ts) or ts != int(ts))):
        raise InvalidFundamentals(f"field ts must be a whole number of epoch ms, got {ts!r}")
    ts = int(ts)
    if not MIN_TS_MS <= ts < MAX_TS_MS:
        raise InvalidFundamentals(f"field ts {ts} is outside 2000-2100 in epoch milliseconds")
    values = obj["values"]
    if not isinstance(values, dict):
        raise InvalidFundamentals("field values must be an object of numbers")
    unknown = sorted(set(values) - set(FUNDAMENTAL_VALUES))
    if unknown:
        raise InvalidFundamentals("unknown value(s): "
                                  + ", ".join(_show(str(u), 24) for u in unknown[:5]))
    clean: dict[str, float | None] = {}
    for name, v in values.items():
        if v is None:
            clean[name] = None
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise InvalidFundamentals(f"value {name} must be a finite number or null")
        clean[name] = float(v)
    return FundamentalsSnapshot(symbol, ts, source, quarter, clean)
