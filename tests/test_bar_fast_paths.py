"""The bar's fast paths agree with the careful ones.

``Bar.to_json`` writes from a template and ``bar_from_mapping`` accepts the usual bar in one
expression; both fall back to the general code for anything else. These tests prove, on the
simulator's bars, on edge values and on the fuzz corpus, that the fast and general paths give
the same bytes, the same bar, or the same refusal."""
from __future__ import annotations

import json
import threading

import pytest

from pipeline.contracts.schema import (
    BAR_FIELDS, Bar, InvalidBar, MAX_PRICE, MAX_VOLUME, _DECODER, _checked_bar, bar_from_mapping, parse_bar,
)
from pipeline.sources.simulator import MarketSimulator
from tests.fuzz_messages import fuzz_messages


def _dumps(bar: Bar) -> bytes:
    return json.dumps(bar.to_dict(), separators=(",", ":"), allow_nan=False).encode()


def test_to_json_writes_what_json_dumps_writes():
    bars = list(MarketSimulator(bars=2000).bars(threading.Event()))
    odd = [
        Bar('A\u00e9"\\x', "1m", 1_735_725_600_000, 1e-05, 1e300, 1.5, 2.0, 0.0, "s\n\u2028"),
        Bar("A", "1m", 1_735_725_600_000, 1e308, 1e308, 1e308, 1e308, 1e308, "s"),
        Bar("A", "1m", True, 1, 2, 3, 4, 5),  # bool and ints: the encoder's way
        Bar("A", "1m", 1_735_725_600_000, -0.0, 5e-324, 123456789.123, 1 / 3, 2.0 ** 60),
    ]
    for bar in bars + odd:
        assert bar.to_json() == _dumps(bar)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_to_json_refuses_a_non_finite_number_like_json_dumps(bad):
    with pytest.raises(ValueError):
        Bar("A", "1m", 1_735_725_600_000, 1.0, 1.0, 1.0, bad, 1.0).to_json()


def _outcome(fn, obj):
    try:
        return fn(obj)
    except InvalidBar as exc:
        return ("refused", exc.reason)


def test_fast_check_accepts_and_refuses_exactly_what_the_field_checks_do():
    """On 20,000 fuzz messages that decode to an object with exactly the bar's fields (plus boundary
    cases): the same bar or a refusal, whichever the field-by-field checks give."""
    boundary = []
    base = {"symbol": "A", "interval": "1m", "ts": 1_767_225_600_000, "open": 1.0, "high": 2.0,
            "low": 1.0, "close": 1.0, "volume": 0.0, "source": "s"}
    for field, values in {
        "high": [MAX_PRICE, MAX_PRICE * (1 + 1e-15), float("inf"), float("nan")],
        "low": [0.0, -0.0, 5e-324, float("nan")],
        "volume": [MAX_VOLUME, MAX_VOLUME * 1.0000001, -0.0, float("nan"), 3, True],
        "ts": [946_684_800_000, 946_684_799_999, 4_102_444_800_000, 4_102_444_799_999, 1.7e12],
        "symbol": ["A" * 32, "A" * 33, "", " A", "A ", "A|B", "A\x7f", "Ä", "A\tB", "a b"],
        "source": ["s" * 64, "s" * 65, "", "s\x00", "ß"],
        "interval": ["1d", "1d ", "2m", 1],
        "open": [2.0, 2.0000001, 1.0, 0.9999999, 1],
    }.items():
        boundary += [dict(base, **{field: v}) for v in values]
    decoded = []
    for raw in fuzz_messages(seed=7, count=20_000):
        try:
            obj = _DECODER.decode(raw.decode("utf-8"))
        except Exception:
            continue
        if isinstance(obj, dict) and obj.keys() == set(BAR_FIELDS):
            decoded.append(obj)
    checked = boundary + decoded
    assert len(decoded) > 2_000  # the corpus reaches the field checks
    accepted = 0
    for obj in checked:
        fast, careful = _outcome(bar_from_mapping, obj), _outcome(_checked_bar, obj)
        assert fast == careful, obj
        accepted += isinstance(fast, Bar)
    assert 0 < accepted < len(checked)


def test_simulator_bars_round_trip_through_the_fast_paths():
    for bar in MarketSimulator(bars=500, symbols=["ACME", "Z"]).bars(threading.Event()):
        assert parse_bar(bar.to_json()) == bar


@pytest.mark.parametrize("kwargs, params, digest", [
    ({"bars": 2000}, {}, "905eaae7195998d1"),
    ({"bars": 1000, "symbols": ["X", "ACME"], "interval": "5m", "seed": 3},
     {"phi": 0.0, "regime_change_at": 400}, "b2843fee5eff2294"),
    ({"bars": 500, "resume": {"ACME": (1_735_725_600_000, 190.5)}}, {}, "efbca8f422b33244"),
])
def test_the_simulator_gives_the_same_bars_for_a_seed_as_before_its_loop_was_tightened(
        kwargs, params, digest):
    """Digests of the bars the simulator wrote before its per-bar loop was rewritten for
    speed (regime change and resume included): a seed still means the same series."""
    import hashlib

    from pipeline.sources.simulator import SimulatorParams

    h = hashlib.sha256()
    for bar in MarketSimulator(params=SimulatorParams(**params), **kwargs).bars(threading.Event()):
        h.update(json.dumps(bar.to_dict(), separators=(",", ":")).encode())
    assert h.hexdigest()[:16] == digest
