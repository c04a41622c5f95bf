"""What every probe implementation returns, and the regularization grid they search.

Both implementations (`probing.probes.sklearn_probe`, `probing.probes.torch_probe`) fit an
L2-regularized multinomial logistic regression on standardized features, for all layers of a run
at once, and choose the inverse regularization strength ``C`` per layer on a dev part. Using the
same objective and the same grid keeps their numbers comparable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from probing.config import ProbeConfig
from probing.probes.data import Fold

#: inverse L2 strengths tried on the dev part (sklearn's ``C``: loss = C * sum(CE) + |W|^2 / 2)
C_GRID: tuple[float, ...] = tuple(ProbeConfig().c_grid)
#: the grid is walked from strong to weak regularization and a layer's walk stops after this many
#: values in a row score below its best dev accuracy: weak regularization is the slowest to fit, and
#: past the peak it only loses (two, not one: dev accuracy on small dev parts is noisy)
PATIENCE = 2


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class GridWalk:
    """The C search of several layers at once: which grid step is each layer's best, and when to stop.

    Both probe implementations walk the grid with this, so they stop and choose by the same rule: a
    higher dev accuracy wins (ties keep the stronger regularization), and a layer's walk ends after
    `PATIENCE` steps in a row below its best.
    """

    def __init__(self, n_layers: int) -> None:
        self.best_acc = np.full(n_layers, -1.0)
        self.pick = np.zeros(n_layers, dtype=np.int64)  # grid index of each layer's best so far
        self._worse = np.zeros(n_layers, dtype=np.int64)
        self.active = np.ones(n_layers, dtype=bool)  # layers still walking

    def step(self, index: int, acc: np.ndarray) -> np.ndarray:
        """Record the dev accuracies of grid step ``index``; returns the layers it improved."""
        better = self.active & (acc > self.best_acc)
        self._worse[better] = 0
        self._worse[self.active & (acc < self.best_acc)] += 1
        self.active &= self._worse < PATIENCE
        self.pick[better] = index
        self.best_acc = np.where(better, acc, self.best_acc)
        return better

    @property
    def done(self) -> bool:
        """Every layer is past its best: weaker regularization would only cost time."""
        return not self.active.any()


@dataclass(frozen=True)
class ProbeFit:
    """Test predictions of the probes of several layers on one fold.

    ``predictions[i]`` are the predicted class codes of ``fold.test`` from layer ``i``; ``regs[i]``
    the ``C`` chosen (or given) for it; ``seconds[i]`` its share of the fitting time; ``control[i]``
    the predictions of layer ``i``'s control-task probe, when a control task was given; ``weights[i]``
    the final linear probe's weights on standardized features (``[n_outputs, dim]``: one row per class,
    or one row for a binary or regression probe), for ranking neurons (`probing.probes.neurons`).
    """

    predictions: np.ndarray
    regs: list[float]
    seconds: list[float]
    control: np.ndarray | None = None
    weights: list[np.ndarray] | None = None


class FitPredict(Protocol):
    """Signature of a probe implementation: fit on ``fold`` (choosing C unless ``regs``), predict its test rows.

    With ``control`` (labels of the control task, one per row), each layer also gets a control probe,
    fit on the same standardized training rows with the C chosen for the task.
    """

    def __call__(
        self,
        features: Sequence[np.ndarray],
        y: np.ndarray,
        n_classes: int,
        fold: Fold,
        *,
        regs: Sequence[float] | None = None,
        grid: Sequence[float] = C_GRID,
        control: np.ndarray | None = None,
    ) -> ProbeFit: ...
