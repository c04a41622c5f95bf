"""Linear probes in torch: the probes of all layers trained as one batched problem.

Layers of equal width are stacked into ``X [L, n, d]``; each evaluation computes the loss and
gradient of every layer's probe in two batched products, and `probing.probes.lbfgs.minimize` runs
full-batch L-BFGS with a history, step length and stopping test per layer, so no layer waits for
the slowest (layers drop out of the batch as they converge). C is chosen as in the sklearn path: the
grid is walked from strong to weak regularization, each step warm-started from the last, until every
layer's walk has stopped (`GridWalk`: `PATIENCE` values in a row below its best dev accuracy); then
the chosen probes are refit on all training rows, warm-started. The objective is sklearn's,
``mean(CE) + |W|^2 / (2 C n)`` with an unpenalized bias, and binary tasks use one logit, so the
numbers match the sklearn path. Runs on a GPU when there is one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from probing.probes.base import C_GRID, GridWalk, ProbeFit, cpu_cores
from probing.probes.data import Fold, standardize

#: bound on the stacked features of one batch of layers (bigger runs are done in several batches)
MAX_BATCH_BYTES = 2**30
#: CPU problems smaller than this (layers x rows x features) run on one thread: L-BFGS on small
#: problems is a long chain of tiny ops, and idle threads spinning between them cost more than they
#: save (measured: 0.5 s on one thread vs 13 s on two, 7 layers x 600 rows, on a busy 2-core machine)
SINGLE_THREAD_BELOW = 50_000_000
#: rows per chunk of a CPU evaluation: both products of a chunk of ``[L, rows, d]`` features then read
#: them from cache (measured on 7 x 25k x 384 features, 17 classes: 91 ms per evaluation at 512 rows,
#: 115 ms unchunked); GPUs take all rows at once
CHUNK_ROWS = 512
#: L-BFGS stops when every gradient entry of the (mean) loss is below this: the sklearn path's tolerance
#: (`probing.probes.sklearn_probe.TOL`), so both stop at about the same point
TOLERANCE_GRAD = 1e-3


@contextlib.contextmanager
def _threads(device: Any, size: int) -> Iterator[None]:
    """One intra-op thread for small CPU problems (restored afterwards)."""
    import torch

    before = torch.get_num_threads()
    if device.type != "cpu" or size >= SINGLE_THREAD_BELOW or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _batches(features: Sequence[np.ndarray], rows: int, max_bytes: int) -> list[list[int]]:
    """Layer indices grouped by width, each group cut so that its stacked features fit ``max_bytes``."""
    by_dim: dict[int, list[int]] = {}
    for i, x in enumerate(features):
        by_dim.setdefault(int(x.shape[1]), []).append(i)
    out: list[list[int]] = []
    for dim, idx in by_dim.items():
        per = max(1, max_bytes // max(1, rows * dim * 4))
        out.extend(idx[j : j + per] for j in range(0, len(idx), per))
    return out


def _stack(
    features: Sequence[np.ndarray], layers: list[int], ref: np.ndarray, parts: Sequence[np.ndarray], device: Any
) -> list[Any]:
    """Per part, a ``[len(layers), rows, d]`` tensor standardized with the mean and std of ``ref`` rows.

    Layers are done in parallel threads (numpy lets go of the GIL).
    """
    import torch

    dim = int(features[layers[0]].shape[1])
    blocks = [np.empty((len(layers), len(rows), dim), dtype=np.float32) for rows in parts]

    def fill(j: int) -> None:
        standardize(features[layers[j]], ref, parts, out=[block[j] for block in blocks])

    with ThreadPoolExecutor(max_workers=min(len(layers), cpu_cores()), thread_name_prefix="probing-stack") as pool:
        list(pool.map(fill, range(len(layers))))  # list(): re-raise a worker's error here
    return [torch.from_numpy(block).to(device) for block in blocks]


class _Loss:
    """Objective of `probing.probes.lbfgs.minimize`: the probes of several layers on one set of rows.

    Problem ``i`` is layer ``i`` of ``x [L, n, d]``: ``mean(CE) + lambdas[i]/2 |W|^2`` of weights
    ``W [K, d]`` and an unpenalized bias ``[K]``, flattened into one row of ``theta``. The gradient
    is written out (softmax minus one-hot, times the features) rather than taken by autograd. Rows
    are taken in chunks of ``chunk_rows``: both products of a chunk then read it from cache, and
    the layers still running are gathered chunk by chunk, never as a copy of all their features.
    """

    def __init__(self, x: Any, y: Any, n_out: int, lambdas: Any, chunk_rows: int) -> None:
        import torch

        self.x, self.n_out, self.lambdas, self.chunk_rows = x, n_out, lambdas, chunk_rows
        if n_out == 1:
            self.target = y.to(x.dtype)[:, None]  # [n, 1]
        else:
            self.target = torch.nn.functional.one_hot(y, n_out).to(x.dtype)  # [n, K]

    def __call__(self, theta: Any, problems: Any) -> tuple[Any, Any]:
        import torch

        n_layers, n, d = self.x.shape
        w, b = _unflatten(theta, self.n_out, d)
        w_t = w.transpose(1, 2).contiguous()  # [B, d, K]
        everyone = len(problems) == n_layers
        grad_w = torch.zeros_like(w)
        grad_b = torch.zeros_like(b)
        ce_sum = torch.zeros(len(problems), dtype=self.x.dtype, device=self.x.device)
        for start in range(0, n, self.chunk_rows):
            rows = slice(start, start + self.chunk_rows)
            x = self.x[:, rows] if everyone else self.x[problems, rows]
            target = self.target[rows]
            z = torch.baddbmm(b[:, None, :], x, w_t)  # [B, rows, K]
            if self.n_out == 1:
                ce_sum += (torch.nn.functional.softplus(z) - target * z).sum(dim=(1, 2))
                resid = torch.sigmoid(z).sub_(target)
            else:
                logp = torch.log_softmax(z, dim=2)
                ce_sum -= (logp * target).sum(dim=(1, 2))
                resid = logp.exp_().sub_(target)
            grad_w.baddbmm_(resid.transpose(1, 2), x)
            grad_b += resid.sum(dim=1)
        lam = self.lambdas[problems][:, None, None]
        value = ce_sum / n + 0.5 * (lam * w * w).sum(dim=(1, 2))
        grad_w = grad_w / n + lam * w
        return value, torch.cat([grad_w.flatten(1), grad_b / n], dim=1)


def _unflatten(theta: Any, n_out: int, d: int) -> tuple[Any, Any]:
    """Weights ``[B, K, d]`` and bias ``[B, K]`` of flat parameters ``[B, K * d + K]``."""
    return theta[:, : n_out * d].view(-1, n_out, d), theta[:, n_out * d :]


def _train(
    x: Any, y: Any, n_out: int, lambdas: Any, max_iter: int, init: tuple[Any, Any] | None = None
) -> tuple[Any, Any]:
    """Minimize, for each layer, ``mean CE + lambda/2 |W|^2`` with batched L-BFGS (`lbfgs.minimize`).

    ``x`` is ``[L, n, d]``, ``lambdas`` ``[L]``; returns weights ``[L, K, d]`` and bias ``[L, K]``.
    ``init`` (weights, bias) warm-starts the solver, e.g. the final fit from the chosen dev fit.
    """
    import torch

    from probing.probes.lbfgs import minimize

    n_layers, _, d = x.shape
    if init is None:
        theta = torch.zeros(n_layers, n_out * d + n_out, device=x.device, dtype=x.dtype)
    else:
        theta = torch.cat([init[0].flatten(1), init[1]], dim=1)
    chunk_rows = CHUNK_ROWS if x.device.type == "cpu" else x.shape[1]
    result = minimize(_Loss(x, y, n_out, lambdas, chunk_rows), theta, max_iter=max_iter, tol_grad=TOLERANCE_GRAD)
    w, b = _unflatten(result.theta, n_out, d)
    return w.contiguous(), b.contiguous()


def log_likelihood(x: Any, y: Any, w: Any, b: Any) -> Any:
    """Natural-log probability of labels ``y [n]`` under the probes ``w, b`` of features ``[L, n, d]``: ``[L, n]``."""
    import torch

    z = torch.baddbmm(b[:, None, :], x, w.transpose(1, 2))
    if z.shape[2] == 1:  # one logit: log sigmoid(z) for class 1, log sigmoid(-z) for class 0
        sign = y.to(z.dtype) * 2 - 1
        return torch.nn.functional.logsigmoid(z[..., 0] * sign)
    return torch.log_softmax(z, dim=2).gather(2, y[None, :, None].expand(z.shape[0], -1, 1))[..., 0]


def _predict(x: Any, w: Any, b: Any) -> Any:
    """Predicted codes ``[L, n]`` of features ``[L, n, d]``."""
    import torch

    z = torch.baddbmm(b[:, None, :], x, w.transpose(1, 2))
    return (z[..., 0] > 0).long() if z.shape[2] == 1 else z.argmax(dim=2)


def torch_fit_predict(
    features: Sequence[np.ndarray],
    y: np.ndarray,
    n_classes: int,
    fold: Fold,
    *,
    regs: Sequence[float] | None = None,
    grid: Sequence[float] = C_GRID,
    control: np.ndarray | None = None,
    max_iter: int = 100,
    device: str | None = None,
    max_batch_bytes: int = MAX_BATCH_BYTES,
) -> ProbeFit:
    """Fit the probes of all layers on ``fold`` in batched problems and predict its test rows.

    Args are those of `probing.probes.sklearn_probe.sklearn_fit_predict`, plus ``max_iter`` (L-BFGS
    iterations), ``device`` (default: CUDA if available, else CPU) and ``max_batch_bytes``.
    """
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    grid = sorted(grid)
    n_out = 1 if n_classes == 2 else n_classes
    preds = np.empty((len(features), len(fold.test)), dtype=np.int64)
    ctrl_preds = None if control is None else np.empty_like(preds)
    chosen = [0.0] * len(features)
    seconds = [0.0] * len(features)
    weights: list[np.ndarray] = [np.zeros((n_out, int(x.shape[1])), dtype=np.float32) for x in features]
    rows = max(len(fold.fit) + len(fold.dev), len(fold.train) + len(fold.test))
    size = rows * sum(int(x.shape[1]) for x in features)
    with _threads(dev, size):
        for layers in _batches(features, rows, max_batch_bytes):
            start = time.perf_counter()
            if regs is None:
                best, init = _search(features, y, n_out, fold, layers, grid, max_iter, dev)
            else:
                best, init = [float(regs[i]) for i in layers], None
            x_train, x_test = _stack(features, layers, fold.train, (fold.train, fold.test), dev)
            lam = torch.tensor([1.0 / (c * len(fold.train)) for c in best], device=dev)
            preds[layers], w = _fit_predict(x_train, x_test, y[fold.train], n_out, lam, max_iter, init)
            for j, i in enumerate(layers):
                weights[i] = w[j]
            if control is not None and ctrl_preds is not None:  # the control task: same features, same C
                ctrl_preds[layers] = _fit_predict(x_train, x_test, control[fold.train], n_out, lam, max_iter, None)[0]
            elapsed = (time.perf_counter() - start) / len(layers)
            for j, i in enumerate(layers):
                chosen[i], seconds[i] = best[j], elapsed
    return ProbeFit(predictions=preds, regs=chosen, seconds=seconds, control=ctrl_preds, weights=weights)


def _fit_predict(
    x_train: Any, x_test: Any, y_train: np.ndarray, n_out: int, lam: Any, max_iter: int, init: tuple[Any, Any] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted codes ``[L, n_test]`` of probes fit on stacked training features (`_train`), and their
    weights ``[L, n_out, d]``."""
    import torch

    w, b = _train(x_train, torch.from_numpy(y_train).to(x_train.device), n_out, lam, max_iter, init)
    return _predict(x_test, w, b).cpu().numpy(), w.cpu().numpy()


