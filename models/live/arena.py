"""The live arena: saved model versions and the baselines scored in shadow beside the champion.

Enrolment is kept in the store as ``arena`` events (:func:`enrol`, :func:`remove`,
:func:`entries`: the newest event per entry decides), so the Predictions page enrols and the
scorer, in this process or another, picks it up within :attr:`Arena.refresh_s`.

The scorer hands every poll to :meth:`Arena.observe` after its champion predicted. For each
enrolled entry, and for the champion itself, the arena then does exactly what the scorer
does for the champion:

- **same bars**: the poll's fresh bars (never a replay), with the scorer's own streaming
  feature rows (the arena's models' features are added to the scorer's feature set);
- **same progressive validation**: a prediction waits in a :class:`~models.live.progressive.PendingBook`
  for the ``horizon``-th bar after its base bar and is scored only then, with the same
  :func:`~models.metrics.close_error` on the implied close; bars before a version's
  ``train_end_ms`` are not predicted (their target was in its training data);
- **same window**: every figure covers the entry's last ``window`` scored predictions (the
  scorer's ``error_window``, 200 by default); directional accuracy counts the moves among them.

Shadow predictions never reach the store, the predictions topic or the champion's figures: the
arena keeps them in memory (a restart starts the leaderboard afresh) and only costs time,
measured by ``benchmarks/bench_scorer_latency.py --shadows N``.

:meth:`Arena.leaderboard` gives, per entry, live skill vs persistence on the implied close
(``1 − Σ e² / Σ e_persistence²`` over the window), its 95 % moving-block bootstrap interval,
the Diebold–Mariano p-value, Holm-corrected over the entries compared, and the reading in the
words of :mod:`models.significance`.
"""
from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from models import significance as S
from models.features.fundamentals import is_fundamentals_feature
from models.metrics import calls_a_move, close_error
from models.live.progressive import PendingBook, PlainPrediction
from models.registry import LoadedModel, load_model_version
from models.features.sentiment import is_sentiment_feature
from models.targets import from_close_value, to_close_value
from models.zoo import features_for, get_spec
from pipeline.contracts.schema import interval_ms
from pipeline.store.base import now_ms

log = logging.getLogger(__name__)

ARENA_EVENT = "arena"
CHAMPION_ENTRY = "champion"
BASELINE_PREFIX = "baseline:"
BASELINE_TARGET = "next_return"
BASELINES = {"persistence": "Persistence", "moving_average": "Moving average (5)"}


# ---------------------------------------------------------------------------------------------
# Enrolment (in the store)

def enrol(store, entry_id: str, reason: str = "") -> dict[str, Any]:
    """Enrol a model version (its id) or a baseline (``baseline:persistence``,
    ``baseline:moving_average``); returns the entry."""
    if entry_id.startswith(BASELINE_PREFIX):
        key = entry_id[len(BASELINE_PREFIX):]
        if key not in BASELINES:
            raise ValueError(f"unknown baseline {key!r}; use one of {', '.join(BASELINES)}")
        name = BASELINES[key]
    else:
        found = store.get_model_version(entry_id)
        if found is None:
            raise KeyError(f"model version {entry_id} not found")
        meta = found[0]
        bad = [f for f in meta.get("features", [])
               if is_sentiment_feature(f) or is_fundamentals_feature(f)]
        if bad:
            raise ValueError(f"{entry_id} reads {', '.join(bad)}: the arena scores models of "
                             "bar features only")
        name = meta.get("name") or entry_id
    store.record_event(ARENA_EVENT, action="enrol", entry_id=entry_id, name=name,
                       reason=reason, seq=_next_seq(store))
    return {"entry_id": entry_id, "name": name}


def remove(store, entry_id: str) -> bool:
    """Take an entry out of the arena; False if it was not enrolled."""
    if entry_id not in {e["entry_id"] for e in entries(store)}:
        return False
    store.record_event(ARENA_EVENT, action="remove", entry_id=entry_id, seq=_next_seq(store))
    return True


