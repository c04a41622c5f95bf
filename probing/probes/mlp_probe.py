"""MLP probes: one hidden layer (ReLU), the probes of all layers trained as one batched problem.

Hewitt & Liang (2019) found that probes of more capacity reach higher accuracy partly by memorizing
(their control-task accuracy rises too), so an MLP probe is reported with its control task and
selectivity beside the linear ones. The objective mirrors the linear probes: ``mean(CE) +
|W1|^2 / (2 C n) + |W2|^2 / (2 C n)`` on standardized features, C chosen on the dev part by walking
the same grid (`GridWalk`), then refit on all training rows. The solver is the batched L-BFGS of
`probing.probes.lbfgs` (each layer its own history and stopping test), with gradients from autograd;
the weights start from a seeded Glorot-scaled draw, so a run is reproducible.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from probing.probes.base import C_GRID, GridWalk, ProbeFit
from probing.probes.data import Fold
from probing.probes.torch_probe import _stack, _threads

#: hidden units of the MLP probe
HIDDEN = 256
#: L-BFGS iterations per fit
MAX_ITER = 100


class _MLP:
    """Layout of the flat parameters ``[B, P]`` of ``B`` MLPs ``d -> hidden -> n_out`` and their objective."""

    def __init__(self, d: int, hidden: int, n_out: int) -> None:
        self.d, self.h, self.k = d, hidden, n_out
        self.sizes = (d * hidden, hidden, hidden * n_out, n_out)

    @property
    def n_params(self) -> int:
        return sum(self.sizes)

    def unpack(self, theta: Any) -> tuple[Any, Any, Any, Any]:
        a, b, c, _ = self.sizes
        w1 = theta[:, :a].view(-1, self.d, self.h)
        b1 = theta[:, a : a + b]
        w2 = theta[:, a + b : a + b + c].view(-1, self.h, self.k)
        b2 = theta[:, a + b + c :]
        return w1, b1, w2, b2

    def init(self, n_problems: int, seed: int, device: Any) -> Any:
        import torch

        gen = torch.Generator().manual_seed(seed)
        theta = torch.zeros(n_problems, self.n_params)
        w1, _, w2, _ = self.unpack(theta)
        w1.copy_(torch.randn(w1.shape, generator=gen) * (2.0 / (self.d + self.h)) ** 0.5)
        w2.copy_(torch.randn(w2.shape, generator=gen) * (2.0 / (self.h + self.k)) ** 0.5)
        return theta.to(device)

    def logits(self, x: Any, theta: Any) -> Any:
        import torch

        w1, b1, w2, b2 = self.unpack(theta)
        hidden = torch.relu(torch.baddbmm(b1[:, None, :], x, w1))
        return torch.baddbmm(b2[:, None, :], hidden, w2)

    def objective(self, x: Any, y: Any, lambdas: Any) -> Any:
        """``(theta, problems) -> (values, gradients)`` for `probing.probes.lbfgs.minimize`."""
        import torch

        if self.k == 1:
            target = y.to(x.dtype)[None, :, None]
        else:
            target = torch.nn.functional.one_hot(y, self.k).to(x.dtype)[None]

        def evaluate(theta: Any, problems: Any) -> tuple[Any, Any]:
            with torch.enable_grad():
                t = theta.detach().requires_grad_(True)
                z = self.logits(x[problems], t)
                if self.k == 1:
                    ce = torch.nn.functional.binary_cross_entropy_with_logits(
                        z, target.expand_as(z), reduction="none"
                    ).mean(dim=(1, 2))
                else:
                    ce = -(torch.log_softmax(z, dim=2) * target).sum(dim=2).mean(dim=1)
                w1, _, w2, _ = self.unpack(t)
                reg = 0.5 * lambdas[problems] * ((w1 * w1).sum(dim=(1, 2)) + (w2 * w2).sum(dim=(1, 2)))
                value = ce + reg
                (grad,) = torch.autograd.grad(value.sum(), t)
            return value.detach(), grad

        return evaluate

    def predict(self, x: Any, theta: Any) -> Any:
        z = self.logits(x, theta)
        return (z[..., 0] > 0).long() if self.k == 1 else z.argmax(dim=2)


def _fit(model: _MLP, x: Any, y: np.ndarray, lambdas: Any, theta: Any, max_iter: int) -> Any:
    import torch

    from probing.probes.lbfgs import minimize

    target = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(x.device)
    return minimize(model.objective(x, target, lambdas), theta, max_iter=max_iter, tol_grad=1e-3).theta


def mlp_fit_predict(
    features: Sequence[np.ndarray],
    y: np.ndarray,
    n_classes: int,
    fold: Fold,
    *,
    regs: Sequence[float] | None = None,
    grid: Sequence[float] = C_GRID,
    control: np.ndarray | None = None,
    hidden: int = HIDDEN,
    max_iter: int = MAX_ITER,
    seed: int = 0,
    device: str | None = None,
) -> ProbeFit:
    """Fit one-hidden-layer MLP probes of all layers on ``fold`` and predict its test rows.

    Args are those of `probing.probes.sklearn_probe.sklearn_fit_predict`, plus ``hidden`` (units),
    ``max_iter`` (L-BFGS iterations per fit), ``seed`` (initial weights) and ``device``. Layers of
    one width are trained together. ``weights`` is None: an MLP's neurons are not ranked.
    """
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n_out = 1 if n_classes == 2 else n_classes
    grid = sorted(grid)
    preds = np.empty((len(features), len(fold.test)), dtype=np.int64)
    ctrl_preds = None if control is None else np.empty_like(preds)
    chosen = [0.0] * len(features)
    seconds = [0.0] * len(features)
    by_dim: dict[int, list[int]] = {}
    for i, x in enumerate(features):
        by_dim.setdefault(int(x.shape[1]), []).append(i)
    size = (len(fold.train) + len(fold.test)) * sum(int(x.shape[1]) for x in features)
    with _threads(dev, size):
        for dim, layers in by_dim.items():
            start = time.perf_counter()
            model = _MLP(dim, hidden, n_out)
            init = model.init(len(layers), seed, dev)
            if regs is None:
                x_fit, x_dev = _stack(features, layers, fold.fit, (fold.fit, fold.dev), dev)
                walk = GridWalk(len(layers))
                best_theta = init.clone()
                for j, c in enumerate(grid):
                    # every C starts from the seeded draw: a strongly regularized fit has (nearly) zero
                    # weights, where ReLU units are dead, so it would be a start the walk cannot leave
                    lam = torch.full((len(layers),), 1.0 / (c * len(fold.fit)), device=dev)
                    theta = _fit(model, x_fit, y[fold.fit], lam, init, max_iter)
                    acc = (model.predict(x_dev, theta).cpu().numpy() == y[fold.dev]).mean(axis=1)
                    better = walk.step(j, acc)
                    best_theta[torch.from_numpy(better).to(dev)] = theta[torch.from_numpy(better).to(dev)]
                    if walk.done:
                        break
                best = [grid[int(k)] for k in walk.pick]
                del x_fit, x_dev
            else:
                best, best_theta = [float(regs[i]) for i in layers], init
            x_train, x_test = _stack(features, layers, fold.train, (fold.train, fold.test), dev)
            lam = torch.tensor([1.0 / (c * len(fold.train)) for c in best], device=dev)
            theta = _fit(model, x_train, y[fold.train], lam, best_theta, max_iter)
            preds[layers] = model.predict(x_test, theta).cpu().numpy()
            if control is not None and ctrl_preds is not None:
                ctrl_theta = _fit(model, x_train, control[fold.train], lam, init, max_iter)
                ctrl_preds[layers] = model.predict(x_test, ctrl_theta).cpu().numpy()
            elapsed = (time.perf_counter() - start) / len(layers)
            for j, i in enumerate(layers):
                chosen[i], seconds[i] = best[j], elapsed
    return ProbeFit(predictions=preds, regs=chosen, seconds=seconds, control=ctrl_preds, weights=None)
