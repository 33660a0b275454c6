"""Progressive validation: predictions wait for their bar, and are scored only when it arrives.

- :class:`PendingBook` — one series' predictions that have not met their bar yet, and the last
  base bar predicted per model (so a replayed bar is never predicted twice);
- :class:`LiveScoreboard` — settles a prediction against its bar and keeps the rolling live
  errors per symbol and per model, and each model's :class:`~models.adaptation.DriftMonitor`;
- :func:`unscored_from_store` — after a restart, the predictions made before it whose bar had
  not arrived, rebuilt from the store (those whose bar is stored already are settled at once).

Plain objects over the store contract: no Kafka, no worker.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pandas as pd

from models.retrain_policy import RetrainPolicy
from models.live.errors import DriftMonitor, LiveErrors
from models.metrics import calls_a_move, close_error
from models.targets import from_close_value
from pipeline.contracts.schema import Bar, Prediction, interval_ms
from pipeline.store.base import Store


class PlainPrediction(Prediction):
    """A :class:`~pipeline.contracts.schema.Prediction` whose ``to_dict`` is a plain field copy.

    ``Prediction.to_dict`` uses ``dataclasses.asdict``, which deep-copies; at 500 symbols
    that was the scorer's largest cost (a profile showed 40 % of its time). Once
    ``pipeline.contracts.schema`` writes ``to_dict`` out (as ``Bar.to_dict`` is), this class can go.
    """

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _FIELDS}


_FIELDS = tuple(f for f in Prediction.__dataclass_fields__ if f != "extra")


@dataclass
class Pending:
    """A prediction waiting for its bar: the ``horizon``-th bar after its base bar (the next
    bar that arrives, for horizon 1, even across a gap such as a market close: that is the
    row the model was trained to predict)."""

    prediction: Prediction
    horizon: int
    bars_after: int = 0  # bars seen so far after the base bar


@dataclass
class PendingBook:
    """One series' unscored predictions and, per model, the last base bar it predicted."""

    pending: list[Pending] = field(default_factory=list)
    last_predicted: dict[str, int | None] = field(default_factory=dict)

    def due(self, bar: Bar) -> list[Prediction]:
        """The predictions ``bar`` settles (removed from the book), oldest first."""
        keep, due = [], []
        for pend in self.pending:
            if bar.ts > pend.prediction.base_ts:
                pend.bars_after += 1
            (due if pend.bars_after >= pend.horizon else keep).append(pend)
        self.pending = keep
        return [p.prediction for p in due]

    def add(self, prediction: Prediction, horizon: int) -> None:
        self.pending.append(Pending(prediction, horizon))
        self.last_predicted[prediction.model_id] = prediction.base_ts


class LiveScoreboard:
    """Rolling live errors by symbol and by model, and the drift monitor of each model."""

    def __init__(self, policy: RetrainPolicy, error_window: int = 200):
        self.policy = policy
        self.error_window = error_window
        self.by_symbol: dict[str, LiveErrors] = {}
        self.by_model: dict[str, LiveErrors] = {}
        self.monitors: dict[str, DriftMonitor] = {}

    def settle(self, p: Prediction, bar: Bar) -> Prediction:
        """Record the actual and the error of ``p`` now that its bar has arrived."""
        p.actual = from_close_value(p.target, bar.close, p.base_close)
        p.error = p.predicted - p.actual
        abs_err, pct, hit = close_error(p.target, p.predicted, p.actual, p.base_close)
        called = calls_a_move(p.target, p.predicted, p.base_close)
        self._errors(self.by_symbol, p.symbol).add(abs_err, pct, hit, called)
        self._errors(self.by_model, p.model_id).add(abs_err, pct, hit, called)
        monitor = self.monitors.get(p.model_id)
        if monitor is not None:
            monitor.add(pct)
        return p

    def watch(self, version_id: str, reference: float | None, reset: bool = False) -> DriftMonitor:
        """The drift monitor of a model (created with its reference error level)."""
        if reset or version_id not in self.monitors:
            self.monitors[version_id] = DriftMonitor(self.policy, reference)
        return self.monitors[version_id]

    def model_summary(self, version_id: str) -> dict[str, Any]:
        return self.by_model.get(version_id, LiveErrors()).summary()

    def gauges(self) -> dict[str, Any]:
        by_model = {}
        for vid, errs in self.by_model.items():
            entry = errs.summary()
            if vid in self.monitors:
                entry["drift"] = self.monitors[vid].summary()
            by_model[vid] = entry
        return {"by_symbol": {s: e.summary() for s, e in self.by_symbol.items()},
                "by_model": by_model}

    def _errors(self, table: dict[str, LiveErrors], key: str) -> LiveErrors:
        errs = table.get(key)
        if errs is None:
            errs = table[key] = LiveErrors(self.error_window)
        return errs


def unscored_from_store(store: Store, symbol: str, interval: str, first_ts: int,
                        seen: Sequence[Bar], settle: Callable[[Prediction, Bar], Any]
                        ) -> list[Pending]:
    """Predictions stored before a restart whose bar had not arrived by then.

    ``seen``: the bars stored just before ``first_ts`` (the first bar of the resumed stream);
    a prediction whose bar is among them is handed to ``settle`` instead of being returned.
    """
    step = interval_ms(interval)
    rows = store.query_predictions(symbol=symbol, interval=interval,
                                   end_ms=first_ts + 64 * step, limit=200)
    rows = rows[rows["actual"].isna()]
    out = []
    for r in rows.itertuples(index=False):
        p = PlainPrediction(r.model_id, r.symbol, r.interval, int(r.ts), int(r.base_ts), r.target,
                       float(r.predicted), float(r.base_close),
                       produced_ms=_int_or_none(r.produced_ms),
                       stored_ms=_int_or_none(r.stored_ms),
                       latency_ms=_float_or_none(r.latency_ms))
        h = max(1, round((p.ts - p.base_ts) / step))
        after = [b for b in seen if b.ts > p.base_ts]
        if len(after) >= h:
            settle(p, after[h - 1])  # its bar is already stored
        else:
            out.append(Pending(p, h, len(after)))
    return out


def _int_or_none(x) -> int | None:
    return None if x is None or pd.isna(x) else int(x)


def _float_or_none(x) -> float | None:
    return None if x is None or pd.isna(x) or not math.isfinite(float(x)) else float(x)