def _search(
    features: Sequence[np.ndarray],
    y: np.ndarray,
    n_out: int,
    fold: Fold,
    layers: list[int],
    grid: list[float],
    max_iter: int,
    dev: Any,
) -> tuple[list[float], tuple[Any, Any]]:
    """Choose C per layer on ``fold.fit``/``fold.dev``: the chosen values and their weights (a warm start)."""
    import torch

    x_fit, x_dev = _stack(features, layers, fold.fit, (fold.fit, fold.dev), dev)
    y_fit = torch.from_numpy(y[fold.fit]).to(dev)
    n_layers = len(layers)
    walk = GridWalk(n_layers)
    w: Any = None
    b: Any = None
    best_w: Any = None
    best_b: Any = None
    for j, c in enumerate(grid):
        lam = torch.full((n_layers,), 1.0 / (c * len(fold.fit)), device=dev)
        w, b = _train(x_fit, y_fit, n_out, lam, max_iter, None if w is None else (w, b))
        better = walk.step(j, (_predict(x_dev, w, b).cpu().numpy() == y[fold.dev]).mean(axis=1))
        if best_w is None:
            best_w, best_b = w.clone(), b.clone()
        else:
            mask = torch.from_numpy(better).to(dev)
            best_w[mask], best_b[mask] = w[mask], b[mask]
        if walk.done:
            break
    return [grid[int(j)] for j in walk.pick], (best_w, best_b)
