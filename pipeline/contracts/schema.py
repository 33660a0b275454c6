"""The message contracts every part of KappaLab relies on.

A bar message is UTF-8 JSON with exactly the fields of :class:`Bar`; the Kafka key is the
symbol so that one symbol's bars stay ordered within a partition (:func:`key_problem`). ``ts``
is the bar's start in epoch milliseconds UTC, aligned to its interval (a daily bar at midnight
UTC: :mod:`pipeline.sources.daily`). Anything that does not satisfy :func:`parse_bar` is
rejected to the dead-letter topic with the reason :class:`InvalidBar` carries; the rules that
need the series' history (a bar too far ahead) are :mod:`pipeline.series_clock`'s.
"""
from __future__ import annotations

import json
import math
import operator
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

BARS_TOPIC = "finance-data"
DLQ_TOPIC = "finance-data.dlq"
PREDICTIONS_TOPIC = "finance-predictions"
#: Worker snapshots (key = worker id), so `status` sees stalls even when the store is down.
WORKERS_TOPIC = "kappalab.workers"

#: Supported bar intervals and their length in milliseconds.
INTERVALS: dict[str, int] = {
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "30m": 1_800_000,
    "1h": 3_600_000,
    "1d": 86_400_000,
}

#: The grid a bar's ts lies on: its interval, at most a quarter hour (so that hourly and
#: half-hourly bars of a session opening at :15, :30 or :45 UTC fit: US stocks at 9:30 ET,
#: India at 9:15 IST), and midnight UTC for daily bars (pipeline/sources/daily.py). Within a
#: series, bars keep one phase (pipeline/workers/bar_rules.py).
ALIGN_MS: dict[str, int] = {k: v if k == "1d" else min(v, 900_000) for k, v in INTERVALS.items()}
_GRIDS = {60_000: ("minute", "on a whole minute of UTC"),
          300_000: ("5 minutes", "on a multiple of 5 minutes of UTC"),
          900_000: ("quarter hour", "on a quarter hour of UTC (:00, :15, :30 or :45)"),
          86_400_000: ("day", "at midnight UTC (the daily convention, pipeline/sources/daily.py)")}

BAR_FIELDS = ("symbol", "interval", "ts", "open", "high", "low", "close", "volume", "source")
PRICE_FIELDS = ("open", "high", "low", "close")
MAX_SYMBOL_LEN = 32
MAX_SOURCE_LEN = 64
#: A bar message is about 200 bytes; anything over this limit is rejected unread.
MAX_MESSAGE_BYTES = 16_384
#: Longest integer literal accepted in a message (a ts in epoch ms has 13 digits). Longer
#: literals are refused before Python builds the integer (which would overflow ``float()``
#: at ~310 digits and hit the interpreter's 4,300-digit limit).
MAX_INT_DIGITS = 20
#: Prices must be in (0, MAX_PRICE]; volume in [0, MAX_VOLUME].
MAX_PRICE = 1e9
MAX_VOLUME = 1e15
# 2000-01-01 .. 2100-01-01: catches seconds-instead-of-millis and garbage timestamps.
MIN_TS_MS = 946_684_800_000
MAX_TS_MS = 4_102_444_800_000


class InvalidBar(ValueError):
    """A message that is not a valid bar; ``reason`` is one sentence for the DLQ."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class KeyMismatch(InvalidBar):
    """A bar whose Kafka key is not its symbol (it may sit in another symbol's partition)."""


class Misaligned(InvalidBar):
    """A bar whose ts is not on its interval's grid (or off its series' phase)."""


class SuspectTime(InvalidBar):
    """A valid bar that starts too far after now and after its series' last bar."""


@dataclass(frozen=True, slots=True)
class Bar:
    """One OHLCV bar (the contract of ``finance-data``): validated once, at the edge, by
    :func:`parse_bar`; immutable; its document id is ``symbol|interval|ts``."""

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
        # Written out rather than dataclasses.asdict, which deep-copies (docs/DESIGN_FIGURES.md).
        return {"symbol": self.symbol, "interval": self.interval, "ts": self.ts,
                "open": self.open, "high": self.high, "low": self.low, "close": self.close,
                "volume": self.volume, "source": self.source}

    def to_json(self) -> bytes:
        """The message value: compact JSON, byte for byte what ``json.dumps`` writes.

        Built from a template for the usual bar (plain floats and int, finite): the producer
        encodes every bar, and this is ~5x faster than the encoder. Anything else (NaN, a
        float subclass, a bool) takes ``json.dumps``, which refuses non-finite numbers."""
        o, h, l, c, v, ts = self.open, self.high, self.low, self.close, self.volume, self.ts
        if (type(o) is float and type(h) is float and type(l) is float and type(c) is float
                and type(v) is float and type(ts) is int and _isfinite(o + h + l + c + v)):
            return (f'{{"symbol":{_json_str(self.symbol)},"interval":{_json_str(self.interval)},'
                    f'"ts":{ts},"open":{o!r},"high":{h!r},"low":{l!r},"close":{c!r},'
                    f'"volume":{v!r},"source":{_json_str(self.source)}}}').encode()
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False).encode()


