"""What the pages show, computed without Streamlit: worker rows and states, model-lab run
captions, per-fold tables, warnings without repeats. Pure functions, tested directly."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import pandas as pd

from dashboard.formatting import MISSING, fmt_duration, fmt_num, fmt_ts
from models.significance import BEATS

WARNING_STATES = ("failed", "stalled")

#: Column tooltips used wherever these figures appear.
HELP = {
    "skill": "Skill vs persistence: 1 - MSE(model) / MSE(persistence). Above 0 beats the "
             "'no change' forecast on the same test bars; below 0 is worse than doing nothing.",
    "lag": "Consumer lag: messages in the topic not yet read by this worker.",
    "dlq": "Rejected messages go to the dead-letter topic finance-data.dlq with the reason.",
    "news": "Items of the finance-news stream (symbol, publication time, title, sentiment "
            "score, relevance) stored by the news indexer; bad ones go to finance-news.dlq.",
    "champion": "The champion is the model version the live scorer predicts with (per scope: "
                "global, or one symbol).",
}


def latency_note(latency: dict) -> str:
    """What the scorer's latency percentiles cover (the scorer leaves out bars produced before
    their model was ready: the warm-up history and bars held while the first model trained)."""
    n = latency.get("n")
    over = f"the latest {n:,} live predictions" if n else "the latest live predictions"
    return (f"Bar produced to Kafka → prediction stored, over {over}. Bars produced before "
            "their model was ready (the warm-up history, bars that waited while the first "
            "model trained) and catch-up predictions (a backlog after a restart) are stored "
            "with their latency but not counted here.")


def catch_up_note(n: int) -> str:
    """What the scorer's catch-up count means (pipeline/workers/scorer.py, ``CAUGHT_UP_MS``)."""
    return (f"Catch-up: {n:,} predictions of bars that waited in Kafka while the scorer was "
            "stopped or starting (a backlog worked through at once); counted apart, not in "
            "the latency figures and not in the retrain schedule's bar count.")


def data_rules_note(counters: dict | None) -> str | None:
    """The indexer's data-rule figures in one line (docs/STREAM_ROBUSTNESS.md, "Data
    rules"); None while there is nothing to say."""
    c = counters or {}
    parts = [f"{n:,} {what}" for key, what in (
        ("corrected", "corrected bar(s) (the last write wins)"),
        ("late", "late bar(s) filled in"),
        ("replayed", "bar(s) read again unchanged"),
        ("unkeyed", "bar(s) without a Kafka key (kept)"))
        if (n := int(c.get(key) or 0))]
    if not parts:
        return None
    return ("Data rules: " + ", ".join(parts) + ". Misaligned, mis-keyed and far-future bars "
            "are in the rejects below, with the reason.")


def source_problem(source_stats: dict | None, worker_state: str | None = None) -> str | None:
    """A running producer's failed source polls, from the source's own figures (how many,
    the last reason): a source that fails now and then still delivers, and the producer stays
    "running". None while the producer itself is ``stalled``: its header already gives the
    source's reason (its watchdog's), and the page says it once."""
    if worker_state == "stalled":
        return None
    failed = int((source_stats or {}).get("live_errors") or 0)
    if not failed:
        return None
    return (f"{failed:,} failed poll(s) of the source; last: "
            f"{source_stats.get('last_error') or 'no reason recorded'}")


def worker_status(snap: dict | None, running: bool) -> tuple[str, str]:
    """(state, reason) for a worker, the same for its header and its table row.

    ``failed`` and ``stalled`` carry the full ``last_error``; a stopped or finished worker
    shows its state; one that never ran is ``stopped``.
    """
    if not snap:
        return ("running" if running else "stopped"), ""
    state = str(snap.get("state") or ("running" if running else "stopped"))
    if state in WARNING_STATES:
        return state, str(snap.get("last_error") or "")
    if state == "running" and not running:
        return "stopped", ""
    return state, ""


def _count(snap: dict, *names: str) -> str | None:
    """A counter of this run, with the total over the worker's runs when it was restarted:
    ``64 (total 1,230)``."""
    c, totals = snap.get("counters", {}), snap.get("totals") or {}
    name = next((n for n in names if n in c), None)
    if name is None:
        return None
    run, total = int(c[name]), int(totals.get(name, c[name]))
    return f"{run:,}" if total == run else f"{run:,} (total {total:,})"


