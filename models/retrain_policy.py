"""The retrain policy: every knob of when the scorer retrains, on what, and what a challenger must
do to be promoted, with the constants every retrain decision shares.

The one place to change the retrain policy: :mod:`models.adaptation` (train, evaluate, decide),
:mod:`models.live.errors` (the drift monitor), :mod:`models.live.retrain_schedule` (when) and the
scorer all read it from here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

RETRAIN_EVENT = "retrain"
DEFAULT_TARGET = "next_return"
DEFAULT_MODEL_KEY = "linear"
#: Decision metric (lower is better): percentage error of the implied close.
DECISION_METRIC = "mape_pct"


@dataclass
class RetrainPolicy:
    """When the scorer retrains, on what, and what a challenger must do to be promoted.

    Windows are counted in bars *per symbol*; the schedule and the cooldown in bars the
    scorer consumed (all symbols together).
    """

    every_bars: int | None = 5000  # scheduled retrain after this many new bars (None: off)
    drift_factor: float | None = 2.0  # drift: rolling live error > factor × reference (None: off)
    drift_window: int = 200  # live errors in the rolling drift window
    drift_min_errors: int = 100  # no drift verdict on fewer live errors than this
    cooldown_bars: int = 500  # after any retrain decision, no drift retrain for this many bars
    train_bars: int = 2000  # most recent bars per symbol the challenger learns from
    holdout_bars: int = 200  # latest bars per symbol, kept out of training, to compare on
    min_improvement: float = 0.005  # challenger error must be <= champion × (1 - this)
    min_train_rows: int = 300  # fewer usable training rows: wait for more data
    min_symbol_rows: int = 100  # symbols with fewer training rows are left out (<= train_bars)
    min_holdout_rows: int = 30  # fewer usable holdout rows: wait for more data
    #: Builds the challenger's estimator; None retrains the champion's own model spec.
    challenger_factory: Callable[[], Any] | None = None
    keep_rejected: bool = True  # save a losing challenger as a candidate version (promotable)

    def describe(self) -> dict[str, Any]:
        d = asdict(self)
        d["challenger_factory"] = (getattr(self.challenger_factory, "__name__", "custom")
                                   if self.challenger_factory else None)
        return d
