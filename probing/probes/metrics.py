"""Scores of a probe's test predictions: accuracy, macro-F1, majority baseline, bootstrap CI; for regression
targets R^2, the mean-predictor baseline and its bootstrap CI.

Plain numpy so that they are cheap enough to compute for every layer and label.
"""

from __future__ import annotations

import numpy as np

from probing.config import ProbeConfig
from probing.errors import ConfigError

N_BOOTSTRAP = ProbeConfig.n_bootstrap
CI_LEVEL = 0.95


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of rows predicted right."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean(y_true == y_pred)) if len(y_true) else float("nan")


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted mean of the per-class F1 over classes that occur in ``y_true`` or ``y_pred``.

    Macro-F1 shows a probe that only gets the frequent classes right, which accuracy hides.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return float("nan")
    scores = []
    for c in np.union1d(y_true, y_pred):
        tp = np.sum((y_true == c) & (y_pred == c))
        fp = np.sum((y_true != c) & (y_pred == c))
        fn = np.sum((y_true == c) & (y_pred != c))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores))


def majority_baseline(y_train: np.ndarray, y_test: np.ndarray) -> float:
    """Test accuracy of always predicting the most frequent training class (ties: the smallest code)."""
    y_train = np.asarray(y_train, dtype=np.int64)
    if len(y_train) == 0:
        return float("nan")
    return accuracy(np.asarray(y_test), np.full(len(y_test), int(np.argmax(np.bincount(y_train)))))


def bootstrap_ci(
    correct: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    n_resamples: int = N_BOOTSTRAP,
    level: float = CI_LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of ``correct`` (the test accuracy), seeded.

    Without ``groups`` the test rows are resampled with replacement. The number of correct rows in
    such a resample is exactly Binomial(n, accuracy), so it is drawn that way: the same
    distribution as indexing, at a cost independent of n. With ``groups`` (e.g. the sentence of
    each word) whole groups are resampled, because rows of one group are not independent and a
    row-level bootstrap would make the interval too narrow.
    """
    if not 0 < level < 1:
        raise ConfigError(f"CI level must be in (0, 1), got {level}.")
    if n_resamples < 1:
        raise ConfigError(f"n_resamples must be >= 1, got {n_resamples}.")
    correct = np.asarray(correct, dtype=np.float64).reshape(-1)
    n = len(correct)
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    if groups is None:
        stats = rng.binomial(n, correct.mean(), size=n_resamples) / n
    else:
        _, codes = np.unique(np.asarray(groups), return_inverse=True)
        codes = codes.reshape(-1)
        hits = np.bincount(codes, weights=correct)
        sizes = np.bincount(codes).astype(np.float64)
        n_groups = len(sizes)
        chunks = []
        per_chunk = max(1, min(n_resamples, 2**24 // max(1, n_groups)))
        for start in range(0, n_resamples, per_chunk):
            m = min(per_chunk, n_resamples - start)
            draws = rng.integers(0, n_groups, size=(m, n_groups))
            chunks.append(hits[draws].sum(axis=1) / sizes[draws].sum(axis=1))
        stats = np.concatenate(chunks)
    alpha = (1 - level) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return float(low), float(high)


def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` (scikit-learn's ``r2_score``): 1 is a perfect
    prediction, 0 is as good as predicting the test mean, below 0 worse."""
    y_true, y_pred = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    if len(y_true) < 2:
        return float("nan")
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2))
    ss_res = float(np.sum((y_true - y_pred) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")


def mean_baseline(y_train: np.ndarray, y_test: np.ndarray) -> float:
    """R^2 on the test rows of always predicting the mean of the training rows (at most 0)."""
    y_train = np.asarray(y_train, dtype=np.float64)
    if len(y_train) == 0:
        return float("nan")
    return r2_score(y_test, np.full(len(y_test), y_train.mean()))


def bootstrap_r2_ci(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    n_resamples: int = N_BOOTSTRAP,
    level: float = CI_LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the test R^2, resampling rows (or whole ``groups``) with replacement.

    Each resample's R^2 is computed from per-group sums (count, sum y, sum y^2, sum of squared
    residuals), so a resample costs one index draw per group, not a copy of the rows.
    """
    if not 0 < level < 1:
        raise ConfigError(f"CI level must be in (0, 1), got {level}.")
    if n_resamples < 1:
        raise ConfigError(f"n_resamples must be >= 1, got {n_resamples}.")
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    res = (y - np.asarray(y_pred, dtype=np.float64).reshape(-1)) ** 2
    if len(y) < 2:
        return float("nan"), float("nan")
    codes = np.arange(len(y)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    sums = np.stack([np.bincount(codes), np.bincount(codes, y), np.bincount(codes, y * y), np.bincount(codes, res)])
    n_groups = sums.shape[1]
    rng = np.random.default_rng(seed)
    stats = []
    per_chunk = max(1, min(n_resamples, 2**22 // max(1, n_groups)))
    for start in range(0, n_resamples, per_chunk):
        m = min(per_chunk, n_resamples - start)
        draws = rng.integers(0, n_groups, size=(m, n_groups))
        n, s1, s2, sr = (sums[k][draws].sum(axis=1) for k in range(4))
        ss_tot = s2 - s1 * s1 / n
        with np.errstate(divide="ignore", invalid="ignore"):
            stats.append(np.where(ss_tot > 0, 1.0 - sr / ss_tot, np.nan))
    values = np.concatenate(stats)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)
