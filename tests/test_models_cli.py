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


def _run_cli(capsys, *argv) -> dict:
    import json

    from models.__main__ import main

    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_compare_json_has_significance_and_per_fold_figures(capsys):
    doc = _run_cli(capsys, "compare", "--simulate", "1500", "--phi", "0.3", "--split",
                   "walk_forward", "--folds", "3", "--models", "linear", "--json", "--quiet")
    linear = next(r for r in doc["table"] if r["model"] == "Linear regression")
    assert linear["reading"] == "beats persistence" and linear["p_holm"] < 0.05
    assert linear["skill_lo"] < linear["skill"] < linear["skill_hi"]
    assert doc["summary"]["significance"]["comparisons"] == 2  # linear and moving average
    folds = [r for r in doc["fold_table"] if r["model"] == "Linear regression"]
    assert [r["fold"] for r in folds] == [0, 1, 2]
    assert all(r["reading"] and r["p_value"] is not None for r in folds)


def test_compare_over_seeds_shows_the_spread(capsys):
    doc = _run_cli(capsys, "compare", "--simulate", "600", "--phi", "0", "--seeds", "3",
                   "--models", "linear", "--json", "--quiet")
    assert doc["seeds"] == [0, 1, 2]
    assert len(doc["per_seed"]) == 3 * 3  # persistence, moving average, linear per seed
    spread = {r["model"]: r for r in doc["spread"]}
    assert spread["Linear regression"]["seeds"] == 3
    assert spread["Linear regression"]["skill_min"] <= spread["Linear regression"]["skill_max"]
    assert "paths" in spread["Linear regression"]["reading"] or "path" in \
        spread["Linear regression"]["reading"]


def test_seeds_need_simulation(capsys, tmp_path, monkeypatch):
    from models.__main__ import main

    monkeypatch.setenv("KAPPALAB_DATA_DIR", str(tmp_path))
    assert main(["compare", "--seeds", "3", "--quiet"]) == 2
    assert "--seeds K needs" in capsys.readouterr().err
