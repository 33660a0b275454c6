"""Streamlit AppTest of the Predictions page on an empty and on a filled store (real SQLite
file): charts, live error panels, the versions table, retraining events, and promoting and
rolling back a version by hand."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LinearRegression
from streamlit.testing.v1 import AppTest

from models.adaptation import RetrainPolicy, retrain, train_default_model
from models.features import compute_features
from models.registry import get_champion, load_model_version
from models.targets import from_close
from pipeline.contracts.schema import Prediction
from pipeline.sources.simulator import MarketSimulator
from pipeline.store.sqlite import SqliteStore

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "predictions.py")
SYMBOLS = ("ACME", "GLOBX")


def fill(data_dir: Path) -> dict:
    """Bars, a default champion, its scored predictions (as the scorer writes them: each
    scored by the next bar) and two retraining decisions."""
    store = SqliteStore(data_dir / "kappalab.sqlite")
    sim = MarketSimulator(symbols=SYMBOLS, bars=700, seed=3)
    store.upsert_bars(list(sim.bars(threading.Event())))
    train_default_model(store, "1m")
    model = load_model_version(store, get_champion(store)["version_id"])
    preds = []
    for symbol in SYMBOLS:
        bars = store.query_bars(symbol, "1m").reset_index(drop=True)
        yhat = model.predict(compute_features(bars, model.features))
        for i in range(len(bars) - 1):
            if bars["ts"][i] < model.meta["train_end_ms"] or not np.isfinite(yhat[i]):
                continue
            p = Prediction(model.version_id, symbol, "1m", int(bars["ts"][i + 1]),
                           int(bars["ts"][i]), model.target, float(yhat[i]),
                           float(bars["close"][i]), produced_ms=1_000, stored_ms=1_050,
                           latency_ms=50.0)
            p.actual = float(from_close(p.target, bars["close"][i + 1], p.base_close))
            p.error = p.predicted - p.actual
            preds.append(p)
    store.upsert_predictions(preds)
    tiny = RetrainPolicy(train_bars=12, min_train_rows=10, challenger_factory=LinearRegression)
    rejected = retrain(store, model, "drift", "test drift", tiny, interval="1m",
                       bar_ts=preds[-5].base_ts)
    out = {"champion": model.version_id, "candidate": rejected.challenger_version_id,
           "predictions": len(preds)}
    store.close()
    return out


def run(at: AppTest) -> AppTest:
    at.run(timeout=60)
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_empty_store_explains_how_predictions_start(data_dir):
    at = run(AppTest.from_file(PAGE, default_timeout=60))
    assert any("No model versions and no predictions yet" in i.value for i in at.info)
    assert not at.get("plotly_chart")


def test_filled_store_shows_predictions_errors_versions_and_events(data_dir):
    filled = fill(data_dir)
    at = run(AppTest.from_file(PAGE, default_timeout=60))
    assert at.selectbox(key="pr_symbol").value == "ACME"
    assert len(at.get("plotly_chart")) == 2  # predicted vs actual, rolling errors
    labels = {m.label for m in at.metric}
    assert {"MAPE", "Direction right", "Persistence MAE"} <= labels
    assert any(label.startswith("MAE (last") for label in labels)
    frames = [df.value for df in at.dataframe]
    versions = next(f for f in frames if "version_id" in getattr(f, "columns", []))
    assert set(versions["version_id"]) == {filled["champion"], filled["candidate"]}
    assert (versions.set_index("version_id").loc[filled["champion"], "status"] == "champion")
    events = next(f for f in frames if "trigger" in getattr(f, "columns", []))
    assert set(events["trigger"]) == {"bootstrap", "drift"}
    assert any(c.value and "Latest: close predicted" in c.value for c in at.caption)
    live = next(f for f in frames if "model version" in getattr(f, "columns", []))
    assert list(live.columns) == ["model version", "predictions", "scored", "MAE", "RMSE",
                                  "MAPE %", "direction right", "persistence MAE"]


def test_promote_and_roll_back_by_hand(data_dir):
    filled = fill(data_dir)
    at = run(AppTest.from_file(PAGE, default_timeout=60))
    at.selectbox(key="pr_version").set_value(filled["candidate"])
    at.button(key="pr_promote").click()
    run(at)
    store = SqliteStore(data_dir / "kappalab.sqlite")
    try:
        assert get_champion(store)["version_id"] == filled["candidate"]
        assert any("is now the champion of global" in s.value for s in at.success)
        at.button(key="pr_rollback").click()
        run(at)
        assert get_champion(store)["version_id"] == filled["champion"]
        assert any("Rolled back global" in s.value for s in at.success)
        at.button(key="pr_rollback").click()  # nothing before the first champion
        run(at)
        assert any("Nothing to roll back" in e.value for e in at.error)
    finally:
        store.close()


def test_promoting_the_champion_again_changes_nothing_and_says_so(data_dir):
    filled = fill(data_dir)
    store = SqliteStore(data_dir / "kappalab.sqlite")
    try:
        before = len(store.list_events("promotion"))
        at = run(AppTest.from_file(PAGE, default_timeout=60))
        at.selectbox(key="pr_version").set_value(filled["champion"])
        at.button(key="pr_promote").click()
        run(at)
        assert any("already the champion of global: nothing changed" in i.value
                   for i in at.info)
        assert not any("is now the champion" in s.value for s in at.success)
        assert get_champion(store)["version_id"] == filled["champion"]
        assert len(store.list_events("promotion")) == before
    finally:
        store.close()


def test_a_same_bar_model_cannot_be_promoted_and_the_page_says_why(data_dir):
    from models.registry import save_model_version

    filled = fill(data_dir)
    store = SqliteStore(data_dir / "kappalab.sqlite")
    try:
        model = LinearRegression().fit(np.arange(20.0).reshape(-1, 1), np.arange(20.0))
        same_bar = save_model_version(store, model, {
            "name": "volume-only", "model_key": "linear", "features": ["volume"],
            "target": "same_bar_close_from_volume", "interval": "1m"})
        at = run(AppTest.from_file(PAGE, default_timeout=60))
        at.selectbox(key="pr_version").set_value(same_bar)
        at.button(key="pr_promote").click()
        run(at)
        assert any("cannot be champion" in e.value and "not a forecast" in e.value
                   for e in at.error)
        run(at)  # still there after another rerun, until dismissed
        assert any("cannot be champion" in e.value for e in at.error)
        assert get_champion(store)["version_id"] == filled["champion"]
    finally:
        store.close()


def test_the_page_says_when_the_scorer_rejects_a_champion(data_dir):
    """A same-bar version forced to champion in the store (as an older KappaLab could save
    it): the real scorer refuses it and keeps the previous one; the page says which."""
    from dashboard.runtime import get_runtime
    from models.registry import save_model_version

    filled = fill(data_dir)
    store = SqliteStore(data_dir / "kappalab.sqlite")
    model = LinearRegression().fit(np.arange(20.0).reshape(-1, 1), np.arange(20.0))
    bad = save_model_version(store, model, {
        "name": "volume-only", "model_key": "linear", "features": ["volume"],
        "target": "same_bar_close_from_volume", "interval": "1m"})
    runtime = get_runtime()
    try:
        wt = runtime.start_scorer()
        deadline = time.time() + 30
        while time.time() < deadline and "predicting" not in str(
                wt.worker.stats().get("gauges", {}).get("status")):
            time.sleep(0.2)
        # Point the global champion at it behind the registry's back (promote() refuses it).
        from pipeline.store.base import CHAMPIONS

        pointer = store.get_doc(CHAMPIONS, "global")
        store.put_doc(CHAMPIONS, "global", {**pointer, "version_id": bad,
                                             "previous_version_id": filled["champion"]})
        store.update_model_version(filled["champion"], status="retired")
        store.update_model_version(bad, status="champion", scope="global")
        while time.time() < deadline and "not usable" not in str(wt.worker.last_error):
            time.sleep(0.2)
        at = run(AppTest.from_file(PAGE, default_timeout=60))
        warning = next(w.value for w in at.warning if "rejected a champion" in w.value)
        assert bad in warning and "not a forecast" in warning
        status = next(m.value for m in at.markdown if m.value.startswith("**Scorer**"))
        assert filled["champion"] in status  # the version it still uses
    finally:
        runtime.shutdown()
        store.close()


def test_scorer_counts_read_as_two_counts(data_dir):
    """A scorer seen by its heartbeat (attach mode) that trained its first default model:
    one promotion, no retrain yet."""
    fill(data_dir)
    store = SqliteStore(data_dir / "kappalab.sqlite")
    try:
        store.heartbeat("scorer-test-1", {
            "kind": "scorer", "state": "running", "pid": 1, "counters": {
                "predictions": 10, "scored": 9, "retrains": 0, "promotions": 1},
            "gauges": {"status": "predicting next_return"}})
        at = run(AppTest.from_file(PAGE, default_timeout=60))
    finally:
        store.close()
    kpi = next(m for m in at.metric if m.label == "Retrains · promotions")
    assert kpi.value == "0 · 1" and "first default model included" in kpi.help


def test_arena_leaderboard_enrol_promote_and_remove(data_dir):
    """The arena section: the leaderboard from a scorer's ``arena`` gauge (seen by its
    heartbeat), enrolment, promotion and removal through the page's forms (real store)."""
    from models.live import arena

    filled = fill(data_dir)
    store = SqliteStore(data_dir / "kappalab.sqlite")
    try:
        challenger = next(v["version_id"] for v in store.list_model_versions()
                          if v["version_id"] != filled["champion"])
        at = run(AppTest.from_file(PAGE, default_timeout=60))
        assert any("No model enrolled" in c.value for c in at.caption)
        at.selectbox(key="pr_arena_pick").set_value(challenger)
        at.button(key="pr_arena_add").click()
        at = run(at)
        assert [e["entry_id"] for e in arena.entries(store)] == [challenger]
        board = [
            {"entry_id": "champion", "name": "champion", "kind": "champion",
             "version_id": filled["champion"], "scored": 250, "window": 200, "window_n": 200,
             "pending": 2, "skill": 0.012, "skill_lo": -0.01, "skill_hi": 0.03,
             "p_holm": 0.31, "reading": "no evidence it beats persistence", "mae": 0.05,
             "directional_accuracy": 0.52, "moves": 190, "comparisons": 2},
            {"entry_id": challenger, "name": "Linear", "kind": "shadow",
             "version_id": challenger, "scored": 120, "window": 200, "window_n": 120,
             "pending": 2, "skill": 0.08, "skill_lo": 0.03, "skill_hi": 0.12,
             "p_holm": 0.004, "reading": "beats persistence", "mae": 0.04,
             "directional_accuracy": 0.58, "moves": 115, "comparisons": 2}]
        store.heartbeat("scorer-test-2", {"kind": "scorer", "state": "running", "pid": 1,
                                          "counters": {}, "gauges": {"arena": board}})
        at = run(AppTest.from_file(PAGE, default_timeout=60))
        table = next(d.value for d in at.dataframe if "Live skill" in d.value)
        assert list(table["Role"]) == ["champion", "shadow"]
        assert table["Reading"].tolist() == ["no evidence it beats persistence",
                                             "beats persistence"]
        assert table["Window"].tolist() == ["200 of 200", "120 of 200"]
        assert table["95% interval"].iloc[1] == "0.03 to 0.12"
        assert any("last 200 scored predictions" in c.value and "2 comparisons" in c.value
                   for c in at.caption)

        at.selectbox(key="pr_arena_up").set_value(challenger)
        at.button(key="pr_arena_promote_btn").click()
        at = run(at)
        assert get_champion(store)["version_id"] == challenger
        at.selectbox(key="pr_arena_gone").set_value(challenger)
        at.button(key="pr_arena_del").click()
        at = run(at)
        assert arena.entries(store) == []
    finally:
        store.close()
