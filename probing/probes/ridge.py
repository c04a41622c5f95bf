"""Ridge regression probes for real-valued labels, all regularization strengths from one eigendecomposition.

A float label (a sentence's length, a word's frequency, a rating) is predicted from a layer's
standardized features by ``min |y - Xw - b|^2 + alpha |w|^2`` with an unpenalized intercept: the
objective of scikit-learn's ``Ridge``. The Gram matrix ``X^T X`` (``d x d``, summed in float64 a chunk
of rows at a time) is eigendecomposed once per fit, after which every ``alpha`` of the grid costs a
``d x d`` product: ``w = V diag(1 / (lambda + alpha)) V^T X^T y``. alpha is chosen by dev R^2, the
probe refit on all training rows, and scored on the test rows by R^2 (`probing.probes.metrics`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from probing.probes.base import ProbeFit
from probing.probes.data import Fold, standardize
from probing.probes.metrics import r2_score

#: alphas tried on the dev part (on standardized features, so one grid serves every layer's width)
ALPHA_GRID: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0)
#: rows per chunk of the float64 Gram matrix sum
CHUNK_ROWS = 8192


class _Solver:
    """Ridge solutions on one set of standardized rows, for any alpha (eigendecomposition of ``X^T X``)."""

    def __init__(self, z: np.ndarray, y: np.ndarray) -> None:
        d = z.shape[1]
        gram = np.zeros((d, d))
        xty = np.zeros(d)
        self.y_mean = float(np.mean(y))
        yc = np.asarray(y, dtype=np.float64) - self.y_mean
        for start in range(0, len(z), CHUNK_ROWS):  # z is centered on these rows: no intercept column needed
            part = z[start : start + CHUNK_ROWS].astype(np.float64)
            gram += part.T @ part
            xty += part.T @ yc[start : start + CHUNK_ROWS]
        self.eigval, self.eigvec = np.linalg.eigh(gram)
        self.proj = self.eigvec.T @ xty

    def weights(self, alpha: float) -> np.ndarray:
        return self.eigvec @ (self.proj / (np.maximum(self.eigval, 0.0) + alpha))

    def predict(self, z: np.ndarray, alpha: float) -> np.ndarray:
        return z.astype(np.float64) @ self.weights(alpha) + self.y_mean


def ridge_fit_predict(
    features: Sequence[np.ndarray],
    y: np.ndarray,
    fold: Fold,
    *,
    alphas: Sequence[float] | None = None,
    grid: Sequence[float] = ALPHA_GRID,
    control: np.ndarray | None = None,
) -> ProbeFit:
    """Fit one ridge probe per layer on ``fold`` and predict its test rows (real values).

    Args:
        features: ``[n_rows, dim]`` per layer.
        y: the target of every row (float; only the fold's rows are read).
        fold: rows to fit/dev (choose alpha), train (final fit) and test on.
        alphas: alpha per layer; when given the dev search is skipped.
        grid: alphas searched on dev (the best dev R^2 wins; ties keep the stronger regularization).
        control: control-task targets of all rows, fit with the task's alpha on the same rows.

    ``ProbeFit.regs`` holds the chosen alpha per layer; ``weights`` the final probe's weights on the
    standardized features (``[1, dim]`` per layer), for ranking neurons.
    """
    y = np.asarray(y, dtype=np.float64)
    preds = np.empty((len(features), len(fold.test)))
    ctrl_preds = None if control is None else np.empty_like(preds)
    chosen: list[float] = []
    seconds: list[float] = []
    weights: list[np.ndarray] = []
    order = sorted(grid, reverse=True)  # strong to weak: a tie keeps the stronger regularization
    for i, x in enumerate(features):
        start = time.perf_counter()
        if alphas is None:
            z_fit, z_dev = standardize(x, fold.fit, (fold.fit, fold.dev))
            solver = _Solver(z_fit, y[fold.fit])
            scores = [r2_score(y[fold.dev], solver.predict(z_dev, a)) for a in order]
            best = order[int(np.nanargmax(scores))] if np.isfinite(scores).any() else order[0]
        else:
            best = float(alphas[i])
        z_train, z_test = standardize(x, fold.train, (fold.train, fold.test))
        solver = _Solver(z_train, y[fold.train])
        preds[i] = solver.predict(z_test, best)
        weights.append(solver.weights(best)[None, :])
        if control is not None and ctrl_preds is not None:
            ctrl_preds[i] = _Solver(z_train, np.asarray(control, dtype=np.float64)[fold.train]).predict(z_test, best)
        chosen.append(float(best))
        seconds.append(time.perf_counter() - start)
    return ProbeFit(predictions=preds, regs=chosen, seconds=seconds, control=ctrl_preds, weights=weights)
