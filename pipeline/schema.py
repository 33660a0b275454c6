"""The message contracts every part of KappaLab relies on.

A bar message is UTF-8 JSON with exactly the fields of :class:`Bar`; the Kafka key is the
symbol so that one symbol's bars stay ordered within a partition. ``ts`` is the bar's start in
epoch milliseconds UTC. Anything that does not satisfy :func:`parse_bar` is rejected to the
dead-letter topic with the reason :class:`InvalidBar` carries.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

BARS_TOPIC = "finance-data"
DLQ_TOPIC = "finance-data.dlq"
PREDICTIONS_TOPIC = "finance-predictions"

#: Supported bar intervals and their length in milliseconds.
INTERVALS: dict[str, int] = {
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "1d": 86_400_000,
}

BAR_FIELDS = ("symbol", "interval", "ts", "open", "high", "low", "close", "volume", "source")
PRICE_FIELDS = ("open", "high", "low", "close")
MAX_SYMBOL_LEN = 32
# 2000-01-01 .. 2100-01-01: catches seconds-instead-of-millis and garbage timestamps.
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000


class InvalidBar(ValueError):
    """A message that is not a valid bar; ``reason`` is one sentence for the DLQ."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Bar:
    symbol: str
    interval: str
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    source: str = "simulator"

    @property
    def doc_id(self) -> str:
        return bar_id(self.symbol, self.interval, self.ts)

    def to_dict(self) -> dict[str, Any]:
        # Written out rather than dataclasses.asdict, which deep-copies and is ~10x slower.
        return {"symbol": self.symbol, "interval": self.interval, "ts": self.ts,
                "open": self.open, "high": self.high, "low": self.low, "close": self.close,
                "volume": self.volume, "source": self.source}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()


def bar_id(symbol: str, interval: str, ts: int) -> str:
    return f"{symbol}|{interval}|{int(ts)}"


def prediction_id(model_id: str, symbol: str, interval: str, ts: int) -> str:
    return f"{model_id}|{symbol}|{interval}|{int(ts)}"


def interval_ms(interval: str) -> int:
    try:
        return INTERVALS[interval]
    except KeyError:
        raise ValueError(
            f"unknown interval {interval!r}; use one of {', '.join(INTERVALS)}"
        ) from None


def parse_bar(raw: bytes | str) -> Bar:
    """Decode and validate one message; raise :class:`InvalidBar` with the reason."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    except UnicodeDecodeError:
        raise InvalidBar("message is not valid UTF-8") from None
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise InvalidBar(f"message is not JSON: {exc.msg if hasattr(exc, 'msg') else exc}") from None
    if not isinstance(obj, dict):
        raise InvalidBar(f"message is JSON {type(obj).__name__}, expected an object")
    return bar_from_mapping(obj)


def bar_from_mapping(obj: Mapping[str, Any]) -> Bar:
    """Validate a decoded mapping against the bar contract."""
    missing = [f for f in BAR_FIELDS if f not in obj]
    if missing:
        raise InvalidBar(f"missing field(s): {', '.join(missing)}")
    extra = sorted(set(obj) - set(BAR_FIELDS))
    if extra:
        raise InvalidBar(f"unexpected field(s): {', '.join(extra)}")

    symbol, interval, source = obj["symbol"], obj["interval"], obj["source"]
    for name, value in (("symbol", symbol), ("interval", interval), ("source", source)):
        if not isinstance(value, str):
            raise InvalidBar(f"field {name} must be a string, got {type(value).__name__}")
    if not symbol or len(symbol) > MAX_SYMBOL_LEN or "|" in symbol or symbol != symbol.strip():
        raise InvalidBar(f"field symbol {symbol!r} is empty, too long or contains '|' or spaces")
    if interval not in INTERVALS:
        raise InvalidBar(f"field interval {interval!r} is not one of {', '.join(INTERVALS)}")

    ts = obj["ts"]
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise InvalidBar(f"field ts must be an integer (epoch ms), got {type(ts).__name__}")
    if isinstance(ts, float):
        if not math.isfinite(ts) or ts != int(ts):
            raise InvalidBar(f"field ts must be a whole number of epoch ms, got {ts!r}")
        ts = int(ts)
    if not MIN_TS_MS <= ts < MAX_TS_MS:
        raise InvalidBar(f"field ts {ts} is outside 2000-2100 in epoch milliseconds")

    nums: dict[str, float] = {}
    for name in (*PRICE_FIELDS, "volume"):
        value = obj[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidBar(f"field {name} must be a number, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):
            raise InvalidBar(f"field {name} is not finite ({value})")
        nums[name] = value
    o, h, l, c, v = (nums[k] for k in ("open", "high", "low", "close", "volume"))
    if l <= 0:
        raise InvalidBar(f"low {l} is not a positive price")
    if h < l:
        raise InvalidBar(f"high {h} is below low {l}")
    if not (l <= o <= h):
        raise InvalidBar(f"open {o} is outside [low {l}, high {h}]")
    if not (l <= c <= h):
        raise InvalidBar(f"close {c} is outside [low {l}, high {h}]")
    if v < 0:
        raise InvalidBar(f"volume {v} is negative")
    return Bar(symbol, interval, ts, o, h, l, c, v, source)


@dataclass(slots=True)
class Prediction:
    """One prediction of ``target`` for the bar starting at ``ts`` (the bar being predicted).

    ``base_ts`` is the last bar the model saw. ``actual`` and ``error`` stay ``None`` until the
    bar at ``ts`` arrives (progressive validation: predict first, score later).
    """

    model_id: str
    symbol: str
    interval: str
    ts: int
    base_ts: int
    target: str
    predicted: float
    base_close: float
    actual: float | None = None
    error: float | None = None
    produced_ms: int | None = None  # when the base bar was produced to Kafka
    stored_ms: int | None = None  # when the prediction was written
    latency_ms: float | None = None  # stored_ms - produced_ms
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def doc_id(self) -> str:
        return prediction_id(self.model_id, self.symbol, self.interval, self.ts)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        return d
