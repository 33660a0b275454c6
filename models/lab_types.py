"""The model lab's records: configuration, fitted models, results, errors."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from models.features import DEFAULT_FEATURES
from models.targets import to_close
from models.zoo import MODEL_KEYS

ProgressCallback = Callable[[float, str], None]

MIN_ROWS = 60  # below this no split leaves enough rows to fit and score anything


class LabError(ValueError):
    """A comparison that cannot run; the message is one sentence with the fix."""


class NoData(LabError):
    """No bars match the chosen symbols, interval and time range."""


class LabCancelled(RuntimeError):
    """The cancel event was set; no partial result is returned."""


@dataclass
class LabConfig:
    """One model-lab run's settings: data (symbols, interval, range), features, target and
    horizon, the split, the models and their parameters. Plain settings, stored with the run."""

    symbols: list[str] = field(default_factory=list)  # empty: every symbol in the data
    interval: str = "1m"
    start_ms: int | None = None
    end_ms: int | None = None  # exclusive
    features: list[str] = field(default_factory=lambda: list(DEFAULT_FEATURES))
    target: str = "next_return"
    horizon: int = 1
    split: str = "chronological"
    test_fraction: float = 0.2
    n_folds: int = 5
    gap: int = 0
    models: list[tuple[str, dict[str, Any]]] = field(
        default_factory=lambda: [(k, {}) for k in MODEL_KEYS])
    search: bool = False
    search_budget: int = 10
    seed: int = 0
    n_jobs: int = 1
    max_rows: int = 500_000  # hard bound on bars loaded (the latest ones are kept)
    importance_rows: int = 2_000
    importance_repeats: int = 3

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["models"] = [[k, dict(p)] for k, p in self.models]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LabConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "models" in known:
            known["models"] = [(k, dict(p or {})) for k, p in known["models"]]
        return cls(**known)


@dataclass
class FittedModel:
    """One model fitted by the lab on the last training window: the estimator and what it was
    trained on, ready to be saved as a model version."""

    key: str
    label: str
    kind: str
    params: dict[str, Any]
    features: list[str]
    estimator: Any = field(repr=False)
    train_start_ms: int | None = None
    train_end_ms: int | None = None


@dataclass
class LabResult:
    """Everything one lab run produced: the metrics table, test predictions, importances,
    per-fold figures, tuned parameters, the fitted models and the guidance shown with them."""

    config: LabConfig
    table: pd.DataFrame  # one row per model (index: label), metrics of models.metrics
    predictions: pd.DataFrame  # test rows: ts, symbol, fold, actual, base_close, actual_close, <label>...
    importance: pd.DataFrame  # model, feature, importance, std (increase in test MSE)
    fold_table: pd.DataFrame  # model, fold, n_test, mse, skill
    best_params: dict[str, dict[str, Any]]
    fitted: dict[str, FittedModel]
    guidance: list[str]
    warnings: list[str]
    summary: dict[str, Any]
    run_id: str | None = None

    @property
    def labels(self) -> list[str]:
        return list(self.table.index)

    def best_label(self, include_baselines: bool = True) -> str | None:
        """The model with the lowest test MSE (= highest skill)."""
        table = self.table if include_baselines else self.table[self.table["kind"] == "model"]
        mse = table["mse"].dropna()
        return None if mse.empty else str(mse.idxmin())

    def predicted_close(self, label: str) -> np.ndarray:
        return to_close(self.config.target, self.predictions[label].to_numpy(),
                        self.predictions["base_close"].to_numpy())

    def residuals(self) -> pd.DataFrame:
        """actual - predicted on the target's scale, one column per model."""
        actual = self.predictions["actual"]
        return pd.DataFrame({lb: actual - self.predictions[lb] for lb in self.labels
                             if lb in self.predictions})
