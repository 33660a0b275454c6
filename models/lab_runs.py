"""Model-lab runs kept in the store (listed, compared, deleted, exported) and model versions
saved from a run."""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from models import metrics as M
from models.registry import GLOBAL_SCOPE, champion_refusal, promote, save_model_version
from models.targets import effective_horizon

from models.lab_types import LabError, LabResult
from pipeline.contracts.csv_export import csv_bytes

# ---------------------------------------------------------------------------------------------
# Runs kept in the store, and model versions

RUN_KIND = "model_lab"


def save_run(store, result: LabResult) -> str:
    """Record the run (config, table, guidance, summary) in the store; returns its id."""
    doc = {
        "kind": RUN_KIND,
        "config": result.config.to_dict(),
        "table": result.table.reset_index().to_dict("records"),
        "fold_table": result.fold_table.to_dict("records"),
        "best_params": result.best_params,
        "guidance": result.guidance,
        "warnings": result.warnings,
        "summary": result.summary,
        "best_model": result.best_label(),
    }
    result.run_id = store.save_run(doc)
    return result.run_id


def list_runs(store, limit: int = 200) -> pd.DataFrame:
    """One row per stored lab run, newest first."""
    rows = []
    for run in store.list_runs(limit=limit):
        if run.get("kind") != RUN_KIND:
            continue
        cfg, summary = run.get("config", {}), run.get("summary", {})
        table = run_table(run)
        best = run.get("best_model")
        rows.append({
            "run_id": run["run_id"],
            "created": pd.to_datetime(run.get("created_ms", 0), unit="ms", utc=True),
            "symbols": ", ".join(summary.get("symbols") or cfg.get("symbols") or []),
            "interval": cfg.get("interval"),
            "target": cfg.get("target"),
            "horizon": cfg.get("horizon"),
            "split": cfg.get("split"),
            "n_test": summary.get("n_test"),
            "models": len(table),
            "best_model": best,
            "best_skill": (float(table.loc[best, "skill"])
                           if best in table.index and pd.notna(table.loc[best, "skill"])
                           else np.nan),
            # the wording rule (models/significance.py); None for runs recorded before it
            "best_reading": (table.loc[best, "reading"] if best in table.index
                             and "reading" in table.columns
                             and isinstance(table.loc[best, "reading"], str) else None),
        })
    cols = ["run_id", "created", "symbols", "interval", "target", "horizon", "split", "n_test",
            "models", "best_model", "best_skill", "best_reading"]
    return pd.DataFrame(rows, columns=cols)


def run_table(run: dict[str, Any]) -> pd.DataFrame:
    table = pd.DataFrame(run.get("table") or [])
    return table.set_index("model") if "model" in table.columns else table


def compare_runs(runs: list[dict[str, Any]], metric: str = "skill") -> pd.DataFrame:
    """Side by side: one row per model, one column per run, values of ``metric``."""
    cols, order = {}, []
    for run in runs:
        table = run_table(run)
        cfg = run.get("config", {})
        name = f"{run['run_id']} ({cfg.get('target')}, {cfg.get('split')})"
        if metric in table.columns:
            cols[name] = pd.to_numeric(table[metric], errors="coerce")
            order += [m for m in table.index if m not in order]
    out = pd.DataFrame(cols).reindex(order)
    out.index.name = "model"
    return out


def delete_run(store, run_id: str) -> bool:
    return store.delete_run(run_id)


def table_to_csv(table: pd.DataFrame) -> bytes:
    return csv_bytes(table, index=table.index.name is not None)


def save_version(store, result: LabResult, label: str | None = None, champion: bool = False,
                 scope: str = GLOBAL_SCOPE) -> str:
    """Save a fitted model of ``result`` (default: the best) as a model version."""
    label = label or result.best_label()
    refusal = champion_refusal(result.config.target) if champion else None
    if refusal:
        raise LabError(f"{label} cannot be champion: {refusal}.")
    if label not in result.fitted:
        raise LabError(f"No fitted model named {label!r} in this run.")
    fm = result.fitted[label]
    row = result.table.loc[label]
    meta = {
        "name": label, "model_key": fm.key, "params": fm.params, "features": fm.features,
        "target": result.config.target, "horizon": effective_horizon(result.config.target,
                                                                      result.config.horizon),
        "interval": result.config.interval, "symbols": result.summary["symbols"],
        "train_start_ms": fm.train_start_ms, "train_end_ms": fm.train_end_ms,
        "metrics": {k: row[k] for k in M.METRIC_COLUMNS if k in row.index},
        "run_id": result.run_id, "split": result.config.split, "scope": scope,
    }
    version_id = save_model_version(store, fm.estimator, meta)
    if champion:
        promote(store, version_id, scope, reason=f"model lab run {result.run_id or ''}".strip())
    return version_id
