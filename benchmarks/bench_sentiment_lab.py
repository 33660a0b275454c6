"""Model lab with and without the sentiment group on simulated news, at several information
levels (``news_impact``, see pipeline/sources/news_simulator.py).

    python benchmarks/bench_sentiment_lab.py [--bars 3000] [--impacts 0,1.5] [--seeds 3]

Prints one JSON line per information level and seed (``--seeds K``: seeds SEED..SEED+K-1): the
skill vs persistence (chronological split, next_return) of each model with the default
features, and with default + sentiment, each with its Holm-corrected Diebold–Mariano p-value
and reading (models/significance.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.lab import LabConfig, run_comparison  # noqa: E402
from pipeline.sources.news_simulator import simulate_frames  # noqa: E402
from pipeline.sources.simulator import SimulatorParams  # noqa: E402

MODELS = [("linear", {}), ("hist_gradient_boosting", {"max_iter": 100})]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", type=int, default=3000, help="bars per symbol")
    ap.add_argument("--impacts", default="0,1.5", help="news impact levels, comma-separated")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--seeds", type=int, default=1, help="paths per level (seeds SEED..)")
    args = ap.parse_args()
    for impact in (float(x) for x in args.impacts.split(",")):
        for seed in range(args.seed, args.seed + max(1, args.seeds)):
            print(json.dumps(one_run(args.bars, impact, seed)), flush=True)


def one_run(n_bars: int, impact: float, seed: int) -> dict:
    bars, news = simulate_frames(("ACME", "GLOBX"), "1m", n_bars, seed=seed,
                                 news_rate=0.2, news_impact=impact,
                                 params=SimulatorParams(phi=0.0))
    line = {"news_impact": impact, "seed": seed, "bars": len(bars), "news": len(news)}
    for label, feats in (("without", ["default"]), ("with", ["default", "sentiment"])):
        cfg = LabConfig(features=feats, models=MODELS, importance_rows=200,
                        importance_repeats=1, seed=seed)
        table = run_comparison(bars, cfg, news=news).table
        for key, row in table[table["kind"] == "model"].iterrows():
            line[f"skill_{label}_{key}"] = round(float(row["skill"]), 4)
            line[f"diracc_{label}_{key}"] = round(float(row["directional_accuracy"]), 4)
            line[f"p_holm_{label}_{key}"] = float(f"{float(row['p_holm']):.3g}")
            line[f"reading_{label}_{key}"] = row["reading"]
    return line


if __name__ == "__main__":
    main()
