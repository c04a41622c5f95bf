"""Attention patterns (``attn_pattern.L`` sites): each example's attention probabilities over its own tokens.

What is stored, and why:

- A token-level run (strategy ``tokens`` or ``words``) stores one row per query row the strategy picks
  (``tokens`` with ``keep_special=true``: every unpadded token), each row ``[heads, K]``: the query's
  probabilities over the example's keys in example-local order (key ``j`` is the example's ``j``-th real
  token, whatever the padding side), zeros from the example's length on. ``K`` is fixed per run: the
  longest tokenized example of the run (at most ``max_length``). One row costs ``heads * K * itemsize``
  bytes per layer (12 heads x 128 keys x 4 bytes = 6 KiB per token for MiniLM at 128 tokens).
  `probing.storage.reader.RunReader.attention` reads one example back as ``[heads, n, n]``.
- Pooled strategies are refused: a mean or last row of a probability matrix is not a pattern.
- transformers returns attention weights only from its eager attention; sdpa and flash kernels never form
  them. While an extractor with attention sites runs, the model is switched to eager attention
  (`eager_attention`) and switched back afterwards; hidden-state layers of the same run are then computed
  by eager attention too (the same function, up to float rounding). Eager attention materializes
  ``batch x heads x T x T`` float scores per layer, so it costs memory and time against sdpa
  (bench/attention_cost.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from probing.errors import ConfigError

EAGER = "eager"


def attention_implementation(model: nn.Module) -> str | None:
    """The attention implementation a transformers model runs (``sdpa``, ``eager``, ...), None if unknown."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None)


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run ``model`` with eager attention inside the block (transformers' ``set_attn_implementation``);
    the implementation it had is restored on exit. Refuses a model that cannot switch."""
    before = attention_implementation(model)
    if before == EAGER:
        yield
        return
    setter = getattr(model, "set_attn_implementation", None)
    name = type(model).__name__
    if not callable(setter):
        raise ConfigError(
            f"{name} cannot switch to eager attention (no set_attn_implementation), and attention probabilities "
            "exist only there. Load a transformers model, or drop the attn_pattern layers."
        )
    try:
        setter(EAGER)
    except (ValueError, ImportError, NotImplementedError) as exc:
        raise ConfigError(
            f"{name} cannot run eager attention ({exc}), and attention probabilities exist only there (sdpa and "
            "flash kernels never form them). Drop the attn_pattern layers for this model."
        ) from exc
    if attention_implementation(model) != EAGER:
        raise ConfigError(
            f"{name} stayed on {attention_implementation(model)!r} attention when asked for eager (it does not "
            "support switching), and attention probabilities exist only in eager attention. Drop the attn_pattern "
            "layers for this model."
        )
    try:
        yield
    finally:
        if before is not None:
            setter(before)


def weights_of(output: Any, module_name: str) -> torch.Tensor:
    """The attention probabilities ``[batch, heads, q, k]`` an attention module returned (its last output)."""
    weights = output[-1] if isinstance(output, (tuple, list)) and len(output) >= 2 else None
    if isinstance(weights, torch.Tensor) and weights.dim() == 4:
        return weights
    raise ConfigError(
        f"{module_name} returned no attention weights (got {type(weights).__name__}): the model does not run eager "
        "attention there (sdpa and flash kernels never form the probabilities). Drop the attn_pattern layers."
    )


def example_local_keys(weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Reorder the key axis of ``weights`` [B, H, Q, K] so that key ``j`` is row b's ``j``-th real token
    (``mask`` [B, K]; left and right padding alike), with zeros from the row's length on."""
    keep = mask.bool()
    order = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices  # real positions first, in order
    b, h, q, k = weights.shape
    local = weights.gather(3, order[:, None, None, :].expand(b, h, q, k))
    inside = torch.arange(k, device=mask.device)[None, :] < keep.sum(dim=1, keepdim=True)
    return local * inside[:, None, None, :].to(local.dtype)


def check_strategy(strategy: Any, keys: list[str]) -> None:
    """Refuse a pooled strategy for attention sites, before compute."""
    from probing.strategies import TokenLevelStrategy

    if not isinstance(strategy, TokenLevelStrategy):
        raise ConfigError(
            f"Layers {keys} are attention patterns, stored per query token ([heads, keys] rows); strategy "
            f"{getattr(strategy, 'name', type(strategy).__name__)!r} pools one vector per example, which has no "
            "meaning for a probability matrix. Use strategy=tokens (strategy.keep_special=true for the full "
            "[heads, n, n] pattern) or strategy=words; run pooled hidden-state layers in a separate run."
        )


def bytes_per_token(heads: int, keys: int, itemsize: int) -> int:
    """Stored bytes of one attention layer per query token."""
    return int(heads) * int(keys) * int(itemsize)