def _events(store) -> list[dict[str, Any]]:
    """Arena events in the order they were recorded (``seq``: events of one millisecond
    would otherwise tie)."""
    evs = store.list_events(kind=ARENA_EVENT, limit=5000)
    return sorted(evs, key=lambda e: (e.get("seq") or 0, e.get("created_ms") or 0))


def _next_seq(store) -> int:
    evs = _events(store)
    return int(evs[-1].get("seq") or 0) + 1 if evs else 1


def entries(store) -> list[dict[str, Any]]:
    """Enrolled entries, oldest enrolment first."""
    latest: dict[str, dict[str, Any]] = {}
    for ev in _events(store):
        latest.pop(ev.get("entry_id"), None)
        latest[ev.get("entry_id")] = ev
    return [e for e in latest.values() if e.get("action") == "enrol"]


def load_entry(store, entry_id: str) -> LoadedModel:
    """The entry's model, ready to predict (a baseline is built for ``next_return``)."""
    if not entry_id.startswith(BASELINE_PREFIX):
        return load_model_version(store, entry_id)
    key = entry_id[len(BASELINE_PREFIX):]
    spec = get_spec(key)
    params = {"target": BASELINE_TARGET}
    feats = features_for(spec, BASELINE_TARGET, [], params)
    est = spec.build(params).fit(pd.DataFrame(np.ones((1, len(feats))), columns=feats))
    meta = {"version_id": entry_id, "name": BASELINES[key], "features": feats,
            "target": BASELINE_TARGET, "horizon": 1, "model_key": key}
    return LoadedModel(meta=meta, model=est)


# ---------------------------------------------------------------------------------------------
# Scoring in shadow

@dataclass
class EntryScore:
    """One entry's live record: pending predictions per series and its scored window."""

    entry_id: str
    name: str
    kind: str  # champion, shadow or baseline
    model: LoadedModel | None
    window: int
    books: dict[tuple[str, str], PendingBook] = field(default_factory=dict)
    # per scored prediction: squared close error, persistence's, abs error, hit (None: no
    # move), whether it called a move
    scored: deque = field(default_factory=deque)
    total: int = 0
    version_id: str | None = None
    skipped: int = 0  # bars before its training end

    def __post_init__(self):
        self.scored = deque(maxlen=self.window)

    def settle(self, p, bar) -> None:
        actual = from_close_value(p.target, bar.close, p.base_close)
        abs_err, _pct, hit = close_error(p.target, p.predicted, actual, p.base_close)
        pers = bar.close - p.base_close
        self.scored.append((abs_err * abs_err, pers * pers, abs_err, hit,
                            calls_a_move(p.target, p.predicted, p.base_close)))
        self.total += 1

    def pending(self) -> int:
        return sum(len(b.pending) for b in self.books.values())


