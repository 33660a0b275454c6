"""Seeded generator of hostile ``finance-data`` messages, for the indexer's fuzz test.

    python -m tests.fuzz_messages --seed 42 --count 20   # print a sample

Messages start from valid bars of the symbol ``FZ`` and are mutated (bit flips, truncation,
type changes, huge and odd number literals, unicode junk, duplicated / missing / extra fields,
random bytes, deep nesting, oversize). A mutation may happen to leave a valid bar: the test
decides with :func:`pipeline.contracts.schema.parse_bar` which messages must be stored and which must be
dead-lettered. Good bars in the test use other symbols, so no mutant can overwrite them.
"""
from __future__ import annotations

import argparse
import json
import random
from typing import Callable, Iterator

FUZZ_SYMBOL = "FZ"
BASE_TS = 1_767_225_600_000  # 2026-01-01

HUGE_LITERALS = [
    "1" + "0" * 400, "-" + "9" * 5000, "1e400", "-1e400", "1e-400", "123456789012345678901234",
    "0.000000000000000000000000000000001", "1" * 4301, "9" * 20, "-0", "0", "1.5e308",
    "18446744073709551616", "1E+2", "0e0", "3.14159" + "2" * 3000,
]
UNICODE_JUNK = [
    "\ud800", "\udfff", "\ud83d", "\x00", "\x1f", "\x7f", "\x85", "\u200b", "\u202e", "\ufeff",
    "\U0001F4B8", "e\u0301", "Ω", "ＡＣＭＥ", "\uffff", "|", " FZ", "\t", "\n",
]
FIELDS = ("symbol", "interval", "ts", "open", "high", "low", "close", "volume", "source")
TYPE_SWAPS = ["null", "true", "false", "[]", "{}", '"1"', '""', "[1,2]", '{"a":1}', "1", "-1",
              "0.5", '"NaN"']


def base_bar(rng: random.Random, i: int) -> dict:
    close = round(rng.uniform(10, 500), 4)
    low = round(close * (1 - rng.uniform(0, 0.01)), 4)
    high = round(close * (1 + rng.uniform(0, 0.01)), 4)
    return {"symbol": FUZZ_SYMBOL, "interval": "1m", "ts": BASE_TS + 60_000 * i,
            "open": close, "high": high, "low": low, "close": close,
            "volume": round(rng.uniform(0, 1e6), 2), "source": "fuzz"}


def _raw_fields(bar: dict) -> list[tuple[str, str]]:
    return [(k, json.dumps(v)) for k, v in bar.items()]


def _join(pairs: list[tuple[str, str]]) -> bytes:
    body = ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs)
    return ("{" + body + "}").encode("utf-8", "surrogatepass")


def m_bitflip(rng, bar):
    raw = bytearray(json.dumps(bar).encode())
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(raw))
        raw[pos] ^= 1 << rng.randrange(8)
    return bytes(raw)


def m_truncate(rng, bar):
    raw = json.dumps(bar).encode()
    return raw[: rng.randrange(len(raw))]


def m_type_swap(rng, bar):
    pairs = _raw_fields(bar)
    i = rng.randrange(len(pairs))
    pairs[i] = (pairs[i][0], rng.choice(TYPE_SWAPS))
    return _join(pairs)


def m_huge_number(rng, bar):
    pairs = _raw_fields(bar)
    numeric = [i for i, (k, _) in enumerate(pairs) if k in ("ts", "open", "high", "low", "close", "volume")]
    i = rng.choice(numeric)
    pairs[i] = (pairs[i][0], rng.choice(HUGE_LITERALS + ["NaN", "Infinity", "-Infinity"]))
    return _join(pairs)


def m_unicode(rng, bar):
    pairs = _raw_fields(bar)
    texts = [i for i, (k, _) in enumerate(pairs) if k in ("symbol", "interval", "source")]
    i = rng.choice(texts)
    value = json.loads(pairs[i][1])
    junk = rng.choice(UNICODE_JUNK)
    pos = rng.randint(0, len(value))
    value = value[:pos] + junk + value[pos:]
    # ensure_ascii=True writes lone surrogates as \\udxxx escapes, which json.loads accepts
    pairs[i] = (pairs[i][0], json.dumps(value))
    return _join(pairs)