def uptime_or_stopped(snap: dict, state: str) -> str:
    """A running worker's uptime; a stopped one's stop time (``stopped 10:42:07 UTC``)."""
    if state in ("running", "stalled") or not snap.get("stopped_s"):
        return fmt_duration(snap.get("uptime_s"))
    at = pd.Timestamp(float(snap["stopped_s"]), unit="s", tz="UTC")
    return f"{state} {at:%H:%M:%S} UTC"


def worker_row(name: str, snap: dict, where: str, running: bool = True) -> dict[str, Any]:
    g = snap.get("gauges", {})
    state, _ = worker_status(snap, running)
    row = {
        "worker": name,
        "where": where,
        "state": state,
        "produced": _count(snap, "produced"),
        "consumed": _count(snap, "consumed"),
        "stored": _count(snap, "stored", "predictions"),
        "rejected (DLQ)": _count(snap, "rejected"),
        # A stopped worker's last snapshot keeps its last rate; it moves nothing now.
        "rate/s": (fmt_num(g.get("rate_per_s", 0), 1) if state in ("running", "stalled")
                   else MISSING),
        "lag": g.get("lag"),
        "uptime": uptime_or_stopped(snap, state),
        "last bar": fmt_ts(g.get("last_bar_ts")) if g.get("last_bar_ts") else MISSING,
        "last error": snap.get("last_error") or "",
    }
    # One type per column (Arrow), and a dash rather than "None" for figures a worker lacks.
    return {k: MISSING if v is None else f"{v:,}" if isinstance(v, int) and not isinstance(
        v, bool) else v for k, v in row.items()}


def throughput_ceiling(history: dict[str, list[dict]], recent_share: float = 0.5) -> float | None:
    """A y-axis top that keeps the live rate readable: the warm-up burst (a thousand bars a
    second for a few seconds) would otherwise flatten a steady 5 bars a second. The top is set
    from the recent half of the window; None when nothing needs cutting."""
    tops = []
    for points in history.values():
        rates = np.array([p["rate"] for p in points], dtype=float)
        rates = rates[np.isfinite(rates)]
        if len(rates) < 10:
            continue
        recent = rates[int(len(rates) * (1 - recent_share)):]
        tops.append((float(recent.max()), float(rates.max())))
    if not tops:
        return None
    recent_top = max(t for t, _ in tops)
    overall = max(m for _, m in tops)
    ceiling = max(recent_top * 2.5, 1.0)
    return ceiling if recent_top > 0 and overall > ceiling * 1.5 else None


# ---- model lab ----------------------------------------------------------------------------------
def unique(messages: Iterable[str], already_shown: Iterable[str] = ()) -> list[str]:
    """Each message once, and none already shown elsewhere on the page."""
    seen = set(already_shown)
    out = []
    for m in messages:
        if m not in seen:
            seen.add(m)
            out.append(m)
    return out


def run_caption(summary: dict[str, Any], split_label: str, target: str, run_id: str | None,
                shuffled: bool = False) -> str:
    """Row counts that add up: for walk-forward the test rows of all folds and how the training
    window grows, for a holdout train and test; warm-up rows dropped are said (``shuffled``:
    the rows were split at random, not cut on time)."""
    s = summary
    rows = s.get("n_rows", s.get("n_bars"))
    head = (f"Run {run_id or '(not saved)'}: {', '.join(s.get('symbols', []))} "
            f"{s.get('interval')}, target {target}, {split_label}; ")
    n_folds = int(s.get("n_folds") or 1)
    if n_folds > 1:
        body = (f"{rows:,} rows with a known target; {n_folds} folds test {s['n_test']:,} rows "
                f"in all, each fold's model trained on every row before its test block "
                f"({s.get('n_train_first', s['n_train']):,} rows for fold 1 up to "
                f"{s['n_train']:,} for fold {n_folds})")
    else:
        body = (f"{rows:,} rows with a known target: train {s['n_train']:,} rows, "
                f"test {s['n_test']:,} rows")
    warm = s.get("warmup_dropped") or {}
    if warm.get("train") or warm.get("test"):
        first = "split at random first" if shuffled else "cut on time first"
        body += (f"; {first}, then {warm.get('train', 0):,} training and "
                 f"{warm.get('test', 0):,} test rows dropped while features warm up")
    return head + body + f"; {s.get('elapsed_s', 0):.1f} s."


