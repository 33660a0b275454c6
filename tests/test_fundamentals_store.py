"""The fundamentals part of the store contract on every backend (SQLite file, the ES test
double over loopback HTTP, a real cluster when ``ELASTICSEARCH_URL`` is set)."""
from __future__ import annotations

import math

import pytest

from pipeline.contracts.fundamentals import FUNDAMENTAL_VALUES, FUNDAMENTALS_COLUMNS, FundamentalsSnapshot
from tests.test_store_contract import PAGE, es_server, store  # noqa: F401  (fixtures)

T0 = 1_700_000_000_000
DAY = 86_400_000


def snaps(symbol="AAA", n=6) -> list[FundamentalsSnapshot]:
    return [FundamentalsSnapshot(symbol, T0 + i * DAY, "alphavantage", "2023-09-30",
                                 {"pe_ratio": 20.0 + i, "eps": None if i == 2 else 1.5 * i,
                                  "market_cap": 2.5e11 + i})
            for i in range(n)]


def test_fundamentals_round_trip_range_limit_and_replay(store):
    items = snaps() + snaps("BBB", 2)
    assert store.upsert_fundamentals(items).accepted == 8
    assert store.upsert_fundamentals(items[:3]).accepted == 3  # a replay overwrites
    got = store.query_fundamentals("AAA")
    assert list(got.columns) == FUNDAMENTALS_COLUMNS and len(got) == 6
    assert got["ts"].tolist() == [T0 + i * DAY for i in range(6)]
    assert got["pe_ratio"].tolist() == [20.0 + i for i in range(6)]
    assert math.isnan(got["eps"].iloc[2]) and got["eps"].iloc[3] == 4.5
    assert got["beta"].isna().all()  # never given: NaN
    assert got["latest_quarter"].iloc[0] == "2023-09-30"
    ranged = store.query_fundamentals("AAA", T0 + DAY, T0 + 3 * DAY)
    assert ranged["ts"].tolist() == [T0 + DAY, T0 + 2 * DAY]  # half-open
    assert store.query_fundamentals("AAA", limit=2)["ts"].tolist() == [T0 + 4 * DAY,
                                                                        T0 + 5 * DAY]
    assert store.count_fundamentals() == 8 and store.count_fundamentals("BBB") == 2
    empty = store.query_fundamentals("ZZZ")
    assert empty.empty and list(empty.columns) == FUNDAMENTALS_COLUMNS
    assert set(FUNDAMENTAL_VALUES) <= set(empty.columns)
    with pytest.raises(ValueError):
        store.query_fundamentals("AAA", limit=-1)
