"""Where in the model a label is found: the expected layer and the best layer of a probe curve.

The expected layer is Tenney et al.'s (2019, "BERT Rediscovers the Classical NLP Pipeline") centre of
gravity over score gains: with ``P(l)`` the probe score at layer ``l`` (layers numbered as
transformers numbers ``hidden_states``: the embeddings are 0, block ``i`` is ``i + 1``) and
``D(l) = P(l) - P(l - 1)``, ``E[l] = sum_l l * D(l) / sum_l D(l)`` over the probed layers in model
order, each gain taken from the probed layer before it. It says where the gains happen on average:
a label read off the embeddings has little gain and an expected layer near the first layers; one
that needs deep context has its gains, and its expected layer, late. When the scores do not rise
overall (``sum D <= 0``) there is no centre of gravity and it is NaN.

The best layer is the one with the highest score (ties: the earliest), reported with its CI.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def expected_layer(indices: Sequence[int], scores: Sequence[float]) -> float:
    """Centre of gravity of the score gains of layers ``indices`` (model order) with ``scores``; NaN without gains."""
    pairs = sorted((int(i), float(s)) for i, s in zip(indices, scores, strict=True) if math.isfinite(float(s)))
    if len(pairs) < 2:
        return float("nan")
    gains = [(layer, score - prev) for (_, prev), (layer, score) in zip(pairs[:-1], pairs[1:], strict=True)]
    total = sum(g for _, g in gains)
    if total <= 0:
        return float("nan")
    return sum(layer * g for layer, g in gains) / total


@dataclass(frozen=True)
class LayerSummary:
    """Per label and method: the expected layer (`expected_layer`) and the best layer with its score and CI."""

    label: str
    method: str
    metric: str
    expected_layer: float
    best_layer: str
    best_layer_index: int | None
    best_score: float
    best_ci_low: float
    best_ci_high: float
