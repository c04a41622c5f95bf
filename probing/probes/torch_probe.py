"""Linear probes in torch: the probes of all layers trained as one batched problem.

Layers of equal width are stacked into ``X [L, n, d]`` and one weight tensor ``W [L, G, K, d]``
holds a probe per layer (and per value of C, ``G``); one full-batch L-BFGS run minimizes the sum of
their (independent) objectives. C is chosen as in the sklearn path: the grid is walked from strong to
weak regularization, each step warm-started from the last, until every layer's walk has stopped
(`GridWalk`: `PATIENCE` values in a row below its best dev accuracy); then the chosen probes are refit on all
training rows, warm-started. The objective is sklearn's, ``mean(CE) + |W|^2 / (2 C n)`` with an
unpenalized bias, and binary tasks use one logit, so the numbers match the sklearn path. Runs on a
GPU when there is one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from probing.probes.base import C_GRID, GridWalk, ProbeFit
from probing.probes.data import Fold

#: bound on the stacked features of one batch of layers (bigger runs are done in several batches)
MAX_BATCH_BYTES = 2**30
#: CPU problems smaller than this (layers x rows x features) run on one thread: L-BFGS on small
#: problems is a long chain of tiny ops, and idle threads spinning between them cost more than they
#: save (measured: 0.5 s on one thread vs 13 s on two, 7 layers x 600 rows, on a busy 2-core machine)
SINGLE_THREAD_BELOW = 50_000_000
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
    """Per part, a ``[len(layers), rows, d]`` tensor standardized with the mean and std of ``ref`` rows."""
    import torch

    stats = []
    for i in layers:
        r = features[i][ref]
        mean = r.mean(axis=0, dtype=np.float64)
        std = r.std(axis=0, dtype=np.float64)
        std[std < 1e-8] = 1.0
        stats.append((mean.astype(np.float32), std.astype(np.float32)))
    out: list[Any] = []
    for rows in parts:
        dim = int(features[layers[0]].shape[1])
        block = np.empty((len(layers), len(rows), dim), dtype=np.float32)
        for j, (i, (m, s)) in enumerate(zip(layers, stats, strict=True)):
            np.subtract(features[i][rows], m, out=block[j])  # in float32, in place: no float64 copies
            block[j] /= s
        out.append(torch.from_numpy(block).to(device))
    return out


def _logits(x_t: Any, w: Any, b: Any) -> Any:
    """``[L, G, K, n]`` logits of transposed features ``[L, d, n]``, weights ``[L, G, K, d]``, bias ``[L, G, K]``.

    Weights-first with the features transposed (rows last) is the fastest layout for the narrow
    products of probes on CPU (about 2x over ``X @ W``).
    """
    n_layers, g, k, d = w.shape
    return (w.reshape(n_layers, g * k, d) @ x_t).reshape(n_layers, g, k, -1) + b[..., None]


def _train(
    x: Any, y: Any, n_out: int, lambdas: Any, max_iter: int, init: tuple[Any, Any] | None = None
) -> tuple[Any, Any]:
    """Minimize ``sum over (layer, grid) of mean CE + lambda/2 |W|^2`` with full-batch L-BFGS.

    ``x`` is ``[L, n, d]``, ``lambdas`` ``[L, G]``; returns weights ``[L, G, K, d]`` and bias
    ``[L, G, K]``. The gradient is written out (softmax minus one-hot, times the features) rather
    than taken by autograd, which lets both products use their fast layout. ``init`` (weights,
    bias) warm-starts the solver, e.g. the final fit from the chosen dev fit.
    """
    import torch

    n_layers, n, d = x.shape
    g = lambdas.shape[1]
    x_t = x.transpose(1, 2).contiguous()
    if init is None:
        w = torch.zeros(n_layers, g, n_out, d, device=x.device)
        b = torch.zeros(n_layers, g, n_out, device=x.device)
    else:
        w, b = init[0].clone(), init[1].clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    lam = lambdas[:, :, None, None]
    if n_out == 1:
        target = y.to(x.dtype)[None, None, None, :]
    else:
        target = torch.nn.functional.one_hot(y, n_out).to(x.dtype).T[None, None]  # [1, 1, K, n]
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=TOLERANCE_GRAD,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Any:
        with torch.no_grad():
            z = _logits(x_t, w, b)
            if n_out == 1:
                ce = torch.nn.functional.softplus(z) - target * z
                resid = torch.sigmoid(z) - target
            else:
                logp = torch.log_softmax(z, dim=2)
                ce = -(logp * target).sum(dim=2)
                resid = logp.exp() - target
            resid /= n
            w.grad = (resid.reshape(n_layers, g * n_out, n) @ x).reshape(w.shape) + lam * w
            b.grad = resid.sum(dim=-1)
            return ce.sum() / n + 0.5 * (lam * w * w).sum()

    opt.step(closure)
    return w.detach(), b.detach()


def _predict(x: Any, w: Any, b: Any) -> Any:
    """Predicted codes ``[L, G, n]`` of features ``[L, n, d]``."""
    z = _logits(x.transpose(1, 2), w, b)
    return (z[:, :, 0] > 0).long() if z.shape[2] == 1 else z.argmax(dim=2)


def torch_fit_predict(
    features: Sequence[np.ndarray],
    y: np.ndarray,
    n_classes: int,
    fold: Fold,
    *,
    regs: Sequence[float] | None = None,
    grid: Sequence[float] = C_GRID,
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
    chosen = [0.0] * len(features)
    seconds = [0.0] * len(features)
    rows = max(len(fold.fit) + len(fold.dev), len(fold.train) + len(fold.test))
    size = rows * sum(int(x.shape[1]) for x in features)
    with _threads(dev, size):
        for layers in _batches(features, rows, max_batch_bytes):
            _fit_batch(features, y, n_out, fold, layers, regs, grid, max_iter, dev, preds, chosen, seconds)
    return ProbeFit(predictions=preds, regs=chosen, seconds=seconds)


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
        lam = torch.full((n_layers, 1), 1.0 / (c * len(fold.fit)), device=dev)
        w, b = _train(x_fit, y_fit, n_out, lam, max_iter, None if w is None else (w, b))
        better = walk.step(j, (_predict(x_dev, w, b)[:, 0].cpu().numpy() == y[fold.dev]).mean(axis=1))
        if best_w is None:
            best_w, best_b = w.clone(), b.clone()
        else:
            mask = torch.from_numpy(better).to(dev)
            best_w[mask], best_b[mask] = w[mask], b[mask]
        if walk.done:
            break
    return [grid[int(j)] for j in walk.pick], (best_w, best_b)


def _fit_batch(
    features: Sequence[np.ndarray],
    y: np.ndarray,
    n_out: int,
    fold: Fold,
    layers: list[int],
    regs: Sequence[float] | None,
    grid: list[float],
    max_iter: int,
    dev: Any,
    preds: np.ndarray,
    chosen: list[float],
    seconds: list[float],
) -> None:
    """Fit one batch of equal-width layers; write their predictions, C and time into the outputs."""
    import torch

    start = time.perf_counter()
    if regs is None:
        best, init = _search(features, y, n_out, fold, layers, grid, max_iter, dev)
    else:
        best = [float(regs[i]) for i in layers]
        init = None
    x_train, x_test = _stack(features, layers, fold.train, (fold.train, fold.test), dev)
    y_train = torch.from_numpy(y[fold.train]).to(dev)
    lam = torch.tensor([[1.0 / (c * len(fold.train))] for c in best], device=dev)
    w, b = _train(x_train, y_train, n_out, lam, max_iter, init)
    out = _predict(x_test, w, b)[:, 0].cpu().numpy()
    elapsed = (time.perf_counter() - start) / len(layers)
    for j, i in enumerate(layers):
        preds[i] = out[j]
        chosen[i] = best[j]
        seconds[i] = elapsed
