"""The Predictions page's live arena: the leaderboard of models scored in shadow beside the
champion (:mod:`models.live.arena`), enrolment, removal and promotion from it."""
from __future__ import annotations

from typing import Callable

import streamlit as st

from dashboard.access import can_change, read_only_note
from dashboard.formatting import display_frame
from dashboard.prediction_charts import arena_table
from dashboard.widgets import push_notice, show_notices
from models.live import arena
from models.registry import GLOBAL_SCOPE, champion_refusal, promote


def promote_with_notice(store, version_id: str, scope: str, reason: str, where: str) -> None:
    """Promote ``version_id`` in ``scope`` and say so (or why not) in a notice kept on
    ``where``'s page, then rerun: the one promotion flow of the Predictions page and arena."""
    try:
        promote(store, version_id, scope, reason=reason)
        push_notice("success", f"{version_id} is now the champion of {scope}; the scorer "
                    "switches within a few seconds.", where)
    except (KeyError, ValueError) as exc:
        push_notice("error", f"Could not promote {version_id}: {exc}.", where)
    st.rerun()
from models.significance import LEVEL

WINDOW_NOTE = (
    "Every figure covers each model's last {window:,} scored predictions (Window; Direction: "
    "the share right among the moves in it), since the scorer started; Scored: all its scored "
    "predictions; Waiting: predictions waiting for their bar. Live skill vs persistence = 1 − "
    "Σ e² / Σ e²(persistence) on the implied close; interval: 95 % moving-block bootstrap; p: "
    "Diebold–Mariano, Holm-corrected over {m} comparison{s} with persistence, at {level:.0%}. "
    "Shadow models predict the same bars as the champion and never change its predictions."
)


def arena_section(store, snapshot: Callable[[], dict | None], auto: bool = True) -> None:
    st.subheader("Arena: models scored in shadow")
    enrolled = arena.entries(store)

    @st.fragment(run_every=2.0 if auto else None)
    def board() -> None:
        snap = snapshot() or {}
        rows = (snap.get("gauges") or {}).get("arena") or []
        if not enrolled:
            st.caption("No model enrolled. Enrol saved versions or the baselines below: the "
                       "scorer then predicts every bar with them too, in shadow, and ranks them "
                       "beside the champion.")
            return
        if not snap:
            st.info("No scorer is running: enrolled models are scored once it runs.")
            return
        if not rows:
            st.caption("The scorer picks up the enrolment within a few seconds; the "
                       "leaderboard fills in once bars arrive.")
            return
        st.dataframe(display_frame(arena_table(rows)), hide_index=True, width="stretch",
                     key="pr_arena_table")
        first = next((r for r in rows if r.get("kind") != "error"), {})
        m = int(first.get("comparisons") or 0)
        st.caption(WINDOW_NOTE.format(window=int(first.get("window") or 0), m=m,
                                      s="s" if m != 1 else "", level=LEVEL))

    board()
    if can_change():
        _controls(store, enrolled)
    else:
        read_only_note("enrolling, removing and promoting models")
    show_notices("arena")


def _controls(store, enrolled: list[dict]) -> None:
    versions = {v["version_id"]: v for v in store.list_model_versions()}
    ids = {e["entry_id"] for e in enrolled}
    choices = {**{f"{arena.BASELINE_PREFIX}{k}": f"baseline · {name}"
                  for k, name in arena.BASELINES.items()},
               **{vid: f"{vid} · {v.get('name')} · {v.get('status')}"
                  for vid, v in versions.items()}}
    c1, c2, c3 = st.columns(3)
    with c1.form("pr_arena_enrol", border=False):
        free = [k for k in choices if k not in ids]
        pick = st.selectbox("Enrol", free, format_func=choices.get, key="pr_arena_pick",
                            disabled=not free)
        if st.form_submit_button("Enrol in the arena", disabled=not free, key="pr_arena_add"):
            try:
                arena.enrol(store, pick, reason="Predictions page")
                push_notice("success", f"Enrolled {choices[pick]}; the scorer starts scoring "
                            "it within a few seconds.", "arena")
            except (KeyError, ValueError) as exc:
                push_notice("error", f"Could not enrol {pick}: {exc}.", "arena")
            st.rerun()
    with c2.form("pr_arena_remove", border=False):
        gone = st.selectbox("Remove", [e["entry_id"] for e in enrolled],
                            format_func=lambda k: choices.get(k, k), key="pr_arena_gone",
                            disabled=not enrolled)
        if st.form_submit_button("Remove from the arena", disabled=not enrolled,
                                 key="pr_arena_del"):
            arena.remove(store, gone)
            push_notice("success", f"Removed {choices.get(gone, gone)} from the arena.", "arena")
            st.rerun()
    with c3.form("pr_arena_promote", border=False):
        promotable = [e["entry_id"] for e in enrolled if e["entry_id"] in versions
                      and not champion_refusal(versions[e["entry_id"]].get("target"))]
        up = st.selectbox("Promote", promotable, format_func=lambda k: choices.get(k, k),
                          key="pr_arena_up", disabled=not promotable)
        if st.form_submit_button("Promote to champion (global)", disabled=not promotable,
                                 key="pr_arena_promote_btn"):
            promote_with_notice(store, up, GLOBAL_SCOPE, "promoted from the arena", "arena")
