"""Pooling strategies: turn a layer's padded ``[batch, tokens, hidden]`` output into one vector per example.

Every strategy looks only at an example's non-padding tokens, so its result does not depend on the
other examples of the batch or on the padding side. Pooling runs in float32 on the model's device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from probing.errors import ConfigError


def first_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Position of the first non-padding token of each row (works for left and right padding)."""
    return mask.int().argmax(dim=1)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Position of the last non-padding token of each row (works for left and right padding)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (mask.long() * (positions + 1)).argmax(dim=1)


def gather_rows(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``hidden[b, index[b]]`` for every row ``b``: [batch, hidden]."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


class ExtractionStrategy(ABC):
    """How one layer's token states become one vector per example."""

    name: str = "strategy"

    def validate(self, model: nn.Module, is_decoder: bool) -> None:  # noqa: B027 - optional hook
        """Raise `ConfigError` if the strategy makes no sense for this model (called before compute)."""

    @abstractmethod
    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pool ``hidden`` [B, T, H] over the tokens where ``mask`` [B, T] is true: [B, D]."""

    def describe(self) -> dict[str, Any]:
        """What goes into run metadata."""
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LastTokenStrategy(ExtractionStrategy):
    """The last non-padding token: the usual choice for decoder (causal) models."""

    name = "last"

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return gather_rows(hidden, last_token_index(mask))


class MeanStrategy(ExtractionStrategy):
    """Mean over non-padding tokens (special tokens included, as sentence-transformers does)."""

    name = "mean"

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


class MaxStrategy(ExtractionStrategy):
    """Element-wise max over non-padding tokens."""

    name = "max"

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return hidden.masked_fill(~mask.bool().unsqueeze(-1), float("-inf")).amax(dim=1)


class CLSStrategy(ExtractionStrategy):
    """The first token (``[CLS]`` of BERT-style encoders), optionally through the model's pooler.

    With ``use_pooler=True`` and a model that has a pooler (BERT, RoBERTa), the pooler (dense + tanh)
    is applied to the first token of each requested layer; at the last block this is exactly the
    model's ``pooler_output``. A model without a pooler (DistilBERT, MiniLM saved without one) falls
    back to the raw first token, with a warning. Decoder (causal) models are refused: their first
    token sees only itself, so it carries nothing about the sentence; use ``last`` or ``mean``.
    """

    name = "cls"

    def __init__(self, use_pooler: bool = False) -> None:
        self.use_pooler = use_pooler
        self._pooler: nn.Module | None = None

    def validate(self, model: nn.Module, is_decoder: bool) -> None:
        if is_decoder:
            raise ConfigError(
                f"strategy 'cls' takes the first token, which in a decoder (causal) model such as "
                f"{type(model).__name__} attends only to itself and says nothing about the text. "
                "Use strategy 'last' (or 'mean') for decoder models."
            )
        self._pooler = None
        if self.use_pooler:
            pooler = getattr(model, "pooler", None)
            if isinstance(pooler, nn.Module):
                self._pooler = pooler
            else:
                import warnings

                warnings.warn(
                    f"{type(model).__name__} has no pooler; strategy 'cls' falls back to the first token.",
                    stacklevel=2,
                )

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        first = gather_rows(hidden, first_token_index(mask))
        if self._pooler is None:
            return first
        pooler_dtype = next(self._pooler.parameters()).dtype
        # HF poolers take [B, T, H] and read token 0.
        return self._pooler(first.unsqueeze(1).to(pooler_dtype)).float()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "use_pooler": self.use_pooler, "pooler_used": self._pooler is not None}

    def __repr__(self) -> str:
        return f"CLSStrategy(use_pooler={self.use_pooler})"


class CustomStrategy(ExtractionStrategy):
    """A user function applied per example to its unpadded ``[tokens, hidden]`` float32 array.

    The function returns a 1-D array (any length, the same for every example). It runs on the CPU in
    numpy, so it is slower than the built-ins: use it for what they cannot express.
    """

    name = "custom"

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], name: str | None = None) -> None:
        if not callable(fn):
            raise ConfigError(f"CustomStrategy needs a callable, got {type(fn).__name__}.")
        self.fn = fn
        self.fn_name = name or getattr(fn, "__qualname__", repr(fn))

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = hidden.detach().cpu().numpy()
        m = mask.bool().cpu().numpy()
        rows = []
        for i in range(h.shape[0]):
            out = np.asarray(self.fn(h[i][m[i]]), dtype=np.float32)
            if out.ndim != 1:
                raise ConfigError(
                    f"The custom strategy {self.fn_name} returned shape {out.shape}; it must return a "
                    "1-D array per example."
                )
            rows.append(out)
        return torch.from_numpy(np.stack(rows)).to(hidden.device)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "function": self.fn_name}

    def __repr__(self) -> str:
        return f"CustomStrategy({self.fn_name})"


STRATEGIES: dict[str, type[ExtractionStrategy]] = {
    "last": LastTokenStrategy,
    "mean": MeanStrategy,
    "max": MaxStrategy,
    "cls": CLSStrategy,
}


def get_strategy(name: str, **kwargs: Any) -> ExtractionStrategy:
    """Build a built-in strategy by name (``last``, ``mean``, ``max``, ``cls``)."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"Unknown strategy {name!r}; expected one of {sorted(STRATEGIES)} (or pass a CustomStrategy in Python)."
        ) from None
    return cls(**kwargs)
