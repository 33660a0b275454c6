"""Gradient boosting that stops early on the *latest* part of its training window.

Noisy returns reward few, shallow, slowly learned trees: past a few dozen rounds a booster
mostly fits noise. Both boosters of the zoo therefore pick their number of rounds on a
time-ordered tail of the training rows (the last ``tail_fraction``, 20 % by default: rows
arrive in time order, so this is the most recent data, never a random, leaky subset), stop
after ``patience`` rounds without improvement there, and then refit on the whole training
window with the best number of rounds found (``best_rounds_``). With too few rows for a tail
(under 50 to train or 20 to validate) they fit all their rounds on all rows.

scikit-learn's own ``early_stopping`` would validate on a random split, and XGBoost's needs an
evaluation set passed to ``fit``; the classes below make the time-ordered choice part of
``fit``, so the lab, the searches and the scorer's retraining all get it.
"""
from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingRegressor
from xgboost import XGBRegressor

MIN_TRAIN, MIN_TAIL = 50, 20


def _tail(n: int, fraction: float) -> int:
    """Rows in the validation tail, 0 when there are too few rows for one."""
    k = int(n * float(fraction))
    return k if k >= MIN_TAIL and n - k >= MIN_TRAIN else 0


def _rows(X, a: int, b: int | None = None):
    return X.iloc[a:b] if hasattr(X, "iloc") else X[a:b]


class TailStoppedGradientBoosting(HistGradientBoostingRegressor):
    """scikit-learn's histogram gradient boosting with its rounds chosen on the training
    window's time-ordered tail (module docstring), then refitted on the whole window."""

    def __init__(self, tail_fraction=0.2, patience=20, learning_rate=0.1, max_iter=100,
                 max_leaf_nodes=31, max_depth=None, min_samples_leaf=20,
                 l2_regularization=0.0, random_state=None):
        super().__init__(learning_rate=learning_rate, max_iter=max_iter,
                         max_leaf_nodes=max_leaf_nodes, max_depth=max_depth,
                         min_samples_leaf=min_samples_leaf,
                         l2_regularization=l2_regularization, early_stopping=False,
                         random_state=random_state)
        self.tail_fraction = tail_fraction
        self.patience = patience

    def fit(self, X, y, sample_weight=None):
        y = np.asarray(y)
        k = _tail(len(y), self.tail_fraction)
        total = self.max_iter
        if k:
            cut = len(y) - k
            # Not constructor parameters of this class: set as attributes, like the parent does.
            self.early_stopping, self.n_iter_no_change = True, int(self.patience)
            self.scoring = "loss"
            try:
                super().fit(_rows(X, 0, cut), y[:cut], X_val=_rows(X, cut), y_val=y[cut:])
            finally:
                self.early_stopping = False
            best = int(np.argmax(self.validation_score_))  # [0]: before the first round
            self.max_iter = max(1, best)
        try:
            super().fit(X, y, sample_weight)
        finally:
            self.max_iter = total  # a parameter: fit must not change it
        self.best_rounds_ = int(self.n_iter_)
        return self


class TailStoppedXGBRegressor(XGBRegressor):
    """XGBoost with its rounds chosen on the training window's time-ordered tail (module
    docstring), then refitted on the whole window."""

    def __init__(self, *, tail_fraction=0.2, patience=30, **kwargs):
        super().__init__(**kwargs)
        self.tail_fraction = tail_fraction
        self.patience = patience

    def get_xgb_params(self):
        params = super().get_xgb_params()
        for name in ("tail_fraction", "patience"):  # ours, not the booster's
            params.pop(name, None)
        return params

    def fit(self, X, y, **kwargs):
        y = np.asarray(y)
        k = _tail(len(y), self.tail_fraction) if "eval_set" not in kwargs else 0
        total = self.n_estimators
        if k:
            cut = len(y) - k
            self.set_params(early_stopping_rounds=int(self.patience))
            try:
                super().fit(_rows(X, 0, cut), y[:cut], eval_set=[(_rows(X, cut), y[cut:])],
                            verbose=False)
            finally:
                self.set_params(early_stopping_rounds=None)
            self.set_params(n_estimators=max(1, int(self.best_iteration) + 1))
        try:
            super().fit(X, y, **kwargs)
        finally:
            self.set_params(n_estimators=total)
        self.best_rounds_ = int(self.get_booster().num_boosted_rounds())
        return self