def m_raw_unicode_bytes(rng, bar):
    raw = json.dumps(bar).encode()
    junk = rng.choice([b"\xed\xa0\x80", b"\xc0\xaf", b"\xff", b"\xf4\x90\x80\x80", b"\x00"])
    pos = rng.randint(0, len(raw))
    return raw[:pos] + junk + raw[pos:]


def m_duplicate_field(rng, bar):
    pairs = _raw_fields(bar)
    k, v = rng.choice(pairs)
    pairs.insert(rng.randrange(len(pairs) + 1), (k, v if rng.random() < 0.5 else rng.choice(TYPE_SWAPS)))
    return _join(pairs)


def m_missing_field(rng, bar):
    pairs = _raw_fields(bar)
    del pairs[rng.randrange(len(pairs))]
    return _join(pairs)


def m_extra_field(rng, bar):
    pairs = _raw_fields(bar)
    name = rng.choice(["extra", "Symbol", "", "\u200b", "ts ", "close\x00"])
    pairs.insert(rng.randrange(len(pairs) + 1), (name, rng.choice(TYPE_SWAPS)))
    return _join(pairs)


def m_random_bytes(rng, bar):
    return bytes(rng.randrange(256) for _ in range(rng.randint(0, 300)))


def m_structure(rng, bar):
    choice = rng.randrange(6)
    if choice == 0:
        depth = rng.choice([10, 1000, 5000])
        return b"[" * depth + b"]" * depth
    if choice == 1:
        return json.dumps([bar]).encode()
    if choice == 2:
        return json.dumps(json.dumps(bar)).encode()  # a JSON string holding JSON
    if choice == 3:
        return b""
    if choice == 4:
        return b"  \n\t "
    return json.dumps(bar).encode() + b" trailing"


def m_oversize(rng, bar):
    padded = dict(bar, source="x" * rng.choice([100, 20_000]))
    return json.dumps(padded).encode()


def m_semantic(rng, bar):
    """Well-formed JSON that breaks the bar's rules (ranges, OHLC order, limits)."""
    bar = dict(bar)
    choice = rng.randrange(8)
    if choice == 0:
        bar["low"], bar["high"] = bar["high"] + 1, bar["low"]
    elif choice == 1:
        bar["volume"] = -abs(bar["volume"]) - 1
    elif choice == 2:
        bar["ts"] = rng.choice([0, -1, 1_700_000_000, 4_200_000_000_000, 1.5e12 + 0.5])
    elif choice == 3:
        bar["interval"] = rng.choice(["1M", "2m", "", "1d ", "minute"])
    elif choice == 4:
        bar["symbol"] = rng.choice(["", "X" * 33, "A|B", " A"])
    elif choice == 5:
        bar["close"] = bar["high"] * 2
    elif choice == 6:
        bar["low"] = 0
    else:
        bar["open"] = 1e10
    return json.dumps(bar).encode()


MUTATIONS: list[Callable[[random.Random, dict], bytes]] = [
    m_bitflip, m_truncate, m_type_swap, m_huge_number, m_unicode, m_raw_unicode_bytes,
    m_duplicate_field, m_missing_field, m_extra_field, m_random_bytes, m_structure,
    m_semantic,
]


def fuzz_messages(seed: int, count: int, oversize_every: int = 5000) -> Iterator[bytes]:
    """``count`` hostile messages, deterministic for ``seed``."""
    rng = random.Random(seed)
    for i in range(count):
        bar = base_bar(rng, i)
        if oversize_every and i % oversize_every == oversize_every - 1:
            yield m_oversize(rng, bar)
        else:
            yield rng.choice(MUTATIONS)(rng, bar)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--count", type=int, default=20)
    args = p.parse_args()
    for raw in fuzz_messages(args.seed, args.count):
        print(raw[:160])


if __name__ == "__main__":
    main()
