"""`python -m models compare` picks the stored interval, or asks for one in CLI words."""
from __future__ import annotations

import threading

import pytest

from models.__main__ import UsageError, _stored_interval
from pipeline.sources.simulator import MarketSimulator
from pipeline.store.sqlite import SqliteStore


def test_interval_is_picked_when_one_is_stored_and_asked_for_when_several(tmp_path):
    store = SqliteStore(tmp_path / "kappalab.sqlite")
    for interval in ("5m", "1d"):
        store.upsert_bars(list(MarketSimulator(symbols=("GOOG",), interval=interval, bars=30)
                               .bars(threading.Event())))
    store.upsert_bars(list(MarketSimulator(symbols=("IBM",), interval="1h", bars=30)
                           .bars(threading.Event())))
    assert _stored_interval(store, ["IBM"]) == "1h"
    with pytest.raises(UsageError) as err:
        _stored_interval(store, ["GOOG"])
    assert "GOOG has bars at 5m, 1d; choose one with --interval." == str(err.value)
    store.close()
