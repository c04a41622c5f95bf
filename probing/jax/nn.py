"""Primitives of the JAX ports: dense, norms, embeddings, masked attention, rotary positions.

Every matmul runs at ``Precision.HIGHEST``: on an accelerator the default would use TF32/bf16 passes
and the float32 results would drift from PyTorch's by more than the 1e-5 the backend promises.
Masked attention scores are replaced (not offset) by the float32 minimum, so a fully masked row
(a padding row added to fill a shape bucket) gives a uniform softmax, never NaN.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from probing.errors import ConfigError

HIGHEST = jax.lax.Precision.HIGHEST

#: transformers' activation names -> JAX functions (exact GELU vs its tanh approximation matters at 1e-5)
ACTIVATIONS: dict[str, Any] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


def activation(name: str, model_type: str) -> Any:
    """The JAX function of transformers' activation ``name``; `ConfigError` for one the ports lack."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ConfigError(
            f"model.backend=jax: activation {name!r} of this {model_type} model is not ported (ported: "
            f"{', '.join(sorted(ACTIVATIONS))}). Use model.backend=torch."
        ) from None


def _param(array: Any) -> nnx.Param:
    return nnx.Param(jnp.asarray(np.asarray(array, dtype=np.float32)))


class Dense(nnx.Module):
    """``x @ kernel + bias`` with ``kernel`` stored ``[in, out]`` (a torch Linear's weight transposed)."""

    def __init__(self, kernel: Any, bias: Any | None = None) -> None:
        self.kernel = _param(kernel)
        self.bias = _param(bias) if bias is not None else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.matmul(x, self.kernel.value, precision=HIGHEST)
        return y if self.bias is None else y + self.bias.value


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis with the biased variance, as torch computes it."""

    def __init__(self, weight: Any, bias: Any, eps: float) -> None:
        self.weight = _param(weight)
        self.bias = _param(bias)
        self.eps = float(eps)

    def __call__(self, x: jax.Array) -> jax.Array:
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.weight.value + self.bias.value


class RMSNorm(nnx.Module):
    """Llama's RMSNorm: ``weight * x / sqrt(mean(x^2) + eps)``."""

    def __init__(self, weight: Any, eps: float) -> None:
        self.weight = _param(weight)
        self.eps = float(eps)

    def __call__(self, x: jax.Array) -> jax.Array:
        var = jnp.square(x).mean(-1, keepdims=True)
        return self.weight.value * (x * jax.lax.rsqrt(var + self.eps))


class Embed(nnx.Module):
    """A lookup table; indices outside it are clipped (they only occur at masked padding positions)."""

    def __init__(self, table: Any) -> None:
        self.table = _param(table)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.table.value, ids, axis=0, mode="clip")


def attention(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array, scale: float) -> jax.Array:
    """Scaled dot-product attention. ``q`` is ``[B, T, H, D]``, ``k``/``v`` ``[B, T, KV, D]`` (grouped-query
    attention: KV divides H, each key-value head serves ``H // KV`` consecutive query heads, as
    transformers' ``repeat_kv``); ``allowed`` broadcasts to ``[B, H, Tq, Tk]``. Returns ``[B, T, H * D]``."""
    groups = q.shape[2] // k.shape[2]
    if groups > 1:
        k = jnp.repeat(k, groups, axis=2)
        v = jnp.repeat(v, groups, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=HIGHEST) * scale
    scores = jnp.where(allowed, scores, jnp.finfo(scores.dtype).min)
    weights = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=HIGHEST)
    return out.reshape(*out.shape[:2], -1)


def padding_mask(mask: jax.Array) -> jax.Array:
    """Keys an encoder token may attend to: every non-padding token, ``[B, 1, 1, T]``."""
    return mask[:, None, None, :].astype(bool)


def causal_mask(mask: jax.Array, window: int | None = None) -> jax.Array:
    """Keys a decoder token may attend to: non-padding, not later, and (sliding window) ``q - k < window``;
    indices are positions in the padded row, as in transformers' masks. ``[B, 1, T, T]``."""
    t = mask.shape[1]
    q = jnp.arange(t)[:, None]
    k = jnp.arange(t)[None, :]
    allowed = k <= q
    if window is not None:
        allowed = allowed & (q - k < window)
    return allowed[None, None] & mask[:, None, None, :].astype(bool)


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary position embedding (transformers' default rope: halves rotated, not interleaved) of ``x``
    ``[B, T, H, D]`` at ``positions`` ``[B, T]``."""
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    freqs = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, D/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb), jnp.sin(emb)
    half = d // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin
