"""Logistic-regression probes with scikit-learn: one `LogisticRegression` per layer, C chosen on dev.

The reference implementation: a well-tested solver (lbfgs), standardized features, and the L2
strength picked from `C_GRID` by dev accuracy, walking the grid from strong to weak regularization
with warm starts, then refit on all training rows. Layers are fit in parallel threads, one per CPU
core, each with one BLAS thread (the solver's matrix products release the GIL).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from probing.probes.base import C_GRID, GridWalk, ProbeFit, cpu_cores
from probing.probes.data import Fold, standardize

#: problems smaller than this (rows x features) run with one BLAS thread: for them, thread start-up
#: and contention cost more than they save (measured: ~20x slower lbfgs on a busy 2-core machine)
SINGLE_THREAD_BELOW = 20_000_000
#: lbfgs stopping tolerance on the gradient of the mean loss. sklearn's default (1e-4) spends more
#: than half of its iterations past the point where test accuracy stops moving: on UD EWT word-level
#: UPOS probes (25k rows x 384), 1e-3 takes 25 iterations instead of 58-89 and changes test accuracy
#: by -0.03 (C=0.01, the chosen value) to +0.3 (C=1) points.
TOL = 1e-3


@contextlib.contextmanager
def _quiet_blas(single_thread: bool) -> Iterator[None]:
    """No convergence warnings (the grid walks through under-converged fits by design); one BLAS thread if asked."""
    with warnings.catch_warnings():
        from sklearn.exceptions import ConvergenceWarning

        warnings.simplefilter("ignore", ConvergenceWarning)
        if single_thread:
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


def _coefficients(fitted: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Classes, coefficients and intercepts of a fitted model (None for a `_Constant`)."""
    if not hasattr(fitted, "coef_"):
        return None
    return fitted.classes_.copy(), fitted.coef_.copy(), fitted.intercept_.copy()


def _start_from(model: Any, start: tuple[np.ndarray, np.ndarray, np.ndarray] | None, y: np.ndarray) -> None:
    """Make ``model`` (``warm_start=True``) start its fit on labels ``y`` from ``start`` (`_coefficients`).

    Only when ``y`` has the same classes: the dev search fits a subset of the training rows, which
    may miss a rare class, and sklearn refuses a start of another shape.
    """
    if start is not None and np.array_equal(start[0], np.unique(y)):
        model.coef_, model.intercept_ = start[1], start[2]


def sklearn_fit_predict(
    features: Sequence[np.ndarray],
    y: np.ndarray,
    n_classes: int,
    fold: Fold,
    *,
    regs: Sequence[float] | None = None,
    grid: Sequence[float] = C_GRID,
    control: np.ndarray | None = None,
    max_iter: int = 500,
    tol: float = TOL,
) -> ProbeFit:
    """Fit one probe per layer on ``fold`` and predict its test rows.

    Args:
        features: ``[n_rows, dim]`` per layer.
        y: integer class codes of all rows.
        n_classes: number of classes (unused by sklearn, kept for the common signature).
        fold: rows to fit/dev/train/test on.
        regs: C per layer; when given the dev search is skipped (control tasks reuse the task's C).
        grid: C values searched on dev, from strong to weak regularization; the walk stops after
            `PATIENCE` values in a row score below the best so far (`GridWalk`).
        control: control-task labels of all rows; each layer's control probe is fit on the same
            standardized training rows with the task's C.
        max_iter, tol: of `LogisticRegression` (lbfgs).
    """
    from sklearn.linear_model import LogisticRegression

    del n_classes
    grid = sorted(grid)
    preds = np.empty((len(features), len(fold.test)), dtype=np.int64)
    ctrl_preds = None if control is None else np.empty_like(preds)
    chosen = [0.0] * len(features)
    seconds = [0.0] * len(features)
    weights: list[np.ndarray] = [np.zeros((1, int(x.shape[1])), dtype=np.float32) for x in features]

    def fit_layer(i: int) -> None:
        start = time.perf_counter()
        x = features[i]
        final = LogisticRegression(max_iter=max_iter, tol=tol, warm_start=True)
        chosen_fit: Any = None
        if regs is None:
            z_fit, z_dev = standardize(x, fold.fit, (fold.fit, fold.dev))
            model = LogisticRegression(max_iter=max_iter, tol=tol, warm_start=True)
            walk = GridWalk(1)
            for j, c in enumerate(grid):
                fitted = _fit(model.set_params(C=c), z_fit, y[fold.fit])
                if walk.step(j, np.asarray([np.mean(fitted.predict(z_dev) == y[fold.dev])]))[0]:
                    chosen_fit = _coefficients(fitted)
                if walk.done:
                    break
            best_c = grid[int(walk.pick[0])]
        else:
            best_c = float(regs[i])
        z_train, z_test = standardize(x, fold.train, (fold.train, fold.test))
        _start_from(final, chosen_fit, y[fold.train])  # the final fit starts from the chosen dev fit
        fitted_final = _fit(final.set_params(C=best_c), z_train, y[fold.train])
        preds[i] = fitted_final.predict(z_test)
        if hasattr(fitted_final, "coef_"):
            weights[i] = np.asarray(fitted_final.coef_, dtype=np.float32)
        if control is not None and ctrl_preds is not None:
            model = LogisticRegression(C=best_c, max_iter=max_iter, tol=tol)
            ctrl_preds[i] = _fit(model, z_train, control[fold.train]).predict(z_test)
        chosen[i] = best_c
        seconds[i] = time.perf_counter() - start

    workers = min(len(features), cpu_cores())
    size = len(fold.train) * max((int(x.shape[1]) for x in features), default=0)
    with _quiet_blas(single_thread=workers > 1 or size < SINGLE_THREAD_BELOW):
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probing-probe") as pool:
                list(pool.map(fit_layer, range(len(features))))  # list(): re-raise a worker's error here
        else:
            for i in range(len(features)):
                fit_layer(i)
    return ProbeFit(predictions=preds, regs=chosen, seconds=seconds, control=ctrl_preds, weights=weights)