def fold_view(fold_table: pd.DataFrame) -> pd.DataFrame:
    """Skill per model (rows) and fold (columns), plus mean and spread across folds, the folds
    with a positive skill, and (runs with significance) the folds where the model beats
    persistence significantly (the wording rule of :mod:`models.significance`)."""
    if fold_table is None or len(fold_table) == 0:
        return pd.DataFrame()
    df = pd.DataFrame(fold_table)
    wide = df.pivot_table(index="model", columns="fold", values="skill", aggfunc="first",
                          sort=False)
    wide.columns = [f"fold {int(c) + 1}" for c in wide.columns]
    wide["mean"] = wide.mean(axis=1)
    wide["std"] = wide.drop(columns="mean").std(axis=1)
    per_fold = wide.drop(columns=["mean", "std"])
    wide["folds with skill > 0"] = [f"{int((r > 0).sum())}/{int(r.notna().sum())}"
                                    for _, r in per_fold.iterrows()]
    if "reading" in df.columns:  # significant wins only (models/significance.py)
        wins = (df.assign(win=df["reading"] == BEATS)
                .groupby("model", sort=False)["win"].sum())
        wide["folds beating persistence"] = [
            f"{int(wins.get(m, 0))}/{int(r.notna().sum())}" for m, r in per_fold.iterrows()]
    order = list(dict.fromkeys(df["model"]))
    return wide.reindex(order)


def fold_readings(fold_table: pd.DataFrame) -> pd.DataFrame:
    """The wording rule per model (rows) and fold (columns), with the Holm p-value: "beats
    persistence (p 0.003)"; empty for runs recorded before significance was computed."""
    if fold_table is None or len(fold_table) == 0 or "reading" not in fold_table:
        return pd.DataFrame()
    df = pd.DataFrame(fold_table)
    df = df[df["reading"].notna()]
    if df.empty:
        return pd.DataFrame()
    text = [f"{r} (p {fmt_num(p, 2) if p >= 0.01 else '< 0.01'})"
            for r, p in zip(df["reading"], pd.to_numeric(df["p_holm"], errors="coerce"))]
    wide = df.assign(text=text).pivot_table(index="model", columns="fold", values="text",
                                            aggfunc="first", sort=False)
    wide.columns = [f"fold {int(c) + 1}" for c in wide.columns]
    return wide.reindex(list(dict.fromkeys(df["model"])))


def fold_rows(fold_table: pd.DataFrame) -> pd.DataFrame:
    """Test rows per fold (the same for every model), for the caption under the fold table."""
    if fold_table is None or len(fold_table) == 0:
        return pd.DataFrame()
    df = pd.DataFrame(fold_table)
    return df.groupby("fold", sort=True)["n_test"].first()


# ---- live pages ---------------------------------------------------------------------------------
def latest_predictions(store, symbol: str, interval: str, start_ms: int) -> pd.DataFrame | None:
    """The champion's next-close predictions for the shown range (empty without a scorer)."""
    preds = store.query_predictions(symbol=symbol, interval=interval, start_ms=start_ms,
                                    limit=2000)
    if preds.empty:
        return None
    latest_model = preds["model_id"].iloc[-1]
    preds = preds[preds["model_id"] == latest_model].copy()
    if "predicted_close" not in preds:
        preds["predicted_close"] = preds["predicted"]
        if (preds["target"] != "next_close").any():
            try:
                from models.targets import to_close

                preds["predicted_close"] = [
                    float(to_close(t, p, b)) for t, p, b in
                    zip(preds["target"], preds["predicted"], preds["base_close"])]
            except ValueError:  # a target this version of the code does not know
                return None
    return preds


