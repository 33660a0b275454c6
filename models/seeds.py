"""Seeds as a control: the same comparison on several simulated paths, and its spread.

One run on one simulated path can show a model "winning" by chance. :func:`run_seeds` repeats
the comparison of a :class:`~models.lab_types.LabConfig` on ``n`` paths of the simulator
(seeds ``seed, seed + 1, ...``; the split and model seeds follow), and :func:`seed_spread`
summarises each model over the paths: mean, spread and range of its skill vs persistence, and
on how many paths it beats persistence significantly (the wording rule of
:mod:`models.significance`). On a random walk (``phi = 0``) the expected count is at most the
level times the number of paths; with real signal (``phi = 0.3``) it should be all of them.
"""
from __future__ import annotations

import threading
from dataclasses import replace
from typing import Callable

import numpy as np
import pandas as pd

from models import significance as S
from models.lab_types import LabCancelled, LabConfig, ProgressCallback

PER_SEED_COLUMNS = ["seed", "model", "kind", "skill", "skill_lo", "skill_hi", "p_holm",
                    "reading"]


def simulated_bars(seed: int, n_bars: int, interval: str = "1m", phi: float | None = None,
                   symbols: list[str] | None = None) -> pd.DataFrame:
    """``n_bars`` simulated bars per symbol (the simulator's first symbol by default)."""
    from pipeline.sources.simulator import DEFAULT_SYMBOLS, MarketSimulator, SimulatorParams

    params = SimulatorParams() if phi is None else SimulatorParams(phi=phi)
    sim = MarketSimulator(symbols or [DEFAULT_SYMBOLS[0]], interval, seed=seed, bars=n_bars,
                          params=params)
    return pd.DataFrame([b.to_dict() for b in sim.bars(threading.Event())])


def run_seeds(make_bars: Callable[[int], pd.DataFrame], config: LabConfig, n_seeds: int,
              progress: ProgressCallback | None = None,
              cancel: threading.Event | None = None) -> pd.DataFrame:
    """One row per (seed, model): skill, its interval, Holm p-value and reading."""
    from models.lab import run_comparison

    if n_seeds < 1:
        raise ValueError("run at least one seed")
    report = progress or (lambda fraction, message: None)
    rows = []
    for k in range(int(n_seeds)):
        if cancel is not None and cancel.is_set():
            raise LabCancelled("The comparison was cancelled.")
        seed = int(config.seed) + k
        report(k / n_seeds, f"seed {seed} ({k + 1}/{n_seeds})")
        cfg = replace(config, seed=seed, importance_repeats=1,
                      importance_rows=min(config.importance_rows, 200))
        result = run_comparison(make_bars(seed), cfg, cancel=cancel)
        for label, r in result.table.iterrows():
            rows.append({"seed": seed, "model": label, "kind": r["kind"],
                         **{c: r.get(c) for c in PER_SEED_COLUMNS[3:]}})
    report(1.0, "Done")
    return pd.DataFrame(rows, columns=PER_SEED_COLUMNS)


def seed_spread(per_seed: pd.DataFrame) -> pd.DataFrame:
    """Per model over the seeds: mean, standard deviation, min and max of the skill, and the
    paths where it beats persistence / is worse (significant, Holm-corrected per path)."""
    cols = ["model", "kind", "seeds", "skill_mean", "skill_std", "skill_min", "skill_max",
            "beats", "worse", "reading"]
    if per_seed.empty:
        return pd.DataFrame(columns=cols).set_index("model")
    out = []
    for model, g in per_seed.groupby("model", sort=False):
        skill = pd.to_numeric(g["skill"], errors="coerce")
        n = len(g)
        beats = int((g["reading"] == S.BEATS).sum())
        worse = int((g["reading"] == S.WORSE).sum())
        out.append({"model": model, "kind": g["kind"].iloc[0], "seeds": n,
                    "skill_mean": float(skill.mean()),
                    "skill_std": float(skill.std()) if n > 1 else np.nan,
                    "skill_min": float(skill.min()), "skill_max": float(skill.max()),
                    "beats": beats, "worse": worse,
                    "reading": spread_reading(beats, worse, n)
                    if g["reading"].notna().any() else None})
    return pd.DataFrame(out, columns=cols).set_index("model")


def spread_reading(beats: int, worse: int, n: int) -> str:
    """Plain words for a model's wins over ``n`` paths."""
    if beats == n:
        return f"{S.BEATS} on every path ({n}/{n})"
    if beats == 0 and worse == 0:
        return f"{S.NO_EVIDENCE} on any path (0/{n})"
    if beats == 0:
        return f"{S.WORSE} on {worse} of {n} paths, never better"
    one_off = " — a one-off win, not an edge" if beats == 1 and n > 2 else ""
    return f"{S.BEATS} on {beats} of {n} paths only{one_off}"