class Arena:
    """Shadow scoring of the enrolled entries beside the champion (module docstring)."""

    def __init__(self, store, window: int = 200, refresh_s: float = 2.0):
        self.store, self.window, self.refresh_s = store, int(window), refresh_s
        self.entries: dict[str, EntryScore] = {}
        self.errors: dict[str, str] = {}  # entry_id -> why it is not scored
        self._last_refresh = -math.inf

    @property
    def active(self) -> bool:
        return bool(self.entries)

    def refresh(self, force: bool = False) -> bool:
        """Re-read the enrolment; True when the set of shadow models changed."""
        now = now_ms() / 1000.0
        if not force and now - self._last_refresh < self.refresh_s:
            return False
        self._last_refresh = now
        try:
            wanted = {e["entry_id"]: e for e in entries(self.store)}
        except Exception as exc:  # the store is down: keep scoring what is loaded
            log.warning("arena enrolment not read: %s", exc)
            return False
        changed = False
        for entry_id in [k for k in self.entries if k != CHAMPION_ENTRY and k not in wanted]:
            del self.entries[entry_id]
            changed = True
        for entry_id in [k for k in self.errors if k not in wanted]:
            del self.errors[entry_id]
        for entry_id, e in wanted.items():
            if entry_id in self.entries or entry_id in self.errors:
                continue
            try:
                model = load_entry(self.store, entry_id)
            except Exception as exc:
                self.errors[entry_id] = f"not scored: {exc}"
                continue
            kind = "baseline" if entry_id.startswith(BASELINE_PREFIX) else "shadow"
            self.entries[entry_id] = EntryScore(entry_id, e.get("name") or entry_id, kind,
                                                model, self.window, version_id=entry_id)
            changed = True
        if self.entries and CHAMPION_ENTRY not in self.entries:
            self.entries[CHAMPION_ENTRY] = EntryScore(CHAMPION_ENTRY, "champion", "champion",
                                                      None, self.window)
        if not any(k != CHAMPION_ENTRY for k in self.entries):
            self.entries.pop(CHAMPION_ENTRY, None)
        return changed

    def features(self) -> list[str]:
        """The bar features the shadow models read (added to the scorer's feature set)."""
        names: list[str] = []
        for e in self.entries.values():
            if e.model is not None:
                names += [f for f in e.model.features if f not in names]
        return names

    def observe(self, work: list, feature_rows: list[np.ndarray], feature_set) -> None:
        """Score one poll: ``work`` the scorer's :class:`~models.live.series.SeriesWork` items
        (fresh bars, the champion's predictions), ``feature_rows`` their feature rows in
        ``feature_set``'s columns."""
        for e in self.entries.values():
            if e.model is None:
                self._observe_champion(e, work)
            else:
                self._observe_model(e, work, feature_rows, feature_set)

    def _observe_model(self, e: EntryScore, work, feature_rows, feature_set) -> None:
        model = e.model
        cols = feature_set.columns(model.features)
        train_end = model.meta.get("train_end_ms")
        picked, rows = [], []
        for w, fr in zip(work, feature_rows):
            for i, (bar, _) in enumerate(w.fresh):
                if train_end is not None and bar.ts < train_end:
                    e.skipped += 1
                    continue
                picked.append((w, i))
                rows.append(fr[i][cols])
        values: dict[tuple[int, int], float] = {}
        if rows:
            y = model.predict(pd.DataFrame(np.vstack(rows), columns=model.features))
            values = {(id(w), i): float(v) for (w, i), v in zip(picked, y)}
        for w in work:
            self._walk(e, w, lambda i, _w=w: values.get((id(_w), i)), model)

    def _observe_champion(self, e: EntryScore, work) -> None:
        for w in work:
            if w.model is not None:
                e.version_id = w.model.version_id
            self._walk(e, w, w.predicted.get, w.model)

    def _walk(self, e: EntryScore, w, value_at, model) -> None:
        """Progressive validation over one series' fresh bars, in bar order."""
        book = e.books.get(w.key)
        if book is None:
            book = e.books[w.key] = PendingBook()
        for i, (bar, _) in enumerate(w.fresh):
            if book.pending:
                for p in book.due(bar):
                    e.settle(p, bar)
            value = value_at(i)
            if value is None or model is None or not math.isfinite(value):
                continue
            h = model.horizon
            book.add(PlainPrediction(e.entry_id, bar.symbol, bar.interval,
                                     bar.ts + h * interval_ms(bar.interval), bar.ts,
                                     model.target, value, bar.close), h)

    def leaderboard(self) -> list[dict[str, Any]]:
        """One row per entry (champion first): live skill vs persistence over its window, the
        interval, the DM p-value (Holm over the entries compared) and the reading."""
        rows = [summarise(e) for e in self._ordered()]
        adjusted = S.holm([r["p_value"] if r["p_value"] is not None else np.nan for r in rows])
        m = int(np.isfinite(adjusted).sum())
        for r, p in zip(rows, adjusted):
            r["p_holm"] = float(p) if np.isfinite(p) else None
            r["reading"] = (S.reading(p, r.pop("mean_diff"), S.LEVEL) if r["window_n"] >= 3
                            else "not enough scored predictions yet")
            r["comparisons"] = m
        rows += [{"entry_id": k, "name": k, "kind": "error", "status": msg}
                 for k, msg in self.errors.items()]
        return rows

    def _ordered(self) -> list[EntryScore]:
        return sorted(self.entries.values(), key=lambda e: e.kind != "champion")


