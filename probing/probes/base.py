"""What every probe implementation returns, and the regularization grid they search.

Both implementations (`probing.probes.sklearn_probe`, `probing.probes.torch_probe`) fit an
L2-regularized multinomial logistic regression on standardized features, for all layers of a run
at once, and choose the inverse regularization strength ``C`` per layer on a dev part. Using the
same objective and the same grid keeps their numbers comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from probing.probes.data import Fold

#: inverse L2 strengths tried on the dev part (sklearn's ``C``: loss = C * sum(CE) + |W|^2 / 2)
C_GRID: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)
#: the grid is walked from strong to weak regularization and a layer's walk stops after this many
#: values in a row score below its best dev accuracy: weak regularization is the slowest to fit, and
#: past the peak it only loses (two, not one: dev accuracy on small dev parts is noisy)
PATIENCE = 2


@dataclass(frozen=True)
class ProbeFit:
    """Test predictions of the probes of several layers on one fold.

    ``predictions[i]`` are the predicted class codes of ``fold.test`` from layer ``i``; ``regs[i]``
    the ``C`` chosen (or given) for it; ``seconds[i]`` its share of the fitting time.
    """

    predictions: np.ndarray
    regs: list[float]
    seconds: list[float]


class FitPredict(Protocol):
    """Signature of a probe implementation: fit on ``fold`` (choosing C unless ``regs``), predict its test rows."""

    def __call__(
        self,
        features: Sequence[np.ndarray],
        y: np.ndarray,
        n_classes: int,
        fold: Fold,
        *,
        regs: Sequence[float] | None = None,
        grid: Sequence[float] = C_GRID,
    ) -> ProbeFit: ...
