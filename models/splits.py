"""Train/test splits by time, correct when several symbols share the timeline.

Splits cut on *timestamps*, not row positions: with several symbols, every row of one
timestamp lands on the same side, and no test timestamp precedes a training timestamp.

- :func:`chronological_holdout`: train on the first ``1 - test_fraction`` of the time range,
  test on the rest (the honest default).
- :func:`walk_forward_splits`: ``n_folds`` expanding-window folds; fold k trains on all blocks
  before block k+1 and tests on it, like scikit-learn's ``TimeSeriesSplit`` over timestamps.
- :func:`random_split`: the seed project's shuffle. It leaks the future (see
  :data:`RANDOM_SPLIT_WARNING`) and is kept to show the difference.

``gap`` drops that many timestamps from the end of each training set, so that a training label
that looks ``h`` bars ahead cannot overlap the test period (use ``gap >= horizon - 1``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RANDOM_SPLIT_WARNING = (
    "Random split leaks the future: test bars are shuffled in among training bars, so the "
    "model trains on the bars right before and right after each test bar (and on the very "
    "prices it is asked to predict, one bar apart). Scores look far better than any real "
    "forecast could; use a chronological or walk-forward split to judge a model."
)

SPLIT_METHODS: dict[str, str] = {
    "chronological": "Chronological holdout (train on the past, test on the latest part)",
    "walk_forward": "Walk-forward (expanding window, several folds)",
    "random": "Random shuffle (seed's method: leaks the future)",
}


@dataclass(frozen=True)
class Split:
    """Row positions of one fold's training and test sets."""

    fold: int
    train: np.ndarray
    test: np.ndarray


def make_splits(ts, method: str = "chronological", test_fraction: float = 0.2,
                n_folds: int = 5, gap: int = 0, seed: int = 0) -> list[Split]:
    """Dispatch on ``method`` (one of :data:`SPLIT_METHODS`)."""
    if method == "chronological":
        return [chronological_holdout(ts, test_fraction, gap)]
    if method == "walk_forward":
        return walk_forward_splits(ts, n_folds, gap)
    if method == "random":
        return [random_split(ts, test_fraction, seed)]
    raise ValueError(f"unknown split {method!r}; use one of {', '.join(SPLIT_METHODS)}")


def split_warnings(method: str) -> list[str]:
    return [RANDOM_SPLIT_WARNING] if method == "random" else []


def chronological_holdout(ts, test_fraction: float = 0.2, gap: int = 0) -> Split:
    """Last ``test_fraction`` of the distinct timestamps for testing, the rest for training."""
    _check_fraction(test_fraction)
    ts = np.asarray(ts)
    uniq = np.unique(ts)
    n_test = int(round(len(uniq) * test_fraction))
    n_train = len(uniq) - n_test - max(int(gap), 0)
    if n_test < 1 or n_train < 1:
        raise ValueError(f"{len(uniq)} timestamps are too few for a {test_fraction:.0%} test "
                         f"set with a gap of {gap}")
    train_end, test_start = uniq[n_train - 1], uniq[len(uniq) - n_test]
    return Split(0, np.flatnonzero(ts <= train_end), np.flatnonzero(ts >= test_start))


def walk_forward_splits(ts, n_folds: int = 5, gap: int = 0) -> list[Split]:
    """Expanding-window folds over distinct timestamps (``n_folds + 1`` equal blocks)."""
    ts = np.asarray(ts)
    uniq = np.unique(ts)
    n_folds = int(n_folds)
    if n_folds < 1:
        raise ValueError("walk-forward needs at least 1 fold")
    block = len(uniq) // (n_folds + 1)
    if block < 1 or block - max(int(gap), 0) < 1:
        raise ValueError(f"{len(uniq)} timestamps are too few for {n_folds} walk-forward folds "
                         f"with a gap of {gap}")
    splits = []
    for k in range(n_folds):
        test_lo = len(uniq) - (n_folds - k) * block
        test_hi = test_lo + block  # exclusive; the last fold ends at the last timestamp
        train_hi = test_lo - max(int(gap), 0)  # exclusive
        test_mask = (ts >= uniq[test_lo]) & (ts <= uniq[test_hi - 1])
        splits.append(Split(k, np.flatnonzero(ts <= uniq[train_hi - 1]),
                            np.flatnonzero(test_mask)))
    return splits


def random_split(ts, test_fraction: float = 0.2, seed: int = 0) -> Split:
    """Shuffled rows (the seed's method). Leaks the future: see :data:`RANDOM_SPLIT_WARNING`."""
    _check_fraction(test_fraction)
    n = len(np.asarray(ts))
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n - n_test < 1:
        raise ValueError(f"{n} rows are too few for a {test_fraction:.0%} test set")
    perm = np.random.default_rng(seed).permutation(n)
    return Split(0, np.sort(perm[n_test:]), np.sort(perm[:n_test]))


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test fraction must be between 0 and 1, got {test_fraction}")
