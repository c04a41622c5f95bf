"""Logistic-regression probes with scikit-learn: one `LogisticRegression` per layer, C chosen on dev.

The reference implementation: a well-tested solver (lbfgs), standardized features, and the L2
strength picked from `C_GRID` by dev accuracy, walking the grid from strong to weak regularization
with warm starts, then refit on all training rows.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from probing.probes.base import C_GRID, ProbeFit
from probing.probes.data import Fold, standardize

#: problems smaller than this (rows x features) run with one BLAS thread: for them, thread start-up
#: and contention cost more than they save (measured: ~20x slower lbfgs on a busy 2-core machine)
SINGLE_THREAD_BELOW = 20_000_000


@contextlib.contextmanager
def _quiet_blas(size: int) -> Iterator[None]:
    with warnings.catch_warnings():
        from sklearn.exceptions import ConvergenceWarning

        warnings.simplefilter("ignore", ConvergenceWarning)
        if size < SINGLE_THREAD_BELOW:
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=1, user_api="blas"):
                yield
        else:
            yield


class _Constant:
    """Stands in for a classifier when the training rows hold a single class."""

    def __init__(self, value: int) -> None:
        self.value = value

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), self.value, dtype=np.int64)


def _fit(model: Any, x: np.ndarray, y: np.ndarray) -> Any:
    if len(np.unique(y)) < 2:
        return _Constant(int(y[0]))
    return model.fit(x, y)


def sklearn_fit_predict(
    features: Sequence[np.ndarray],
    y: np.ndarray,
    n_classes: int,
    fold: Fold,
    *,
    regs: Sequence[float] | None = None,
    grid: Sequence[float] = C_GRID,
    max_iter: int = 500,
    tol: float = 1e-4,
) -> ProbeFit:
    """Fit one probe per layer on ``fold`` and predict its test rows.

    Args:
        features: ``[n_rows, dim]`` per layer.
        y: integer class codes of all rows.
        n_classes: number of classes (unused by sklearn, kept for the common signature).
        fold: rows to fit/dev/train/test on.
        regs: C per layer; when given the dev search is skipped (control tasks reuse the task's C).
        grid: C values searched on dev.
    """
    from sklearn.linear_model import LogisticRegression

    del n_classes
    grid = sorted(grid)
    preds = np.empty((len(features), len(fold.test)), dtype=np.int64)
    chosen: list[float] = []
    seconds: list[float] = []
    for i, x in enumerate(features):
        start = time.perf_counter()
        with _quiet_blas(len(fold.train) * x.shape[1]):
            if regs is None:
                z = standardize(x, fold.fit)
                model = LogisticRegression(max_iter=max_iter, tol=tol, warm_start=True)
                best_c, best_acc = grid[0], -1.0
                for c in grid:
                    fitted = _fit(model.set_params(C=c), z[fold.fit], y[fold.fit])
                    acc = float(np.mean(fitted.predict(z[fold.dev]) == y[fold.dev]))
                    if acc > best_acc:  # ties keep the stronger regularization
                        best_c, best_acc = c, acc
            else:
                best_c = float(regs[i])
            z = standardize(x, fold.train)
            final = _fit(LogisticRegression(C=best_c, max_iter=max_iter, tol=tol), z[fold.train], y[fold.train])
            preds[i] = final.predict(z[fold.test])
        chosen.append(best_c)
        seconds.append(time.perf_counter() - start)
    return ProbeFit(predictions=preds, regs=chosen, seconds=seconds)
