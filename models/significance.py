"""Is a model really better than persistence? One test, one interval, one wording rule.

Every comparison of a model with the persistence baseline (the model lab's table, per
walk-forward fold and pooled, the CLI and its JSON, the exports, the live arena) uses the
functions here:

- :func:`diebold_mariano`: the Diebold–Mariano test on the loss differential
  ``d_t = e_model,t² − e_persistence,t²`` (squared error on the target's scale). Its variance
  is a Newey–West HAC estimate (Bartlett weights) with
  ``L = max(h − 1, ⌊4 (n/100)^(2/9)⌋)`` lags (:func:`hac_lags`: the classic DM choice ``h − 1``
  raised to Newey–West's rule of thumb, so volatility clustering in the losses does not make
  the test over-confident). The statistic gets the Harvey–Leybourne–Newbold small-sample
  correction ``√((n + 1 − 2h + h(h − 1)/n) / n)`` and its two-sided p-value comes from
  Student's t with ``n − 1`` degrees of freedom.
- :func:`block_bootstrap_skill`: a paired moving-block bootstrap interval for skill
  ``1 − MSE_model / MSE_persistence``: blocks of ``⌈n^(1/3)⌉`` consecutive rows (the usual
  n^(1/3) rate for a block bootstrap of a mean) drawn with replacement, the same blocks for
  both losses (paired), ``B = 999`` resamples, percentile interval, seeded.
- :func:`holm`: Holm's step-down correction when several models are compared with the same
  baseline; the number of comparisons is reported with it.
- :func:`reading`: the one wording rule. "beats persistence" only when the (corrected) p-value
  is below the level (default 5 %) and the model's loss is lower; "worse than persistence"
  when significant the other way; otherwise "no evidence it beats persistence".

With several symbols, rows sharing a timestamp are first averaged (``groups``), so the series
tested is one loss differential per bar time, in time order.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

LEVEL = 0.05  #: default significance level (two-sided test)
BOOTSTRAP_RESAMPLES = 999
INTERVAL = 0.95

BEATS = "beats persistence"
NO_EVIDENCE = "no evidence it beats persistence"
WORSE = "worse than persistence"

#: Columns added to a results table by :func:`significance_columns`.
SIGNIFICANCE_COLUMNS = ["dm_stat", "p_value", "p_holm", "skill_lo", "skill_hi", "reading"]
SIGNIFICANCE_LABELS = {
    "dm_stat": "DM stat", "p_value": "p (DM)", "p_holm": "p (Holm)",
    "skill_lo": "Skill 95% lo", "skill_hi": "Skill 95% hi", "reading": "Reading",
}


@dataclass(frozen=True)
class DMResult:
    """A Diebold–Mariano test of ``model`` against persistence on ``n`` loss differentials."""

    stat: float  # HLN-corrected; negative: the model's loss is lower
    p_value: float  # two-sided, Student t with n - 1 df
    mean_diff: float  # mean of e_model² - e_persistence²
    n: int
    lags: int

    def to_dict(self) -> dict:
        return asdict(self)


def hac_lags(n: int, horizon: int = 1) -> int:
    """Newey–West lags: ``max(h − 1, ⌊4 (n/100)^(2/9)⌋)``, at most ``n − 1``."""
    rule = int(math.floor(4.0 * (max(n, 1) / 100.0) ** (2.0 / 9.0)))
    return max(0, min(max(horizon - 1, rule), n - 1))


def block_length(n: int) -> int:
    """Moving-block length ``⌈n^(1/3)⌉`` (at least 1)."""
    return max(1, int(math.ceil(max(n, 1) ** (1.0 / 3.0))))


def _by_group(values: list[np.ndarray], groups) -> list[np.ndarray]:
    """Per-group means in group order (rows arrive sorted by time)."""
    if groups is None:
        return values
    g = np.asarray(groups)
    uniq, inverse = np.unique(g, return_inverse=True)
    if len(uniq) == len(g):
        order = np.argsort(g, kind="stable")
        return [v[order] for v in values]
    counts = np.bincount(inverse)
    return [np.bincount(inverse, weights=v) / counts for v in values]


def _losses(actual, pred_model, pred_base, groups=None) -> tuple[np.ndarray, np.ndarray]:
    actual = np.asarray(actual, dtype="float64")
    lm = (actual - np.asarray(pred_model, dtype="float64")) ** 2
    lb = (actual - np.asarray(pred_base, dtype="float64")) ** 2
    ok = np.isfinite(lm) & np.isfinite(lb)
    g = None if groups is None else np.asarray(groups)[ok]
    lm, lb = _by_group([lm[ok], lb[ok]], g)
    return lm, lb


def diebold_mariano(loss_model, loss_base, horizon: int = 1) -> DMResult:
    """DM test on ``loss_model − loss_base`` (time order), HAC variance and HLN correction."""
    from scipy import stats

    d = np.asarray(loss_model, dtype="float64") - np.asarray(loss_base, dtype="float64")
    n = int(d.size)
    nan = float("nan")
    if n < 3:
        return DMResult(nan, nan, float(d.mean()) if n else nan, n, 0)
    mean = float(d.mean())
    dc = d - mean
    lags = hac_lags(n, horizon)
    var = float(dc @ dc) / n
    for k in range(1, lags + 1):
        var += 2.0 * (1.0 - k / (lags + 1.0)) * float(dc[k:] @ dc[:-k]) / n
    if not var > 0:
        if mean == 0:
            return DMResult(nan, 1.0, mean, n, lags)
        return DMResult(math.copysign(math.inf, mean), 0.0, mean, n, lags)
    dm = mean / math.sqrt(var / n)
    h = max(1, int(horizon))
    hln = math.sqrt(max((n + 1 - 2 * h + h * (h - 1) / n) / n, 0.0))
    stat = dm * hln
    p = float(2.0 * stats.t.sf(abs(stat), df=n - 1))
    return DMResult(float(stat), p, mean, n, lags)


def block_bootstrap_skill(loss_model, loss_base, seed: int = 0,
                          resamples: int = BOOTSTRAP_RESAMPLES, interval: float = INTERVAL,
                          block: int | None = None) -> tuple[float, float]:
    """Percentile interval of ``1 − Σ loss_model / Σ loss_base`` under a paired moving-block
    bootstrap (``⌈n / L⌉`` blocks of ``L`` rows, the same blocks for both losses)."""
    lm = np.asarray(loss_model, dtype="float64")
    lb = np.asarray(loss_base, dtype="float64")
    n = int(lm.size)
    if n < 3:
        return float("nan"), float("nan")
    L = min(block or block_length(n), n)
    cm = np.concatenate([[0.0], np.cumsum(lm)])
    cb = np.concatenate([[0.0], np.cumsum(lb)])
    sums_m = cm[L:] - cm[:-L]  # sum over the block starting at each row
    sums_b = cb[L:] - cb[:-L]
    k = int(math.ceil(n / L))
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n - L + 1, size=(int(resamples), k))
    sm, sb = sums_m[starts].sum(axis=1), sums_b[starts].sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        skills = 1.0 - sm / sb
    skills = skills[np.isfinite(skills)]
    if not skills.size:
        return float("nan"), float("nan")
    tail = (1.0 - interval) / 2.0
    lo, hi = np.quantile(skills, [tail, 1.0 - tail])
    return float(lo), float(hi)


def holm(p_values) -> np.ndarray:
    """Holm-adjusted p-values (NaN stays NaN and is not counted as a comparison)."""
    p = np.asarray(p_values, dtype="float64")
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if not m:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out[order] = adjusted
    return out


def reading(p_value: float, mean_diff: float, level: float = LEVEL) -> str:
    """The one wording rule (see the module docstring)."""
    if not (isinstance(p_value, (int, float)) and math.isfinite(p_value)) or p_value >= level:
        return NO_EVIDENCE
    return BEATS if mean_diff < 0 else WORSE if mean_diff > 0 else NO_EVIDENCE


def compare(actual, pred_model, pred_base, groups=None, horizon: int = 1,
            seed: int = 0) -> dict:
    """DM test and skill interval of one model against persistence on the same rows."""
    lm, lb = _losses(actual, pred_model, pred_base, groups)
    dm = diebold_mariano(lm, lb, horizon)
    lo, hi = block_bootstrap_skill(lm, lb, seed=seed)
    skill = 1.0 - lm.sum() / lb.sum() if lb.sum() > 0 else float("nan")
    return {"dm_stat": dm.stat, "p_value": dm.p_value, "mean_diff": dm.mean_diff,
            "n_times": dm.n, "hac_lags": dm.lags, "skill": float(skill),
            "skill_lo": lo, "skill_hi": hi, "block": block_length(dm.n)}


def significance_columns(actual, preds: dict[str, np.ndarray], baseline: str, groups=None,
                         horizon: int = 1, seed: int = 0, level: float = LEVEL) -> dict:
    """For every label of ``preds`` other than ``baseline``: the columns of
    :data:`SIGNIFICANCE_COLUMNS`, Holm-corrected over those comparisons. Returns
    ``{"rows": {label: {...}}, "comparisons": m, "level": level}``."""
    rows = {}
    for label, pred in preds.items():
        if label == baseline:
            continue
        rows[label] = compare(actual, pred, preds[baseline], groups, horizon, seed)
    labels = list(rows)
    adjusted = holm([rows[lb]["p_value"] for lb in labels])
    m = int(np.isfinite([rows[lb]["p_value"] for lb in labels]).sum())
    for lb, p in zip(labels, adjusted):
        rows[lb]["p_holm"] = float(p)
        rows[lb]["reading"] = reading(p, rows[lb]["mean_diff"], level)
    return {"rows": rows, "comparisons": m, "level": level}


def method_note(comparisons: int, level: float = LEVEL) -> str:
    """One sentence saying how the p-values and intervals were obtained."""
    return (f"Significance: Diebold–Mariano test on the squared-error difference with "
            f"persistence (Newey–West variance, Harvey–Leybourne–Newbold correction, Student t), "
            f"two-sided at {level:.0%}, Holm-corrected over {comparisons} comparison"
            f"{'s' if comparisons != 1 else ''} with persistence; skill interval: 95% paired "
            f"moving-block bootstrap (blocks of ⌈n^(1/3)⌉ bar times, "
            f"{BOOTSTRAP_RESAMPLES} resamples; per comparison, not Holm-adjusted). "
            f"\"{BEATS}\" only when significant; otherwise \"{NO_EVIDENCE}\".")
