"""Minimum description length probes: the online codelength of Voita & Titov (2020).

"Information-Theoretic Probing with Minimum Description Length" measures how many bits it takes to
transmit the labels of the training rows given their representations. The rows are put in a seeded
random order and cut at fixed fractions (`VOITA_FRACTIONS`: 0.1%, 0.2%, 0.4%, ... 50%, 100%). The
first block is sent with the uniform code (``log2 K`` bits per row); every later block is sent with
a probe trained on all rows before it, at ``-log2 p(y | x)`` bits per row. The sum is the online
codelength; ``compression = uniform codelength / online codelength`` (``N log2 K`` over it) is 1 for
a representation a probe cannot read the labels from, and grows with how easily it can. Unlike
accuracy, the codelength also counts how much data a probe needs: a label that is only learnable
from many examples costs more bits.

The probes are the linear probes of `probing.probes.torch_probe` (the same objective as the accuracy
probes, with the inverse L2 strength ``C`` chosen for the task), all layers as one batched problem,
each block warm-started from the previous block's solution and run for at most `MAX_ITER` L-BFGS
iterations. Features are standardized with the statistics of all transmitted rows (label-free: the
receiver of the code has every representation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: block boundaries as fractions of the training rows (Voita & Titov 2020, section 3.2)
VOITA_FRACTIONS: tuple[float, ...] = (0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0)
#: L-BFGS iterations per block (warm-started, so later blocks need few)
MAX_ITER = 20


@dataclass(frozen=True)
class Codelength:
    """Online codelength of the probes of several layers on one label.

    ``online_bits[i]`` is layer ``i``'s online codelength; ``uniform_bits`` the codelength of the
    uniform code (``n_rows * log2(n_classes)``); ``boundaries`` the block ends (row counts).
    """

    online_bits: np.ndarray
    uniform_bits: float
    n_rows: int
    boundaries: list[int]

    @property
    def compression(self) -> np.ndarray:
        """``uniform_bits / online_bits`` per layer."""
        return self.uniform_bits / self.online_bits


def block_boundaries(n_rows: int, fractions: Sequence[float] = VOITA_FRACTIONS) -> list[int]:
    """Block ends in rows: ``fraction * n_rows`` rounded, at least 1, increasing, the last ``n_rows``."""
    ends = sorted({min(n_rows, max(1, int(round(f * n_rows)))) for f in fractions} | {n_rows})
    return [e for e in ends if e > 0]


def online_codelength(
    features: Sequence[np.ndarray],
    y: np.ndarray,
    n_classes: int,
    rows: np.ndarray,
    regs: Sequence[float],
    *,
    seed: int = 0,
    fractions: Sequence[float] = VOITA_FRACTIONS,
    max_iter: int = MAX_ITER,
    device: str | None = None,
) -> Codelength:
    """The online codelength of ``y[rows]`` given each layer's features (all layers in one batched problem).

    Args:
        features: ``[n_rows, dim]`` per layer (only ``rows`` are read).
        y: integer class codes of all rows.
        n_classes: number of classes (the uniform code's ``log2 K``).
        rows: the rows to transmit (the training rows); put in a seeded random order here.
        regs: inverse L2 strength ``C`` per layer (the task probe's).
        seed: seeds the order of the rows.
        fractions: block boundaries as fractions of ``len(rows)``.
        max_iter: L-BFGS iterations per block.
        device: torch device (default: CUDA if available, else CPU).
    """
    import torch

    from probing.probes.torch_probe import _stack, _threads, _train, log_likelihood

    order = np.random.default_rng([seed, 0x3D1]).permutation(np.asarray(rows))
    n = len(order)
    ends = block_boundaries(n, fractions)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n_out = 1 if n_classes == 2 else n_classes
    bits = np.full(len(features), ends[0] * math.log2(n_classes))
    y_all = np.asarray(y, dtype=np.int64)
    by_dim: dict[int, list[int]] = {}
    for i, x in enumerate(features):
        by_dim.setdefault(int(x.shape[1]), []).append(i)
    y_ordered = torch.from_numpy(y_all[order]).to(dev)
    with _threads(dev, n * sum(int(x.shape[1]) for x in features)):
        for layers in by_dim.values():
            # standardized once with the statistics of all transmitted rows: the receiver of the code
            # has every representation (only labels are sent), so this uses nothing it lacks; each
            # block is then a view of the first rows
            (x_all,) = _stack(features, layers, order, (order,), dev)
            init = None
            for start, stop in zip(ends[:-1], ends[1:], strict=True):
                lam = torch.tensor([1.0 / (float(regs[i]) * start) for i in layers], device=dev, dtype=x_all.dtype)
                w, b = _train(x_all[:, :start], y_ordered[:start], n_out, lam, max_iter, init)
                init = (w, b)
                logp = log_likelihood(x_all[:, start:stop], y_ordered[start:stop], w, b)
                bits[layers] += (-logp.sum(dim=1) / math.log(2)).double().cpu().numpy()
    return Codelength(online_bits=bits, uniform_bits=n * math.log2(n_classes), n_rows=n, boundaries=ends)
