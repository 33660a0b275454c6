"""The model lab's seeds control: the page's comparison repeated on simulated paths, with the
spread of every model's skill (models/seeds.py), so a one-off win shows as one."""
from __future__ import annotations

from dataclasses import replace

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from dashboard.formatting import display_frame
from dashboard.plain_text import md_plain, plain_figure
from dashboard.theme import BASELINE_COLOR, MODEL_COLORS
from models.lab_types import LabConfig, LabError
from models.seeds import run_seeds, seed_spread, simulated_bars

SEEDS_KEY = "ml_seeds_result"
SPREAD_LABELS = {"seeds": "paths", "skill_mean": "skill mean", "skill_std": "skill std",
                 "skill_min": "skill min", "skill_max": "skill max",
                 "beats": "paths beating persistence", "worse": "paths worse",
                 "reading": "reading"}


def seed_chart(per_seed: pd.DataFrame) -> go.Figure:
    """Skill vs persistence of every model on every path: one dot per path."""
    fig = go.Figure()
    for i, (model, g) in enumerate(per_seed.groupby("model", sort=False)):
        color = BASELINE_COLOR if g["kind"].iloc[0] == "baseline" else \
            MODEL_COLORS[i % len(MODEL_COLORS)]
        fig.add_trace(go.Box(y=pd.to_numeric(g["skill"], errors="coerce"), name=str(model),
                             boxpoints="all", jitter=0.4, pointpos=0, marker_color=color,
                             text=[f"seed {s} · {r}" for s, r in zip(g["seed"], g["reading"])],
                             hovertemplate="%{text}<br>skill %{y:.4g}<extra></extra>"))
    fig.add_hline(y=0, line_dash="dot", line_color="grey")
    fig.update_layout(title="Skill vs persistence on each simulated path", yaxis_title="skill",
                      height=380, showlegend=False, margin=dict(l=40, r=20, t=50, b=40))
    return plain_figure(fig)


def seeds_block(config: LabConfig) -> None:
    """Inputs, the run, and the spread table and chart of the last seeds run."""
    with st.expander("Seeds as a control: the same comparison on simulated paths"):
        st.caption("Runs this page's features, target, split and models on several simulated "
                   "paths (one seed each) and shows how each model's skill spreads. On a "
                   "random walk (signal 0) no model should beat persistence on more than about "
                   "5 % of the paths; a model that wins on one path only is luck.")
        c1, c2, c3, c4 = st.columns(4)
        n = int(c1.number_input("Paths (seeds)", 2, 30, 8, key="ml_seeds_n"))
        bars = int(c2.number_input("Bars per path", 300, 20_000, 2_000, step=100,
                                   key="ml_seeds_bars"))
        phi = float(c3.number_input("AR(1) signal in returns (0 = random walk)", -0.9, 0.9,
                                    0.0, step=0.05, key="ml_seeds_phi"))
        if c4.button("Run on simulated paths", key="ml_seeds_run"):
            cfg = replace(config, symbols=[], start_ms=None, end_ms=None)
            bar = st.progress(0.0, text="Starting")
            try:
                per_seed = run_seeds(lambda s: simulated_bars(s, bars, cfg.interval, phi), cfg,
                                     n, progress=lambda f, m: bar.progress(min(f, 1.0), m))
            except (LabError, ValueError) as exc:
                st.error(md_plain(exc))
            else:
                st.session_state[SEEDS_KEY] = {"per_seed": per_seed, "n": n, "bars": bars,
                                               "phi": phi, "first": cfg.seed}
            finally:
                bar.empty()
        done = st.session_state.get(SEEDS_KEY)
        if done:
            per_seed = done["per_seed"]
            st.markdown(f"**{done['n']} paths of {done['bars']:,} bars, signal {done['phi']:g}** "
                        f"(seeds {done['first']}..{done['first'] + done['n'] - 1})")
            spread = seed_spread(per_seed).rename(columns=SPREAD_LABELS)
            st.dataframe(display_frame(spread), width="stretch", key="ml_seeds_table")
            st.plotly_chart(seed_chart(per_seed), key="ml_seeds_chart")
