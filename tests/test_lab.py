"""The lab on simulated data with a known answer, runs and model versions in a real store,
train/serve equality through the registry, and the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models import lab, registry
from models.features import compute_features
from models.lab import LabCancelled, LabConfig, NoData, run_comparison
from models.targets import reference_close
from pipeline.sources.simulator import MarketSimulator, SimulatorParams
from pipeline.store.sqlite import SqliteStore

ROOT = Path(__file__).resolve().parent.parent
SMALL = [("linear", {}), ("random_forest", {"n_estimators": 30}),
         ("hist_gradient_boosting", {"max_iter": 60}), ("xgboost", {"n_estimators": 60})]
ACCURACY = ["r2", "mse", "rmse", "mae", "mape_pct", "directional_accuracy", "skill"]


def sim_bars(n: int, symbols=("ACME",), seed: int = 3, phi: float = 0.08) -> pd.DataFrame:
    sim = MarketSimulator(list(symbols), "1m", seed, bars=n, params=SimulatorParams(phi=phi))
    return pd.DataFrame([b.to_dict() for b in sim.bars(threading.Event())])


def config(**kw) -> LabConfig:
    base = dict(models=SMALL, importance_rows=400, importance_repeats=2)
    return LabConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def signal_result() -> lab.LabResult:
    return run_comparison(sim_bars(3000, phi=0.3), config(seed=3))


@pytest.fixture()
def store(tmp_path) -> SqliteStore:
    s = SqliteStore(tmp_path / "kappalab.sqlite")
    yield s
    s.close()


# ---- the known answers -----------------------------------------------------------------------

def test_known_signal_is_found(signal_result):
    table = signal_result.table
    assert list(table.index[:2]) == ["Persistence", "Moving average (5)"]
    assert set(table["kind"]) == {"baseline", "model"} and len(table) == 6
    assert table.loc["Persistence", "skill"] == 0.0
    models = table[table["kind"] == "model"]
    assert models["skill"].max() > 0.03, models["skill"]
    assert models["directional_accuracy"].max() > 0.55
    assert signal_result.best_label() in models.index
    np.testing.assert_allclose(table["rmse"] ** 2, table["mse"])
    assert (table["fit_time_s"] >= 0).all() and table["error"].isna().all()


def test_random_walk_has_no_skill():
    result = run_comparison(sim_bars(3000, seed=4, phi=0.0), config(seed=4))
    models = result.table[result.table["kind"] == "model"]
    assert (models["skill"] < 0.02).all(), models["skill"]
    assert any("persistence" in g for g in result.guidance)


def test_result_parts(signal_result):
    r = signal_result
    preds = r.predictions
    assert len(preds) == r.summary["n_test"] == r.table["n_test"].iloc[0]
    assert r.summary["train_end_ms"] < r.summary["test_start_ms"]
    assert set(r.labels) <= set(preds.columns)
    assert not preds[r.labels].isna().any().any()
    np.testing.assert_allclose(r.predicted_close("Persistence"), preds["base_close"])
    assert r.residuals().shape == (len(preds), len(r.labels))
    assert set(r.importance["model"]) == set(r.labels)
    assert set(r.importance[r.importance["model"] == "Linear regression"]["feature"]) == \
        set(r.summary["features"])
    assert set(r.fitted) == set(r.labels)
    assert r.guidance and r.warnings == []


def test_walk_forward_and_price_target_guidance():
    bars = sim_bars(1500, symbols=("ACME", "GLOBX"), seed=5)
    r = run_comparison(bars, config(split="walk_forward", n_folds=3, target="next_close",
                                    models=[("linear", {}), ("random_forest", {"n_estimators": 10})]))
    assert set(r.predictions["fold"]) == {0, 1, 2}
    assert len(r.fold_table) == 3 * 4 and r.summary["n_folds"] == 3
    assert r.table.loc["Persistence", "r2"] > 0.9  # R² on levels is high for persistence too
    assert any("R² on price levels" in g for g in r.guidance)
    # every symbol's test rows come after every training row of the last fold
    assert r.summary["symbols"] == ["ACME", "GLOBX"]


def test_trees_cannot_extrapolate_guidance():
    n = 800
    ts = 1_735_725_600_000 + 60_000 * np.arange(n)
    close = 100 + 0.05 * np.arange(n) + np.sin(np.arange(n))  # steady uptrend
    bars = pd.DataFrame({"symbol": "UP", "interval": "1m", "ts": ts, "open": close,
                         "high": close + 0.1, "low": close - 0.1, "close": close,
                         "volume": 1000.0, "source": "test"})
    r = run_comparison(bars, config(target="next_close", features=["close", "ret_1"],
                                    models=[("random_forest", {"n_estimators": 10})]))
    assert any("cannot predict outside" in g for g in r.guidance)


def test_random_split_warns_and_same_bar_setup_is_labelled():
    bars = sim_bars(800, seed=6)
    r = run_comparison(bars, config(split="random", models=[("linear", {})]))
    assert any("leaks the future" in w for w in r.warnings)
    r = run_comparison(bars, config(target="same_bar_close_from_volume", models=[("linear", {})]))
    assert r.summary["features"] == ["volume"]
    assert r.fitted["Linear regression"].features == ["volume"]
    assert any("not a forecast" in g for g in r.guidance)


def test_search_reports_best_params():
    r = run_comparison(sim_bars(1200, seed=7, phi=0.3),
                       config(search=True, search_budget=2,
                              models=[("linear", {}), ("hist_gradient_boosting", {})]))
    assert set(r.best_params) == {"Gradient boosting"}
    assert {"max_iter", "learning_rate"} <= set(r.best_params["Gradient boosting"])


def test_cancel_and_no_data(store):
    stop = threading.Event()
    stop.set()
    with pytest.raises(LabCancelled):
        run_comparison(sim_bars(300), config(), cancel=stop)
    with pytest.raises(NoData, match="python -m pipeline backfill"):
        run_comparison(store, config(symbols=["ACME"]))
    with pytest.raises(lab.LabError, match="at least one model"):
        run_comparison(sim_bars(300), config(models=[("persistence", {})]))


def test_progress_reports_per_model_and_fold():
    seen = []
    run_comparison(sim_bars(600), config(split="walk_forward", n_folds=2,
                                         models=[("linear", {})]),
                   progress=lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("Linear regression: fold 2/2" in m for _, m in seen)


# ---- runs kept in the store ------------------------------------------------------------------

def test_runs_are_saved_listed_compared_and_deleted(store, signal_result, tmp_path):
    bars = sim_bars(800, seed=8)
    store.upsert_bars([_bar(r) for r in bars.to_dict("records")])
    r2 = run_comparison(store, config(symbols=["ACME"], models=[("linear", {})]))
    id1, id2 = lab.save_run(store, signal_result), lab.save_run(store, r2)
    reopened = SqliteStore(tmp_path / "kappalab.sqlite")  # survives a restart
    runs = lab.list_runs(reopened)
    assert set(runs["run_id"]) == {id1, id2}
    doc = reopened.get_run(id1)
    assert doc["config"]["target"] == "next_return" and "predictions" not in doc
    pd.testing.assert_series_equal(lab.run_table(doc)["skill"], signal_result.table["skill"],
                                   check_dtype=False)
    side = lab.compare_runs([reopened.get_run(id1), reopened.get_run(id2)], "skill")
    assert side.shape == (6, 2) and side.iloc[:, 1].isna().sum() == 3  # r2 had 3 models
    assert list(side.index) == list(signal_result.table.index)
    csv = lab.table_to_csv(signal_result.table).decode()
    assert csv.splitlines()[0].startswith("model,") and "Persistence" in csv
    # the export and the run list carry the significance and its reading
    assert {"p_value", "p_holm", "skill_lo", "skill_hi", "reading"} <= set(
        csv.splitlines()[0].split(","))
    best = runs.set_index("run_id").loc[id1]
    assert best["best_reading"] == signal_result.table.loc[best["best_model"], "reading"]
    assert lab.delete_run(reopened, id1) and list(lab.list_runs(store)["run_id"]) == [id2]
    reopened.close()


def _bar(row):
    from pipeline.contracts.schema import Bar

    return Bar(**row)


# ---- model versions --------------------------------------------------------------------------

def test_model_version_round_trip_and_no_train_serve_skew(store, signal_result):
    r = signal_result
    vid = lab.save_version(store, r, "Linear regression")
    loaded = registry.load_model_version(store, vid)
    meta = loaded.meta
    for key in ("name", "model_key", "params", "features", "target", "horizon", "interval",
                "symbols", "train_start_ms", "train_end_ms", "metrics", "content_hash",
                "created_ms", "status", "scope"):
        assert key in meta, key
    assert meta["status"] == "candidate" and meta["scope"] == "global"
    assert meta["train_end_ms"] < r.summary["test_start_ms"]
    assert len(meta["content_hash"]) == 64 and loaded.lookback == 21

    # The scorer's path: the last `lookback` bars -> features -> predict, for the last test bar.
    bars = sim_bars(3000, phi=0.3)
    row = len(bars) - 2  # the last bar with a known next return
    window = bars.iloc[row - loaded.lookback + 1: row + 1]
    feats = compute_features(window, loaded.features).iloc[[-1]]
    live = loaded.predict(feats)[0]
    lab_pred = r.predictions.loc[r.predictions["ts"] == bars["ts"].iloc[row], "Linear regression"]
    assert live == pytest.approx(float(lab_pred.iloc[0]), rel=1e-12, abs=1e-15)
    close = loaded.predict_close(feats, window["close"].to_numpy()[-1:])
    assert close[0] == pytest.approx(window["close"].iloc[-1] * (1 + live))

    warm = compute_features(bars.iloc[:30], loaded.features)  # warm-up rows give NaN, not errors
    out = loaded.predict(warm)
    assert np.isnan(out[:20]).all() and np.isfinite(out[21:]).all()

    persistence = registry.load_model_version(store, lab.save_version(store, r, "Persistence"))
    f = compute_features(bars.iloc[-5:], persistence.features)
    np.testing.assert_array_equal(persistence.predict(f), 0.0)  # next_return persistence is 0
    np.testing.assert_allclose(persistence.predict_close(f, reference_close(bars.iloc[-5:],
                                                                            "next_return")),
                               bars["close"].iloc[-5:])


def test_promote_rollback_and_scopes(store, signal_result):
    ids = [lab.save_version(store, signal_result, label) for label in
           ("Linear regression", "XGBoost", "Random forest")]
    assert registry.get_champion(store) is None
    registry.promote(store, ids[0])
    registry.promote(store, ids[1], reason="better skill")
    champions = store.list_model_versions(where={"status": "champion"})
    assert [c["version_id"] for c in champions] == [ids[1]]  # exactly one per scope
    assert store.get_model_version(ids[0])[0]["status"] == "retired"
    # two promotions can share a millisecond, so find the event rather than take the newest
    event = next(e for e in store.list_events("promotion") if e["version_id"] == ids[1])
    assert event["previous_version_id"] == ids[0]
    assert event["reason"] == "better skill" and "skill" in event["metrics"]

    assert registry.get_champion(store, "ACME")["version_id"] == ids[1]  # falls back to global
    registry.promote(store, ids[2], scope="ACME")
    assert registry.get_champion(store, "ACME")["version_id"] == ids[2]
    assert registry.get_champion(store)["version_id"] == ids[1]  # global untouched

    registry.promote(store, ids[2])  # now also global champion... moves it to global scope
    restored = registry.rollback(store)
    assert restored["version_id"] == ids[1] and registry.get_champion(store)["version_id"] == ids[1]
    assert registry.rollback(store)["version_id"] == ids[0]  # walks further back
    with pytest.raises(LookupError):
        registry.rollback(store)
    assert len(store.list_model_versions(where={"status": "champion", "scope": "global"})) == 1


def test_saved_as_champion_and_corruption_detected(store, signal_result):
    vid = lab.save_version(store, signal_result, champion=True)
    assert registry.get_champion(store)["version_id"] == vid
    assert registry.get_champion(store)["name"] == signal_result.best_label()
    store.update_model_version(vid, content_hash="0" * 64)
    with pytest.raises(ValueError, match="corrupt"):
        registry.load_model_version(store, vid)


# ---- CLI -------------------------------------------------------------------------------------

def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "models", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_cli_same_seed_same_metrics(tmp_path):
    args = ["compare", "--simulate", "1200", "--seed", "9", "--phi", "0.3", "--json", "--models",
            "linear,xgboost", "--set", "xgboost.n_estimators=40", "--split", "walk_forward",
            "--folds", "2"]
    env = {"KAPPALAB_DATA_DIR": str(tmp_path)}
    first, second = _cli(*args, env=env), _cli(*args, env=env)
    assert first.returncode == 0, first.stderr
    assert "[" in first.stderr and "XGBoost" in first.stderr  # progress on stderr
    a, b = json.loads(first.stdout), json.loads(second.stdout)
    metrics = lambda doc: [[row[k] for k in ACCURACY] for row in doc["table"]]  # noqa: E731
    assert metrics(a) == metrics(b)
    assert [row["model"] for row in a["table"]] == ["Persistence", "Moving average (5)",
                                                    "Linear regression", "XGBoost"]
    table = _cli(*[x for x in args if x != "--json"], "--quiet", env=env)
    assert table.returncode == 0 and "Persistence" in table.stdout and table.stderr == ""


@pytest.mark.slow
def test_cli_errors_are_one_clear_line(tmp_path):
    env = {"KAPPALAB_DATA_DIR": str(tmp_path)}
    for args, needle in ((["compare", "--simulate", "100", "--features", "bogus"], "unknown feature"),
                         (["compare", "--simulate", "100", "--models", "persistence"], "--models"),
                         (["compare", "--phi", "0.2"], "--simulate"),
                         (["compare", "--quiet"], "python -m pipeline backfill")):
        done = _cli(*args, env=env)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], lines
    assert _cli("compare", "--help").returncode == 0


@pytest.mark.parametrize("model, unit", [("random_forest", "trees"), ("xgboost", "rounds")])
def test_cancel_stops_the_training_inside_a_model(model, unit):
    size = {"random_forest": {"n_estimators": 200}, "xgboost": {"n_estimators": 200}}[model]
    cancel = threading.Event()
    seen = []

    def progress(fraction, message):
        seen.append(message)
        if f"{unit} " in message:
            cancel.set()  # as the page's Cancel does, mid-fit

    with pytest.raises(LabCancelled):
        run_comparison(sim_bars(1500), config(models=[(model, size)]), progress=progress,
                       cancel=cancel)
    inside = [m for m in seen if f"{unit} " in m]
    assert inside == [inside[0]] and inside[0].endswith(f"{unit} 20/200")  # 180 never built
    assert "model 3/3" in inside[0]  # the two baselines come first


def test_chunked_fit_is_the_same_model_as_one_fit():
    bars = sim_bars(2000)
    X = compute_features(bars, ["ret_1", "ret_5", "rsi_14", "hl_range"]).dropna()
    y = X["ret_1"].shift(-1).fillna(0.0).to_numpy()
    from models.zoo import get_spec

    for key, params in (("random_forest", {"n_estimators": 25, "rows_per_tree": 500}),):
        whole = get_spec(key).build(params, seed=1)
        whole.fit(X, y)
        chunked = get_spec(key).build(params, seed=1)
        ticks = []
        lab.fit_in_chunks(chunked, X, y, lambda d, t, u: ticks.append(d))
        assert ticks == sorted(ticks) and len(ticks) > 1
        np.testing.assert_allclose(chunked.predict(X), whole.predict(X), rtol=1e-12)


def test_default_forest_trees_see_at_most_rows_per_tree():
    from models.zoo import get_spec

    forest = get_spec("random_forest").build({"n_estimators": 3, "rows_per_tree": 300}, seed=0)
    X = np.random.default_rng(0).normal(size=(5_000, 3))
    forest.fit(X, X[:, 0])
    assert all(t.tree_.n_node_samples[0] <= 300 for t in forest.estimators_)
    assert forest.get_params()["max_samples"] is None  # the parameter is left as it was
