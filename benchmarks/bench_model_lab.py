"""Model lab wall time: all four models plus the baselines on 100k simulated bars, ~20 features,
chronological split, default hyperparameters. Prints ONE JSON line, with the size of the result
charts the page sends (``result_charts_kb``) and, with ``--cancel``, how fast a Cancel issued
during the random forest's training stops it.

    python benchmarks/bench_model_lab.py [--bars 100000] [--n-jobs 2] [--phi 0.08] [--seed 7]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

from models.features import compute_features, max_lookback  # noqa: E402
from models.lab import LabConfig, run_comparison  # noqa: E402
from models.zoo import MODEL_KEYS  # noqa: E402
from pipeline.sources.simulator import MarketSimulator, SimulatorParams  # noqa: E402

FEATURES = [
    "close", "ret_1", "ret_5", "ret_20", "logret_1", "ret_lag_1", "ret_lag_2", "close_to_sma_5",
    "close_to_sma_20", "close_to_ema_10", "close_to_ema_50", "macd_hist", "rsi_14",
    "bb_width_20", "volatility_10", "volatility_20", "hl_range", "vol_z_20", "volume_change",
    "minute_sin", "minute_cos",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bars", type=int, default=100_000)
    p.add_argument("--n-jobs", type=int, default=2)
    p.add_argument("--phi", type=float, default=0.08)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--target", default="next_return")
    p.add_argument("--cancel", action="store_true",
                   help="also time a Cancel issued while the random forest trains")
    args = p.parse_args()

    t0 = time.perf_counter()
    sim = MarketSimulator(["ACME"], "1m", args.seed, bars=args.bars,
                          params=SimulatorParams(phi=args.phi))
    bars = pd.DataFrame([b.to_dict() for b in sim.bars(threading.Event())])
    simulate_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    compute_features(bars, FEATURES)
    features_s = time.perf_counter() - t0

    stages: list[tuple[float, str, float]] = []
    config = LabConfig(symbols=["ACME"], features=FEATURES, target=args.target,
                       split="chronological", models=[(k, {}) for k in MODEL_KEYS],
                       seed=args.seed, n_jobs=args.n_jobs)
    t0 = time.perf_counter()
    result = run_comparison(bars, config,
                            progress=lambda f, m: stages.append((time.perf_counter() - t0, m, f)))
    total_s = time.perf_counter() - t0

    importance_s = {}
    for (t_a, m, _), (t_b, _, _) in zip(stages, stages[1:]):
        if m.endswith("permutation importance"):
            importance_s[m.split(":")[0]] = round(t_b - t_a, 3)

    def r(v, nd=6):
        return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(
            float(v), nd)

    table = {label: {"skill": r(row["skill"]), "rmse": r(row["rmse"], 9), "r2": r(row["r2"]),
                     "directional_accuracy": r(row["directional_accuracy"], 4),
                     "fit_s": r(row["fit_time_s"], 3), "predict_s": r(row["predict_time_s"], 3),
                     "importance_s": importance_s.get(label)}
             for label, row in result.table.iterrows()}
    print(json.dumps({
        "benchmark": "model_lab_compare",
        "bars": len(bars), "features": len(FEATURES), "lookback": max_lookback(FEATURES),
        "target": args.target, "split": "chronological", "phi": args.phi, "seed": args.seed,
        "n_jobs": args.n_jobs, "n_train": result.summary["n_train"],
        "n_test": result.summary["n_test"],
        "simulate_s": round(simulate_s, 3), "features_s": round(features_s, 3),
        "compare_total_s": round(total_s, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "best_model": result.best_label(), "table": table,
        "result_charts_kb": chart_sizes(result),
        "cancel": cancel_latency(bars, config) if args.cancel else None,
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }))


def chart_sizes(result) -> dict:
    """JSON size of the result charts the page sends (default selections), in kB."""
    from dashboard import lab_charts

    colors = lab_charts.model_colors(result.table)
    shown = [lb for lb in [result.best_label(False), "Persistence"] if lb in result.labels]
    symbol = result.summary["symbols"][0]
    figs = {
        "metrics": lab_charts.metric_bars(result.table, "skill"),
        "predicted_vs_actual": lab_charts.predicted_vs_actual(
            result.predictions, shown, colors, symbol,
            {lb: result.predicted_close(lb) for lb in shown}),
        "residuals": lab_charts.residual_distribution(result.residuals(), colors),
    }
    sizes = {k: round(len(f.to_json()) / 1000, 1) for k, f in figs.items()}
    sizes["total"] = round(sum(sizes.values()), 1)
    return sizes


def cancel_latency(bars, config) -> dict:
    """Cancel while the random forest trains: seconds until run_comparison returns, and the
    process CPU seconds spent after the cancel (0 would be an instant stop)."""
    cancel, marks = threading.Event(), {}

    def progress(fraction, message):
        if "Random forest" in message and "cancel_at" not in marks:
            marks["cancel_at"], marks["cpu_at"] = time.perf_counter(), time.process_time()
            cancel.set()

    t0 = time.perf_counter()
    try:
        run_comparison(bars, config, progress=progress, cancel=cancel)
        stopped = False
    except Exception as exc:  # LabCancelled
        stopped = type(exc).__name__ == "LabCancelled"
    end, cpu_end = time.perf_counter(), time.process_time()
    if "cancel_at" not in marks:
        return {"stopped": stopped, "note": "no random forest progress seen"}
    return {"stopped": stopped, "seconds_to_stop": round(end - marks["cancel_at"], 2),
            "cpu_s_after_cancel": round(cpu_end - marks["cpu_at"], 2),
            "total_s": round(end - t0, 2)}


if __name__ == "__main__":
    main()
