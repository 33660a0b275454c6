"""The live arena (models/live/arena.py) on real parts: embedded broker over TCP, SQLite file, the
simulator through a real producer, the indexer and the scorer. Two enrolled model versions and
a baseline are scored in shadow beside the champion; their live figures equal a batch
recomputation over the same bars, and the champion's predictions are untouched."""
from __future__ import annotations

import pandas as pd
import pytest

from models.live import arena
from models.adaptation import RetrainPolicy, train_default_model
from models.lab import LabConfig, run_comparison, save_version
from models.registry import get_champion, load_model_version
from tests.test_scorer import (
    SYMBOLS, counters, joined, start_indexer, start_scorer, start_stream, store_history,
    wait_for,
)


def test_enrolment_is_kept_in_the_store(sqlite_store):
    store = sqlite_store
    store_history(store, 300)
    version = save_version(store, run_comparison(store, LabConfig(
        interval="1m", models=[("linear", {})], importance_repeats=1)), "Linear regression")
    assert arena.enrol(store, version)["name"] == "Linear regression"
    arena.enrol(store, "baseline:moving_average")
    assert [e["entry_id"] for e in arena.entries(store)] == [version,
                                                             "baseline:moving_average"]
    assert arena.remove(store, version) and not arena.remove(store, version)
    assert [e["entry_id"] for e in arena.entries(store)] == ["baseline:moving_average"]
    with pytest.raises(ValueError, match="unknown baseline"):
        arena.enrol(store, "baseline:oracle")
    with pytest.raises(KeyError):
        arena.enrol(store, "no-such-version")
    model = arena.load_entry(store, "baseline:moving_average")
    assert model.features == ["sma_5", "close"] and model.target == "next_return"


@pytest.mark.slow
def test_shadow_figures_equal_a_batch_recomputation(broker, topics, sqlite_store):
    store = sqlite_store
    store_history(store, 400)
    assert train_default_model(store, "1m").promoted
    champion_id = get_champion(store)["version_id"]
    result = run_comparison(store, LabConfig(
        interval="1m", models=[("linear", {}), ("random_forest", {"n_estimators": 20})],
        importance_repeats=1))
    shadows = [save_version(store, result, label) for label in ("Linear regression",
                                                                 "Random forest")]
    for entry in [*shadows, "baseline:moving_average"]:
        arena.enrol(store, entry)
    first_stream_ts = int(store.query_bars(SYMBOLS[0], "1m")["ts"].max()) + 60_000

    n_stream = 120
    window = 10_000  # every scored prediction: the batch sums need no arrival order
    quiet = RetrainPolicy(every_bars=None, drift_factor=None)
    indexer = start_indexer(store, broker, topics, topics["bars"])
    scorer = start_scorer(store, broker, topics, f"sc-{topics['bars']}", policy=quiet,
                          error_window=window)
    producer = None
    try:
        wait_for(lambda: joined(scorer), 30, "the scorer to join its group")
        producer = start_stream(broker, topics["bars"], store, n_stream, steps_per_s=40)
        wait_for(lambda: not producer.alive, 60, "the stream to end")
        expected = (n_stream - 1) * len(SYMBOLS)
        wait_for(lambda: counters(scorer)["scored"] >= expected, 60, "every bar scored")
    finally:
        for worker in (producer, scorer, indexer):
            if worker is not None:
                worker.stop()
    board = {r["entry_id"]: r for r in scorer.worker.stats(history=False)["gauges"]["arena"]}
    assert list(board)[0] == "champion" and board["champion"]["version_id"] == champion_id
    assert set(board) == {"champion", *shadows, "baseline:moving_average"}

    bars = pd.concat([store.query_bars(s, "1m") for s in SYMBOLS], ignore_index=True)
    for entry in [*shadows, "baseline:moving_average"]:
        live = board[entry]
        want = arena.batch_figures(bars, arena.load_entry(store, entry), window,
                                   start_ts=first_stream_ts)
        assert live["scored"] == want["scored"] == expected
        assert live["window_n"] == want["window_n"]
        assert live["skill"] == pytest.approx(want["skill"], rel=1e-9)
        assert live["mae"] == pytest.approx(want["mae"], rel=1e-9)
        assert live["directional_accuracy"] == pytest.approx(want["directional_accuracy"],
                                                             rel=1e-12)
        assert live["skill_lo"] <= live["skill"] <= live["skill_hi"]
        assert live["reading"] in ("beats persistence", "no evidence it beats persistence",
                                   "worse than persistence")
        assert live["comparisons"] == 4  # champion, two shadows, the moving average

    # The champion's figures in the arena are those of its stored predictions; shadow
    # predictions never reach the store.
    champion = arena.batch_figures(bars, load_model_version(store, champion_id), window,
                                   start_ts=first_stream_ts)
    assert board["champion"]["skill"] == pytest.approx(champion["skill"], rel=1e-9)
    stored = store.query_predictions(limit=100_000)
    assert set(stored["model_id"]) == {champion_id}
