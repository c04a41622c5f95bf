"""Where in the model a label is found: the expected layer and the best layer of a probe curve.

The expected layer is Tenney et al.'s (2019, "BERT Rediscovers the Classical NLP Pipeline") centre of
gravity over score gains: ``E[l] = sum_l l * D(l) / sum_l D(l)``, layers numbered as transformers
numbers ``hidden_states`` (the embeddings are 0, block ``i`` is ``i + 1``). Tenney et al. score layer
``l`` with a probe on a learned mix of layers ``0..l``, so their scores never fall and ``D(l) = P(l) -
P(l - 1) >= 0``. Probes here see one layer each, and their scores often fall again in the top layers;
the equivalent of the cumulative score is the best score up to ``l``, ``P*(l) = max_{k <= l} P(k)``,
and ``D(l) = P*(l) - P*(l - 1)``: the gain a layer adds over everything below it. It says where the
gains happen on average: a label read off the embeddings has its expected layer near 0; one that
needs deep context has its gains late. When no layer beats the first one there is no centre of
gravity and it is NaN.

The best layer is the one with the highest score (ties: the earliest), reported with its CI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def expected_layer(indices: Sequence[int], scores: Sequence[float]) -> float:
    """Centre of gravity of the gains of the best score so far, over layers ``indices`` with ``scores``; NaN
    without gains."""
    pairs = sorted((int(i), float(s)) for i, s in zip(indices, scores, strict=True) if math.isfinite(float(s)))
    if len(pairs) < 2:
        return float("nan")
    best = [pairs[0][1]]
    for _, score in pairs[1:]:
        best.append(max(best[-1], score))
    gains = [(layer, high - low) for (layer, _), low, high in zip(pairs[1:], best[:-1], best[1:], strict=True)]
    total = sum(g for _, g in gains)
    if total <= 0:
        return float("nan")
    return sum(layer * g for layer, g in gains) / total


@dataclass(frozen=True)
class LayerSummary:
    """Per label and method: the expected layer (`expected_layer`), the total gain it is the centre of (the
    best score minus the first layer's: near 0, the expected layer means little), and the best layer with
    its score and CI."""

    label: str
    method: str
    metric: str
    expected_layer: float
    gain: float
    best_layer: str
    best_layer_index: int | None
    best_score: float
    best_ci_low: float
    best_ci_high: float