def per_candle_predictions(preds: pd.DataFrame | None, bucket_ms: int) -> pd.DataFrame | None:
    """The last prediction per candle of ``bucket_ms``: the predicted close of the candle's
    last bar, which is the candle's close. ``ts`` becomes the candle's start (the x of its
    candle), ``target_ts`` keeps the predicted bar's time, ``n`` how many were in it."""
    if preds is None or preds.empty:
        return preds
    candle = (preds["ts"] // bucket_ms) * bucket_ms
    out = preds.assign(target_ts=preds["ts"], ts=candle)
    counts = out.groupby("ts").size()
    out = out.sort_values("target_ts").groupby("ts", as_index=False).tail(1)
    return out.assign(n=out["ts"].map(counts).to_numpy()).sort_values("ts")


def scorer_snapshot(runtime) -> dict | None:
    """The live scorer's stats: a thread of this app, or a process seen by its heartbeat."""
    snap = runtime.local_stats().get("scorer")
    if snap and snap.get("state") == "running":
        return snap
    return next((b for b in runtime.attached_stats() if b.get("kind") == "scorer"), snap)


@dataclass(frozen=True)
class Kpi:
    """One figure of a KPI row: label, value as shown, and its help text."""

    label: str
    value: str
    help: str | None = None


def live_kpis(recent: pd.DataFrame) -> list[Kpi]:
    """The live error figures over the rolling window (rows of ``score_frame`` that are
    scored), with the persistence figure to beat beside them."""
    n = len(recent)
    if not n:
        return [Kpi("MAE", MISSING), Kpi("RMSE", MISSING), Kpi("MAPE", MISSING),
                Kpi("Direction right", MISSING), Kpi("Persistence MAE", MISSING)]
    # A model that never calls a move (persistence) has no directional accuracy (as in the lab).
    called = bool(recent["called"].any()) if "called" in recent else True
    hits = recent["hit"].dropna() if called else recent["hit"].iloc[:0]
    persistence = float((recent["actual_close"] - recent["base_close"]).abs().mean())
    return [
        Kpi(f"MAE (last {n})", fmt_num(float(recent["abs_error"].mean()), 4),
            "mean absolute error of the implied close, in price units"),
        Kpi("RMSE", fmt_num(float(np.sqrt((recent["abs_error"] ** 2).mean())), 4)),
        Kpi("MAPE", f"{recent['pct_error'].mean():.3f}%",
            "mean absolute error as a percentage of the actual close"),
        Kpi("Direction right", f"{hits.mean():.1%}" if len(hits) else MISSING,
            "share of predictions on the right side of the last close (— for a model that "
            "never predicts a move, such as persistence)"),
        Kpi("Persistence MAE", fmt_num(persistence, 4),
            "the 'no change' forecast on the same bars: the bar to beat"),
    ]


def news_markers(store, symbol: str, candles: pd.DataFrame, bucket_ms: int,
                 limit: int = 500) -> pd.DataFrame | None:
    """One marker per candle with news, just above its high: columns ts (the candle's start),
    y, count, sentiment_score (mean), hover (up to three titles, one per line: the chart's
    plain_figure escapes them and makes the line breaks); None when the store has no news
    there (or predates news support)."""
    if candles.empty or not hasattr(store, "query_news"):
        return None
    start = int(candles["ts"].iloc[0])
    end = int(candles["ts"].iloc[-1]) + bucket_ms
    news = store.query_news(symbol, start, end, limit=limit)
    if news.empty:
        return None
    news = news.assign(candle=(news["ts"] // bucket_ms) * bucket_ms)
    highs = candles.set_index("ts")["high"]
    span = float(candles["high"].max() - candles["low"].min()) or 1.0
    rows = []
    for candle, items in news.groupby("candle", sort=True):
        if candle not in highs.index:
            continue
        titles = [str(t) for t in items["title"].head(3)]
        more = len(items) - len(titles)
        rows.append({"ts": int(candle), "y": float(highs[candle]) + 0.03 * span,
                     "count": len(items), "sentiment_score": float(items["sentiment_score"].mean()),
                     "hover": "\n".join(titles) + (f"\n… and {more} more" if more > 0 else "")})
    return pd.DataFrame(rows) if rows else None
