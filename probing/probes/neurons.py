"""Which neurons carry a label: ranking a layer's dimensions by the weights of its linear probe.

The ranking is NeuroX's (Dalvi et al. 2019, "What Is One Grain of Sand in the Desert?"): a probe is
trained on standardized features, so its weights are comparable across dimensions, and a
dimension's score is its weight mass ``sum over classes |w[c, j]|`` (one row for a binary or a
regression probe). The top ``k`` dimensions by score are reported, with each one's share of the
layer's total weight mass. Weights of an L2-regularized probe spread over correlated dimensions,
so a high rank means "the probe leans on it", not "it alone encodes the label".
"""

from __future__ import annotations

import numpy as np

#: neurons reported per layer and label
TOP_K = 10


def neuron_scores(weights: np.ndarray) -> np.ndarray:
    """Weight mass per dimension: ``sum_c |weights[c, j]|`` of ``weights [n_outputs, dim]``."""
    w = np.asarray(weights, dtype=np.float64)
    return np.abs(w.reshape(-1, w.shape[-1])).sum(axis=0)


def top_neurons(weights: np.ndarray, k: int = TOP_K) -> list[tuple[int, float]]:
    """The ``k`` dimensions of largest weight mass, largest first, as ``(index, share of the total mass)``.

    Ties are broken by the lower index, so the ranking is deterministic.
    """
    scores = neuron_scores(weights)
    total = float(scores.sum())
    order = np.lexsort((np.arange(len(scores)), -scores))[: max(0, int(k))]
    return [(int(j), float(scores[j] / total) if total > 0 else 0.0) for j in order]
