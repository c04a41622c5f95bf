"""The JAX backend: flax nnx ports of the BERT family, GPT-2 and the Llama family behind `ModelBackend`.

``ModelBackend(framework="jax")`` (CLI: ``model.backend=jax``) loads the Hugging Face folder with
transformers' PyTorch model as usual (safetensors, torch ``.bin`` and GGUF all dequantize on that one
path), then copies its ``state_dict`` into a flax nnx port of the family (`probing.jax.convert`). The
extractor runs the jitted JAX forward instead of the hooked torch forward (`probing.jax.forward`), and
everything after it (strategies, the Lightning ``predict_step``, the writer, storage, resume, probes)
is unchanged: the selected hidden states come back as torch tensors.

Why own nnx ports and not penzai: penzai's converters take no attention mask (padded batches would
be wrong), its checked Llama converter refuses the transformers-5 config of SmolLM2, and each family
here is 50-100 lines whose every site (``resid_mid``, ``attn_out``, ...) can be returned directly.

The modules are split into ``probing.jax.nn`` (primitives), ``probing.jax.models`` (the three
families), ``probing.jax.convert`` (torch ``state_dict`` -> nnx model) and ``probing.jax.forward``
(site mapping, shape buckets, jit, compile count). Nothing here imports JAX at package import time.
"""

from __future__ import annotations

from typing import Any

from probing.errors import ConfigError

INSTALL_HINT = 'pip install -e ".[jax]"  (jax[cpu] and flax)'


def require_jax() -> Any:
    """Import and return ``jax``, or raise `ConfigError` saying how to install the extra."""
    try:
        import flax  # noqa: F401
        import jax
    except ImportError as exc:
        raise ConfigError(
            f"model.backend=jax needs the optional JAX extra, which is not installed ({exc}). Install it with "
            f"{INSTALL_HINT}, or use model.backend=torch."
        ) from exc
    return jax
