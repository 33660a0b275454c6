"""The model lab page under Streamlit's AppTest, on a real SQLite store in a temp data dir."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pipeline.sources.simulator import MarketSimulator, SimulatorParams
from pipeline.store.sqlite import SqliteStore

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "model_lab.py")
TIMEOUT = 180


@pytest.fixture()
def filled(data_dir):
    store = SqliteStore(data_dir / "kappalab.sqlite")
    sim = MarketSimulator(["ACME", "GLOBX"], "1m", 21, bars=1500, params=SimulatorParams(phi=0.3))
    store.upsert_bars(list(sim.bars(threading.Event())))
    yield store
    store.close()


def small_models(at: AppTest) -> None:
    at.number_input(key="ml_random_forest_n_estimators").set_value(20)
    at.number_input(key="ml_hist_gradient_boosting_max_iter").set_value(30)
    at.number_input(key="ml_xgboost_n_estimators").set_value(30)


def test_empty_store_shows_the_empty_state(data_dir):
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("python -m pipeline backfill" in i.value for i in at.info)
    assert not at.button  # nothing to run yet


def test_run_shows_all_models_with_baselines_and_keeps_the_run(filled):
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not at.exception
    assert any("1,500 bars selected" in c.value for c in at.caption)
    at.multiselect(key="ml_groups").set_value(["returns", "rsi", "volume"])
    at.multiselect(key="ml_extra_features").set_value(["close_to_sma_20"])
    at.multiselect(key="ml_models").set_value(["linear", "random_forest",
                                               "hist_gradient_boosting", "xgboost"])
    small_models(at)
    at.button(key="ml_run").click().run()
    assert not at.exception and not at.error

    table = at.dataframe[0].value
    assert list(table.index) == ["Persistence", "Moving average (5)", "Linear regression",
                                 "Random forest", "Gradient boosting", "XGBoost"]
    assert "Skill vs persistence" in table.columns
    # Significance vs persistence, in plain words (models/significance.py)
    assert {"Skill 95% interval", "p (DM, Holm)", "Reading"} <= set(table.columns)
    assert table.loc["Persistence", "Reading"] == "—"
    assert set(table["Reading"][2:]) <= {"beats persistence", "no evidence it beats persistence",
                                         "worse than persistence"}
    assert any("Holm-corrected over 5 comparisons" in i.value for i in at.info)
    assert any("R² near 0" in i.value for i in at.info)  # guidance shown
    runs = filled.list_runs()
    assert len(runs) == 1
    assert runs[0]["config"]["features"][:2] == ["ret_1", "ret_5"]
    assert "close_to_sma_20" in runs[0]["config"]["features"]

    # a rerun (any widget change) shows the stored result without retraining
    at.selectbox(key="ml_metric").set_value("rmse").run()
    assert not at.exception and len(filled.list_runs()) == 1
    assert list(at.dataframe[0].value.index) == list(table.index)

    # save the best model as the champion
    at.checkbox(key="ml_save_champion").check()
    at.button(key="ml_save").click().run()
    assert not at.exception and at.success
    versions = filled.list_model_versions()
    assert len(versions) == 1 and versions[0]["status"] == "champion"


def test_random_split_warns_and_runs_can_be_deleted(filled):
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    at.radio(key="ml_split").set_value("random").run()
    assert any("leaks the future" in w.value for w in at.warning)
    at.multiselect(key="ml_models").set_value(["linear"])
    at.button(key="ml_run").click().run()
    assert not at.exception
    assert sum("leaks the future" in w.value for w in at.warning) == 1  # once, not twice
    assert list(at.dataframe[0].value.index) == ["Persistence", "Moving average (5)",
                                                 "Linear regression"]
    caption = next(c.value for c in at.caption if c.value.startswith("Run "))
    assert "cut on time" not in caption
    assert any("holdout figures that leak the future" in c.value for c in at.caption)
    run_id = filled.list_runs()[0]["run_id"]
    at.selectbox(key="ml_delete_pick").set_value(run_id)
    at.button(key="ml_delete").click().run()
    assert not at.exception
    assert len(filled.list_runs()) == 1  # it asks first
    assert any(f"Delete run {run_id}?" in w.value for w in at.warning)
    at.button(key="ml_delete_yes").click().run()
    assert not at.exception
    assert filled.list_runs() == []


def test_walk_forward_shows_the_per_fold_table_and_honest_counts(filled):
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    at.radio(key="ml_split").set_value("walk_forward").run()
    at.number_input(key="ml_folds").set_value(4)
    at.multiselect(key="ml_models").set_value(["linear"])
    at.button(key="ml_run").click().run()
    assert not at.exception and not at.error
    folds = next(d.value for d in at.dataframe if "fold 1" in d.value.columns)
    assert [c for c in folds.columns if c.startswith("fold ")] == [f"fold {i}" for i in range(1, 5)]
    assert "Linear regression" in folds.index and "folds beating persistence" in folds.columns
    readings = next(d.value for d in at.dataframe  # the wording rule per fold
                    if "fold 1" in d.value.columns and "mean" not in d.value.columns)
    assert list(readings.columns) == [f"fold {i}" for i in range(1, 5)]
    assert all(" persistence (p " in t for t in readings.loc["Linear regression"])
    wins = sum(t.startswith("beats persistence") for t in readings.loc["Linear regression"])
    assert folds.loc["Linear regression", "folds beating persistence"] == f"{wins}/4"
    caption = next(c.value for c in at.caption if c.value.startswith("Run "))
    assert "4 folds test" in caption and "rows for fold 1 up to" in caption

    # A reload (a new session) shows the recorded run, folds included.
    again = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    assert not again.exception
    assert any("Showing the last recorded run" in c.value for c in again.caption)
    assert any("fold 1" in d.value.columns for d in again.dataframe)


def test_champion_guard_for_the_same_bar_target(filled):
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    at.selectbox(key="ml_target").set_value("same_bar_close_from_volume").run()
    at.multiselect(key="ml_models").set_value(["linear"])
    at.button(key="ml_run").click().run()
    assert not at.exception
    box = at.checkbox(key="ml_save_champion")
    assert box.disabled and "not a forecast" in box.help
    assert any("cannot give a champion" in c.value for c in at.caption)
    # the R² note about price levels is not shown beside a same-bar model's scores
    assert not any("close to 1 for every model" in i.value for i in at.info)
    at.button(key="ml_save").click().run()
    versions = filled.list_model_versions()
    assert len(versions) == 1 and versions[0]["status"] == "candidate"

    from models.registry import promote

    with pytest.raises(ValueError, match="not a forecast"):
        promote(filled, versions[0]["version_id"])


def test_a_date_range_without_bars_says_what_to_change(data_dir):
    import datetime as dt

    store = SqliteStore(data_dir / "kappalab.sqlite")
    day = 86_400_000
    start = 1_704_067_200_000  # 2024-01-01
    for offset in (0, 2 * day):  # bars on Jan 1 and Jan 3, none on Jan 2
        store.upsert_bars(list(MarketSimulator(["ACME"], "1m", 5, bars=100,
                                               start_ms=start + offset).bars(threading.Event())))
    store.close()
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    at.date_input(key="ml_dates").set_value((dt.date(2024, 1, 2), dt.date(2024, 1, 2))).run()
    assert not at.exception
    info = " ".join(i.value for i in at.info)
    assert "No 1m bars of ACME in this date range: widen the Date range" in info
    assert "no bars yet" not in info  # the store has bars, just not on that day


def test_seeds_control_shows_the_spread_over_simulated_paths(filled):
    at = AppTest.from_file(PAGE, default_timeout=TIMEOUT).run()
    at.multiselect(key="ml_models").set_value(["linear"])
    at.number_input(key="ml_seeds_n").set_value(3)
    at.number_input(key="ml_seeds_bars").set_value(600)
    at.button(key="ml_seeds_run").click().run()
    assert not at.exception and not at.error
    spread = next(d.value for d in at.dataframe if "paths beating persistence" in d.value.columns)
    assert list(spread.index) == ["Persistence", "Moving average (5)", "Linear regression"]
    assert spread.loc["Linear regression", "paths"] == "3"
    assert "on" in spread.loc["Linear regression", "reading"]  # "... on k of 3 paths"
    assert any("3 paths of 600 bars" in m.value for m in at.markdown)


def test_results_table_scales_tiny_errors_and_ranks_only_quality_columns():
    """MSE 1.643e-7 vs 1.648e-7 reads 1.643 vs 1.648 under "MSE (×10⁻⁷)"; timings are never
    highlighted (a baseline is always fastest: "best" says nothing there)."""
    import pandas as pd

    from dashboard.lab_charts import model_colors, styled_table

    table = pd.DataFrame({"kind": ["baseline", "baseline", "model"],
                          "mse": [1.648e-7, 1.9e-7, 1.643e-7], "skill": [0.0, -0.15, 0.003],
                          "fit_time_s": [0.0001, 0.0002, 0.5],
                          "predict_time_s": [0.0001, 0.0001, 0.01]},
                         index=["Persistence", "Moving average", "Ridge"])
    styler = styled_table(table)
    shown = styler.data
    assert "MSE (×10⁻⁷)" in shown.columns
    assert list(shown["MSE (×10⁻⁷)"]) == ["1.648", "1.9", "1.643"]
    styler._compute()  # the cells' styles (pandas keeps them in ctx)
    cells = {(shown.index[r], shown.columns[c]) for (r, c), css in styler.ctx.items()
             if any(prop == "background-color" for prop, _ in css)}
    # MSE and skill of Ridge; not Fit s / Predict s of a baseline
    assert cells == {("Ridge", "MSE (×10⁻⁷)"), ("Ridge", "Skill vs persistence")}
    # On the page: the verdict table and the error table, each narrow enough to fit.
    verdict, errors = styled_table(table, "verdict").data, styled_table(table, "errors").data
    assert list(verdict.columns) == ["kind", "Skill vs persistence"]
    assert "MSE (×10⁻⁷)" in errors.columns and "Skill vs persistence" not in errors.columns
    colors = model_colors(table)
    assert len(set(colors.values())) == 3  # two baselines, two different colours
