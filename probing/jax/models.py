"""flax nnx ports of three transformer families, returning the residual-stream sites `probing` names.

Each model's ``__call__(ids, mask, positions, token_types, *, depth, wanted)`` runs the embeddings and
blocks ``0 .. depth-1`` only (early stop: deeper blocks are never traced, so never computed) and returns
``{site: [B, T, H]}`` for the sites in ``wanted``:

- ``resid_pre.i``: the input of block i (``resid_pre.0`` is the embeddings, ``hidden_states[0]``);
- ``resid_post.i``: the output of block i (``hidden_states[i+1]``, before any final norm);
- ``resid_mid.i``, ``attn_out.i``, ``mlp_out.i``: the same points `probing.sites.FAMILY_SITES` hooks on the
  torch side (BERT family: the attention sublayer's normalized output, the attention output dense and
  the output dense, both before their residual add; pre-norm families: the stream between attention
  and MLP, and what attention and MLP add to it);
- ``final``: after the final norm (GPT-2 ``ln_f``, Llama ``norm``), or the last block (post-norm BERT).

Positions and token types are computed by the caller (`probing.jax.forward`), the way the torch side
computes them, so one model body serves right- and left-padded batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from probing.jax.nn import Dense, Embed, LayerNorm, RMSNorm, attention, causal_mask, padding_mask, rotary

Keep = Callable[[str, jax.Array], None]


def _keeper(wanted: frozenset[str]) -> tuple[dict[str, jax.Array], Keep]:
    out: dict[str, jax.Array] = {}

    def keep(name: str, value: jax.Array) -> None:
        if name in wanted:
            out[name] = value

    return out, keep


def _run_blocks(blocks: Any, x: jax.Array, depth: int, wanted: frozenset[str], keep: Keep, final: Any,
                *args: Any) -> None:
    """Blocks ``0..depth-1`` (each called as ``block(x, *args, keep, i)``), keeping every block's input and
    output, the input of the first block not run, and ``final(x)`` (the final norm) after the last block."""
    for i in range(depth):
        keep(f"resid_pre.{i}", x)
        x = blocks[i](x, *args, keep, i)
        keep(f"resid_post.{i}", x)
    keep(f"resid_pre.{depth}", x)  # the input of the first block not run (embeddings at depth 0)
    if depth == len(blocks) and "final" in wanted:
        keep("final", final(x))


def _heads(x: jax.Array, n: int) -> jax.Array:
    return x.reshape(x.shape[0], x.shape[1], n, -1)


# -- BERT family (BERT, RoBERTa, DistilBERT: post-norm encoder) ---------------------------------------
class EncoderLayer(nnx.Module):
    """A post-norm encoder block: ``LN1(x + attn(x))``, then ``LN2(h + ffn(h))``."""

    def __init__(self, q: Dense, k: Dense, v: Dense, o: Dense, ln1: LayerNorm, inner: Dense, outer: Dense,
                 ln2: LayerNorm, heads: int, act: Any) -> None:  # fmt: skip
        self.q, self.k, self.v, self.o, self.ln1 = q, k, v, o, ln1
        self.inner, self.outer, self.ln2 = inner, outer, ln2
        self.heads = heads
        self.act = act

    def __call__(self, x: jax.Array, allowed: jax.Array, keep: Keep, i: int) -> jax.Array:
        q, k, v = (_heads(f(x), self.heads) for f in (self.q, self.k, self.v))
        attn = self.o(attention(q, k, v, allowed, 1.0 / math.sqrt(q.shape[-1])))
        keep(f"attn_out.{i}", attn)
        h = self.ln1(attn + x)
        keep(f"resid_mid.{i}", h)
        mlp = self.outer(self.act(self.inner(h)))
        keep(f"mlp_out.{i}", mlp)
        return self.ln2(mlp + h)


class Encoder(nnx.Module):
    """Embeddings (word + token type + position, LayerNorm) and post-norm blocks; no final norm."""

    def __init__(self, word: Embed, position: Embed, token_type: Embed | None, ln: LayerNorm,
                 layers: list[EncoderLayer]) -> None:  # fmt: skip
        self.word, self.position, self.token_type, self.ln = word, position, token_type, ln
        self.layers = nnx.List(layers)

    def __call__(self, ids: jax.Array, mask: jax.Array, positions: jax.Array, token_types: jax.Array | None, *,
                 depth: int, wanted: frozenset[str]) -> dict[str, jax.Array]:  # fmt: skip
        out, keep = _keeper(wanted)
        x = self.word(ids)
        if self.token_type is not None:
            x = x + self.token_type(jnp.zeros_like(ids) if token_types is None else token_types)
        x = self.ln(x + self.position(positions))
        allowed = padding_mask(mask)
        _run_blocks(self.layers, x, depth, wanted, keep, lambda h: h, allowed)  # no final norm: final = last block
        return out


# -- GPT-2 ----------------------------------------------------------------------------------------------
class GPT2Block(nnx.Module):
    """A pre-norm GPT-2 block with a fused q/k/v projection (Conv1D weights are already ``[in, out]``)."""

    def __init__(self, ln1: LayerNorm, qkv: Dense, proj: Dense, ln2: LayerNorm, fc: Dense, out: Dense,
                 heads: int, scale: float, act: Any) -> None:  # fmt: skip
        self.ln1, self.qkv, self.proj, self.ln2, self.fc, self.out = ln1, qkv, proj, ln2, fc, out
        self.heads, self.scale, self.act = heads, scale, act

    def __call__(self, x: jax.Array, allowed: jax.Array, keep: Keep, i: int) -> jax.Array:
        q, k, v = (_heads(t, self.heads) for t in jnp.split(self.qkv(self.ln1(x)), 3, axis=-1))
        attn = self.proj(attention(q, k, v, allowed, self.scale))
        keep(f"attn_out.{i}", attn)
        h = x + attn
        keep(f"resid_mid.{i}", h)
        mlp = self.out(self.act(self.fc(self.ln2(h))))
        keep(f"mlp_out.{i}", mlp)
        return h + mlp


class GPT2(nnx.Module):
    """GPT-2: token + position embeddings (+ token-type rows of ``wte`` when given, as transformers does),
    pre-norm blocks, ``ln_f``."""

    def __init__(self, wte: Embed, wpe: Embed, blocks: list[GPT2Block], ln_f: LayerNorm) -> None:
        self.wte, self.wpe, self.ln_f = wte, wpe, ln_f
        self.blocks = nnx.List(blocks)

    def __call__(self, ids: jax.Array, mask: jax.Array, positions: jax.Array, token_types: jax.Array | None, *,
                 depth: int, wanted: frozenset[str]) -> dict[str, jax.Array]:  # fmt: skip
        out, keep = _keeper(wanted)
        x = self.wte(ids) + self.wpe(positions)
        if token_types is not None:
            x = x + self.wte(token_types)
        allowed = causal_mask(mask)
        _run_blocks(self.blocks, x, depth, wanted, keep, self.ln_f, allowed)
        return out


# -- Llama family (Llama, Mistral, Qwen2) -----------------------------------------------------------------
class LlamaBlock(nnx.Module):
    """RMSNorm, rotary grouped-query attention (q/k/v biases where the config has them: Qwen2), gated MLP;
    ``window`` is the block's sliding window (Mistral, Qwen2 sliding layers) or None."""

    def __init__(self, norm1: RMSNorm, q: Dense, k: Dense, v: Dense, o: Dense, norm2: RMSNorm, gate: Dense,
                 up: Dense, down: Dense, heads: int, kv_heads: int, theta: float, window: int | None,
                 act: Any) -> None:  # fmt: skip
        self.norm1, self.q, self.k, self.v, self.o = norm1, q, k, v, o
        self.norm2, self.gate, self.up, self.down = norm2, gate, up, down
        self.heads, self.kv_heads, self.theta, self.window, self.act = heads, kv_heads, theta, window, act

    def __call__(self, x: jax.Array, mask: jax.Array, positions: jax.Array, keep: Keep, i: int) -> jax.Array:
        n = self.norm1(x)
        q = rotary(_heads(self.q(n), self.heads), positions, self.theta)
        k = rotary(_heads(self.k(n), self.kv_heads), positions, self.theta)
        v = _heads(self.v(n), self.kv_heads)
        attn = self.o(attention(q, k, v, causal_mask(mask, self.window), 1.0 / math.sqrt(q.shape[-1])))
        keep(f"attn_out.{i}", attn)
        h = x + attn
        keep(f"resid_mid.{i}", h)
        p = self.norm2(h)
        mlp = self.down(self.act(self.gate(p)) * self.up(p))
        keep(f"mlp_out.{i}", mlp)
        return h + mlp


class Llama(nnx.Module):
    """Token embeddings, Llama blocks, the final RMSNorm."""

    def __init__(self, embed: Embed, blocks: list[LlamaBlock], norm: RMSNorm) -> None:
        self.embed, self.norm = embed, norm
        self.blocks = nnx.List(blocks)

    def __call__(self, ids: jax.Array, mask: jax.Array, positions: jax.Array, token_types: jax.Array | None, *,
                 depth: int, wanted: frozenset[str]) -> dict[str, jax.Array]:  # fmt: skip
        out, keep = _keeper(wanted)
        x = self.embed(ids)
        _run_blocks(self.blocks, x, depth, wanted, keep, self.norm, mask, positions)
        return out
