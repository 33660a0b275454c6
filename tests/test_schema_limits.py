"""The bar contract's limits: each hostile input is refused with a reason that says why."""
from __future__ import annotations

import pytest

from pipeline.contracts.schema import MAX_MESSAGE_BYTES, InvalidBar, parse_bar

BASE = ('{"symbol":"A","interval":"1m","ts":1767225600000,"open":1,"high":2,"low":1,'
        '"close":1,"volume":1,"source":"s"%s}')


@pytest.mark.parametrize("raw, reason", ids=lambda v: str(v)[:30], argvalues=[
    (BASE % ',"symbol" :"B"', "duplicate field 'symbol'"),
    (BASE % ', "source":"y"', "duplicate field 'source'"),
    (BASE.replace('"open":1', '"open":1' + "0" * 400) % "", "integer literal of 401 digits"),
    (BASE.replace('"close":1', '"close":' + "9" * 5000) % "", "integer literal of 5,000 digits"),
    (BASE.replace('"volume":1', '"volume":-1' + "0" * 30) % "", "integer literal of 31 digits"),
    (BASE.replace('"s"', '"\\ud800"') % "", "lone surrogate"),
    (BASE.replace('"A"', '"A\\u0085"') % "", "control character"),
    (BASE.replace('"s"', '"' + "x" * 65 + '"') % "", "1 to 64 characters"),
    (BASE.replace('"open":1', '"open":Infinity') % "", "not finite"),
    (BASE.replace('"open":1', '"open":1e999') % "", "not finite"),
    (BASE.replace('"high":2', '"high":2e9') % "", "out of range"),
    ("[" * 5000 + "]" * 5000, "not JSON"),
    ('{"a":' * 2500 + "1" + "}" * 2500, "not JSON (RecursionError)"),
    ("x" * (MAX_MESSAGE_BYTES + 1), "over the 16,384-byte limit"),
])
def test_hostile_input_is_refused_with_a_reason(raw, reason):
    with pytest.raises(InvalidBar) as err:
        parse_bar(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    assert reason in err.value.reason


def test_strings_may_hold_quotes_colons_and_non_ascii_letters():
    bar = parse_bar(BASE.replace('"s"', '"caf\\u00e9 \\":x"').replace('"A"', '"\\u00c5"').encode() % b"")
    assert bar.source == 'café ":x' and bar.symbol == "Å"
