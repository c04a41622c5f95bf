"""Pooling strategies: turn a layer's padded ``[batch, tokens, hidden]`` output into one vector per example.

Every strategy looks only at an example's non-padding tokens, so its result does not depend on the
other examples of the batch or on the padding side. Pooling runs in float32 on the model's device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
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
    #: "pooled" (one row per example), or "tokens" / "words" (a ragged number of rows per example)
    mode: str = "pooled"

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


@dataclass
class RowPlan:
    """Which rows a token-level strategy emits for a batch (the same for every layer).

    ``batch_index``/``token_index`` pick token positions, in example order; for word means,
    ``segment`` maps each picked token to its output row. ``lengths`` counts rows per example, and
    ``row_fields`` carries per-row metadata (token ids, word indices).
    """

    batch_index: torch.Tensor
    token_index: torch.Tensor
    lengths: torch.Tensor
    row_fields: dict[str, torch.Tensor]
    segment: torch.Tensor | None = None
    n_rows: int = 0


class TokenLevelStrategy(ExtractionStrategy):
    """Base of strategies that store several rows per example (a ragged layout)."""

    mode = "tokens"

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise ConfigError(f"strategy {self.name!r} stores rows per token or word; use ActivationExtractor.run().")

    @abstractmethod
    def plan(self, batch: dict[str, torch.Tensor]) -> RowPlan:
        """Decide the rows of a batch once, before the forward pass."""

    @abstractmethod
    def count_rows(self, tokens: Any) -> np.ndarray:
        """Rows per example of tokenized examples (`probing.data.encoded.Tokens`), as `plan` will make
        them: a token-level run places every example's rows before computing any."""

    def rows(self, hidden: torch.Tensor, plan: RowPlan) -> torch.Tensor:
        """The ``[rows, hidden]`` output of one layer for a batch."""
        picked = hidden[plan.batch_index, plan.token_index]
        if plan.segment is None:
            return picked
        out = torch.zeros(plan.n_rows, hidden.shape[-1], dtype=picked.dtype, device=picked.device)
        out.index_add_(0, plan.segment, picked)
        counts = torch.bincount(plan.segment, minlength=plan.n_rows).clamp(min=1).to(picked.dtype)
        return out / counts.unsqueeze(-1)


class TokensStrategy(TokenLevelStrategy):
    """Every non-padding token's activation (special tokens dropped unless ``keep_special``)."""

    name = "tokens"
    mode = "tokens"

    def __init__(self, keep_special: bool = False) -> None:
        self.keep_special = keep_special

    def plan(self, batch: dict[str, torch.Tensor]) -> RowPlan:
        keep = batch["attention_mask"].bool()
        if not self.keep_special:
            if "special_tokens_mask" not in batch:
                raise ConfigError("strategy 'tokens' without special tokens needs special_tokens_mask in the batch.")
            keep = keep & ~batch["special_tokens_mask"].bool()
        bi, ti = keep.nonzero(as_tuple=True)
        return RowPlan(bi, ti, keep.sum(dim=1), {"token_id": batch["input_ids"][bi, ti]})

    def count_rows(self, tokens: Any) -> np.ndarray:
        special = tokens.special.astype(np.int64)
        keep = np.ones_like(special) if self.keep_special else 1 - special
        return _segment_sums(keep, tokens.offsets)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "keep_special": self.keep_special}


class WordsStrategy(TokenLevelStrategy):
    """One row per word of pre-split input: its ``first``, ``last`` or ``mean`` sub-token.

    Words are the items of the example's word list (``is_split_into_words``); special tokens belong
    to no word. Words cut off by truncation are dropped (the stored word count says how many remain).
    """

    name = "words"
    mode = "words"
    POOLS = ("first", "last", "mean")

    def __init__(self, pool: str = "first") -> None:
        if pool not in self.POOLS:
            raise ConfigError(f"words pooling {pool!r} is not one of {self.POOLS}.")
        self.word_pool = pool

    def plan(self, batch: dict[str, torch.Tensor]) -> RowPlan:
        if "word_ids" not in batch:
            raise ConfigError("strategy 'words' needs pre-split input (a words field); the batch has no word_ids.")
        wid = batch["word_ids"]
        valid = wid >= 0
        prev = torch.nn.functional.pad(wid, (1, 0), value=-1)[:, :-1]
        nxt = torch.nn.functional.pad(wid, (0, 1), value=-1)[:, 1:]
        first = valid & (wid != prev)
        lengths = first.sum(dim=1)
        if self.word_pool in ("first", "last"):
            sel = first if self.word_pool == "first" else valid & (wid != nxt)
            bi, ti = sel.nonzero(as_tuple=True)
            return RowPlan(bi, ti, lengths, {"word_index": wid[bi, ti]})
        bi, ti = valid.nonzero(as_tuple=True)
        segment = first[bi, ti].long().cumsum(0) - 1
        fb, ft = first.nonzero(as_tuple=True)
        return RowPlan(bi, ti, lengths, {"word_index": wid[fb, ft]}, segment=segment, n_rows=int(first.sum()))

    def count_rows(self, tokens: Any) -> np.ndarray:
        wid = tokens.word_ids
        if wid is None:
            raise ConfigError("strategy 'words' needs pre-split input (a words field); the data has no word ids.")
        prev = np.concatenate([[-1], wid[:-1]]).astype(np.int64)
        prev[tokens.offsets[:-1][tokens.offsets[:-1] < len(wid)]] = -1  # each example starts afresh
        first = ((wid >= 0) & (wid != prev)).astype(np.int64)
        return _segment_sums(first, tokens.offsets)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "pool": self.word_pool}


def _segment_sums(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sum of ``values[offsets[i]:offsets[i + 1]]`` for each i (0 for an empty segment)."""
    cumulative = np.concatenate([[0], np.cumsum(values, dtype=np.int64)])
    return cumulative[offsets[1:]] - cumulative[offsets[:-1]]


STRATEGIES: dict[str, type[ExtractionStrategy]] = {
    "last": LastTokenStrategy,
    "mean": MeanStrategy,
    "max": MaxStrategy,
    "cls": CLSStrategy,
    "tokens": TokensStrategy,
    "words": WordsStrategy,
}


def get_strategy(name: str, **kwargs: Any) -> ExtractionStrategy:
    """Build a built-in strategy by name (``last``, ``mean``, ``max``, ``cls``, ``tokens``, ``words``).

    An option the strategy does not take is an error naming the ones it does (the CLI builds
    strategies from their typed configs with ``instantiate``; this is the Python shortcut).
    """
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"Unknown strategy {name!r}; expected one of {sorted(STRATEGIES)} (or pass a CustomStrategy in Python)."
        ) from None
    import inspect

    plain = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    accepted = {n for n, p in inspect.signature(cls.__init__).parameters.items() if p.kind in plain} - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(
            f"Strategy {name!r} takes no option {unknown[0]!r}; its options: {sorted(accepted) or 'none'}."
        )
    return cls(**kwargs)