def summarise(e: EntryScore) -> dict[str, Any]:
    """An entry's window as plain numbers (None where undefined)."""
    n = len(e.scored)
    row = {"entry_id": e.entry_id, "name": e.name, "kind": e.kind,
           "version_id": e.version_id, "target": e.model.target if e.model else None,
           "scored": e.total, "window": e.window, "window_n": n, "pending": e.pending(),
           "skill": None, "skill_lo": None, "skill_hi": None, "p_value": None,
           "mean_diff": 0.0, "mae": None, "rmse": None, "directional_accuracy": None,
           "moves": 0, "status": "scoring" if n else "waiting for its first scored bar"}
    if not n:
        return row
    sq, sq_p, abs_err, hits, calls = (np.asarray(c, dtype=object) for c in zip(*e.scored))
    sq, sq_p = sq.astype(float), sq_p.astype(float)
    moved = [h for h in hits if h is not None]
    row.update({"mae": float(abs_err.astype(float).mean()), "rmse": float(math.sqrt(sq.mean())),
                "moves": len(moved),
                "directional_accuracy": (float(np.mean(moved)) if moved and any(calls)
                                         else None)})
    if sq_p.sum() > 0:
        row["skill"] = float(1.0 - sq.sum() / sq_p.sum())
    if n >= 3:
        dm = S.diebold_mariano(sq, sq_p)
        lo, hi = S.block_bootstrap_skill(sq, sq_p, seed=0)
        row.update({"p_value": dm.p_value if math.isfinite(dm.p_value) else None,
                    "mean_diff": dm.mean_diff,
                    "skill_lo": lo if math.isfinite(lo) else None,
                    "skill_hi": hi if math.isfinite(hi) else None})
    return row


def batch_figures(bars: pd.DataFrame, model: LoadedModel, window: int = 200,
                  start_ts: int | None = None) -> dict[str, float]:
    """The arena's figures recomputed in batch: predict every bar of every series from its
    batch features (bars from ``start_ts`` on, after the version's training end), score each
    prediction on the ``horizon``-th next bar of its series, and keep the last ``window`` by
    the time they were scored. For checking the live figures (tests) and for reports."""
    from models.features import compute_features

    out = []
    h = model.horizon
    train_end = model.meta.get("train_end_ms")
    for _, series in bars.groupby("symbol", sort=False):
        series = series.sort_values("ts").reset_index(drop=True)
        pred = model.predict(compute_features(series, model.features))
        close = series["close"].to_numpy(dtype=float)
        ts = series["ts"].to_numpy()
        for t in range(len(series) - h):
            if (start_ts is not None and ts[t] < start_ts) or not math.isfinite(pred[t]) \
                    or (train_end is not None and ts[t] < train_end):
                continue
            base, actual = close[t], close[t + h]
            pc = to_close_value(model.target, pred[t], base)
            hit = None if actual == base else (pc - base > 0) == (actual - base > 0)
            out.append((int(ts[t + h]), (pc - actual) ** 2, (actual - base) ** 2,
                        abs(pc - actual), hit))
    out.sort(key=lambda r: r[0])
    last = out[-window:]
    sq = np.array([r[1] for r in last])
    sq_p = np.array([r[2] for r in last])
    moved = [r[4] for r in last if r[4] is not None]
    return {"window_n": len(last), "scored": len(out), "skill": float(1 - sq.sum() / sq_p.sum()),
            "mae": float(np.mean([r[3] for r in last])),
            "directional_accuracy": float(np.mean(moved)) if moved else float("nan")}