_isfinite = math.isfinite
_JSON_STRINGS: dict[str, str] = {}


def _json_str(value: str) -> str:
    """``json.dumps`` of a string, remembered: a bar's symbol, interval and source repeat."""
    out = _JSON_STRINGS.get(value)
    if out is None:
        out = json.dumps(value)
        if len(_JSON_STRINGS) < 10_000 and type(value) is str:
            _JSON_STRINGS[value] = out
    return out


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
    """Decode and validate one message; raise :class:`InvalidBar` with the reason.

    Total over its input: any bytes, of any size, raise :class:`InvalidBar` (whose reason
    names the exception class when a decoder refused them) or return a valid :class:`Bar`.
    """
    text = message_text(raw, MAX_MESSAGE_BYTES)
    try:
        obj = _DECODER.decode(text)
        if isinstance(obj, dict) and not _plainly_unique(text, len(obj)):
            obj = _STRICT_DECODER.decode(text)  # finds a duplicated key, if there is one
    except InvalidBar:
        raise
    except json.JSONDecodeError as exc:
        raise InvalidBar(f"message is not JSON (JSONDecodeError: {exc.msg} at char {exc.pos})") from None
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        # e.g. an integer literal over Python's 4,300-digit limit: say which, if we can
        try:
            _STRICT_DECODER.decode(text)
        except InvalidBar:
            raise
        except Exception:
            pass
        raise InvalidBar(f"message is not JSON ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise InvalidBar(f"message is JSON {type(obj).__name__}, expected an object")
    return bar_from_mapping(obj)




def message_text(raw: bytes | str, max_bytes: int,
                 invalid: type[InvalidBar] = InvalidBar) -> str:
    """The message as text: at most ``max_bytes`` and valid UTF-8, else ``invalid``."""
    size = len(raw)
    if size > max_bytes:
        raise invalid(f"message is {size:,} bytes, over the {max_bytes:,}-byte limit")
    try:
        return raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
    except UnicodeDecodeError as exc:
        raise invalid(f"message is not valid UTF-8 (UnicodeDecodeError at byte {exc.start})") \
            from None


def decode_object(raw: bytes | str, max_bytes: int,
                  invalid: type[InvalidBar] = InvalidBar) -> dict[str, Any]:
    """The strict first half of every message contract (news, fundamentals): at most
    ``max_bytes``, UTF-8, JSON with integer literals of at most 20 digits, no NaN/Infinity and
    no duplicated key, an object at the top. Raises ``invalid`` with the reason."""
    text = message_text(raw, max_bytes, invalid)
    try:
        obj = _STRICT_DECODER.decode(text)
    except InvalidBar as exc:
        raise invalid(exc.reason) from None
    except json.JSONDecodeError as exc:
        raise invalid(f"message is not JSON (JSONDecodeError: {exc.msg} at char {exc.pos})") \
            from None
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as exc:
        raise invalid(f"message is not JSON ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise invalid(f"message is JSON {type(obj).__name__}, expected an object")
    return obj


def _parse_int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:
        raise InvalidBar(f"integer literal of {len(literal):,} digits is out of range "
                         f"(at most {MAX_INT_DIGITS} digits)")
    return int(literal)


def _refuse_constant(name: str) -> float:
    raise InvalidBar(f"{name} is not finite (JSON numbers must be finite)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise InvalidBar(f"duplicate field {_show(dup)}")
    return obj


def _plainly_unique(text: str, n_keys: int) -> bool:
    """True when ``text`` cannot hold a duplicated key: as many ``":`` as keys, and no
    white space after a quote that could hide one more key token. (False sends the message
    through the slower decoder that checks each key.)"""
    return (text.count('":') == n_keys and '" ' not in text and '"\t' not in text
            and '"\n' not in text and '"\r' not in text)


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_STRICT_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_constant=_refuse_constant,
                                   object_pairs_hook=_unique_keys)
_FIELD_SET = frozenset(BAR_FIELDS)
_INT_LIMIT = 10 ** MAX_INT_DIGITS

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _show(value: str, limit: int = 40) -> str:
    """A string for a DLQ reason: quoted, shortened, unencodable characters escaped."""
    short = value if len(value) <= limit else value[:limit] + "…"
    return ascii(short)


def _check_text(name: str, value: Any, max_len: int) -> str:
    if not isinstance(value, str):
        raise InvalidBar(f"field {name} must be a string, got {type(value).__name__}")
    if not value or len(value) > max_len:
        raise InvalidBar(f"field {name} {_show(value)} must be 1 to {max_len} characters")
    if value.isascii() and value.isprintable():
        return value  # the common case, checked in C
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidBar(f"field {name} {_show(value)} holds a lone surrogate "
                         "(UnicodeEncodeError)") from None
    if _CONTROL.search(value):
        raise InvalidBar(f"field {name} {_show(value)} holds a control character")
    return value


def _field_problem(obj: Mapping[str, Any]) -> None:
    missing = [f for f in BAR_FIELDS if f not in obj]
    if missing:
        raise InvalidBar(f"missing field(s): {', '.join(missing)}")
    extra = sorted(set(obj) - set(BAR_FIELDS), key=str)
    if extra:
        shown = ", ".join(_show(str(e), 20) for e in extra[:5])
        raise InvalidBar(f"unexpected field(s): {shown}{' …' if len(extra) > 5 else ''}")


def bar_from_mapping(obj: Mapping[str, Any]) -> Bar:
    """Validate a decoded mapping against the bar contract."""
    if obj.keys() != _FIELD_SET:
        _field_problem(obj)
    # The usual bar, checked in one expression: exact types, ASCII printable strings, prices
    # and volume in range (a NaN fails every comparison). Whatever this does not accept gets
    # the field-by-field checks below, which accept the same bars and say what is wrong.
    symbol, interval, source, ts = obj["symbol"], obj["interval"], obj["source"], obj["ts"]
    o, h, l, c, v = obj["open"], obj["high"], obj["low"], obj["close"], obj["volume"]
    if (type(o) is float and type(h) is float and type(l) is float and type(c) is float
            and type(v) is float and type(ts) is int and type(symbol) is str
            and type(interval) is str and type(source) is str
            and 0.0 < l <= o <= h <= MAX_PRICE and l <= c <= h and 0.0 <= v <= MAX_VOLUME
            and MIN_TS_MS <= ts < MAX_TS_MS and interval in INTERVALS
            and not ts % ALIGN_MS[interval]
            and 0 < len(symbol) <= MAX_SYMBOL_LEN and symbol.isascii() and symbol.isprintable()
            and "|" not in symbol and symbol == symbol.strip()
            and 0 < len(source) <= MAX_SOURCE_LEN and source.isascii() and source.isprintable()):
        return Bar(symbol, interval, ts, o, h, l, c, v, source)
    return _checked_bar(obj)


def _checked_bar(obj: Mapping[str, Any]) -> Bar:
    """Field by field, with the reason for the first failure."""

    symbol = _check_text("symbol", obj["symbol"], MAX_SYMBOL_LEN)
    interval = _check_text("interval", obj["interval"], 8)
    source = _check_text("source", obj["source"], MAX_SOURCE_LEN)
    if "|" in symbol or symbol != symbol.strip():
        raise InvalidBar(f"field symbol {_show(symbol)} contains '|' or leading/trailing spaces")
    if interval not in INTERVALS:
        raise InvalidBar(f"field interval {_show(interval)} is not one of {', '.join(INTERVALS)}")

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
        if isinstance(value, int) and not -_INT_LIMIT < value < _INT_LIMIT:
            raise InvalidBar(f"field {name}: integer literal of {len(str(abs(value))):,} digits "
                             f"is out of range (at most {MAX_INT_DIGITS} digits)")
        value = float(value)
        if not math.isfinite(value):
            raise InvalidBar(f"field {name} is not finite ({value})")
        limit = MAX_VOLUME if name == "volume" else MAX_PRICE
        if abs(value) > limit:
            raise InvalidBar(f"field {name} {value:g} is out of range (limit {limit:g})")
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
    if ts % ALIGN_MS[interval]:
        raise Misaligned(misaligned_reason(interval, ts))
    return Bar(symbol, interval, ts, o, h, l, c, v, source)


def misaligned_reason(interval: str, ts: int) -> str:
    """Why ``ts`` cannot start a bar of ``interval`` (see :data:`ALIGN_MS`)."""
    grid = ALIGN_MS[interval]
    unit, rule = _GRIDS[grid]
    return (f"ts {ts} is not aligned to its {interval} interval: it lies {ts % grid / 1000:g} s "
            f"into its {unit}; a {interval} bar starts {rule}")


def key_problem(key: bytes | None, bar: Bar) -> str | None:
    """Why a bar's Kafka key does not fit it, or None. The key must be the symbol (UTF-8), so
    that a symbol's bars share a partition and keep their order; a null key is accepted (the
    bar carries its symbol; on a topic of one partition the order is kept anyway)."""
    if key is None:
        return None
    if key == bar.symbol.encode():
        return None
    shown = key[:40].decode("utf-8", "replace")
    return (f"key {_show(shown)} differs from the bar's symbol {_show(bar.symbol)} "
            "(the key must be the symbol, so a symbol's bars keep their order)")


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


#: A prediction's stored fields, in order (everything but ``extra``).
PREDICTION_FIELDS = tuple(f for f in Prediction.__dataclass_fields__ if f != "extra")
#: Those fields of a prediction as one tuple (a snapshot: settling changes the object later).
prediction_values = operator.attrgetter(*PREDICTION_FIELDS)
