"""Independent reference: plain transformers ``output_hidden_states`` on one unpadded example at a time."""

from __future__ import annotations

import copy

import numpy as np
import torch

FINAL_NORMS = ("ln_f", "norm")  # GPT-2, Llama: applied to the last entry of hidden_states only


def hidden_states(model: torch.nn.Module, tokenizer: object, text: str) -> list[np.ndarray]:
    """[embeddings, block 0 output, ..., block n-1 output] of one text, each [tokens, hidden], no final norm."""
    return encoded_hidden_states(model, tokenizer(text, return_tensors="pt"))  # type: ignore[operator]


def encoded_hidden_states(model: torch.nn.Module, enc: object) -> list[np.ndarray]:
    """`hidden_states` of one already tokenized example (e.g. pre-split words)."""
    raw = copy.deepcopy(model)
    for name in FINAL_NORMS:
        if isinstance(getattr(raw, name, None), torch.nn.Module):
            setattr(raw, name, torch.nn.Identity())
    with torch.no_grad():
        out = raw(**enc, output_hidden_states=True)
    return [h[0].float().numpy() for h in out.hidden_states]


def pool(tokens: np.ndarray, strategy: str) -> np.ndarray:
    """Pool one example's [tokens, hidden] states as a strategy should."""
    if strategy == "mean":
        return tokens.mean(axis=0)
    if strategy == "max":
        return tokens.max(axis=0)
    if strategy == "last":
        return tokens[-1]
    if strategy == "cls":
        return tokens[0]
    raise ValueError(strategy)


def reference(model: torch.nn.Module, tokenizer: object, text: str, layer: int | str, strategy: str) -> np.ndarray:
    """The expected pooled activation of ``text`` at ``layer`` (block index or 'embeddings')."""
    states = hidden_states(model, tokenizer, text)
    h = states[0] if layer == "embeddings" else states[int(layer) % (len(states) - 1) + 1]
    return pool(h, strategy)
