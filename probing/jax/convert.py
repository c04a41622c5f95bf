"""A loaded transformers PyTorch model -> the flax nnx port of its family, through its ``state_dict``.

The weights come from the torch model transformers loaded (float32 on the CPU), so every format it
reads (safetensors, torch ``.bin``, a dequantized GGUF file) reaches JAX by the same path. One small
mapping per family names where each weight sits; a family without a port is refused before any weight
is read (`check_family`, called from `ModelBackend.load_model` right after the config is read).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from probing.errors import ConfigError

#: model_type -> the port that runs it
FAMILIES: dict[str, str] = {
    "bert": "bert",
    "roberta": "bert",
    "distilbert": "bert",
    "gpt2": "gpt2",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
}


def check_family(config: Any, name: str) -> str:
    """The port of ``config``'s family; `ConfigError` naming the supported ones for any other."""
    model_type = str(getattr(config, "model_type", "unknown"))
    port = FAMILIES.get(model_type)
    if port is None:
        raise ConfigError(
            f"model.backend=jax has no port of model type {model_type!r} ({name}); it runs "
            f"{', '.join(sorted(FAMILIES))}. Use model.backend=torch for this model."
        )
    if port == "llama":
        rope = dict(getattr(config, "rope_parameters", None) or {})
        kind = rope.get("rope_type", "default")
        if kind != "default":
            raise ConfigError(
                f"model.backend=jax ports the default rotary embedding only; {name} uses rope_type {kind!r}. "
                "Use model.backend=torch for this model."
            )
    return port


def to_jax(model: Any) -> Any:
    """The nnx port of a bare transformers model (``AutoModel``) with a copy of its weights."""
    config = model.config
    port = check_family(config, str(getattr(config, "_name_or_path", "")))
    sd = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
    return {"bert": _bert, "gpt2": _gpt2, "llama": _llama}[port](sd, config)


def _dense(sd: dict[str, np.ndarray], prefix: str, *, transpose: bool = True) -> Any:
    from probing.jax.nn import Dense

    w = sd[f"{prefix}.weight"]
    return Dense(w.T if transpose else w, sd.get(f"{prefix}.bias"))


def _ln(sd: dict[str, np.ndarray], prefix: str, eps: float) -> Any:
    from probing.jax.nn import LayerNorm

    return LayerNorm(sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], eps)


def _bert(sd: dict[str, np.ndarray], config: Any) -> Any:
    """BERT and RoBERTa (``encoder.layer.i``) or DistilBERT (``transformer.layer.i``)."""
    from probing.jax.models import Encoder, EncoderLayer
    from probing.jax.nn import Embed, activation

    distil = config.model_type == "distilbert"
    if distil:
        eps, heads, act_name, n = 1e-12, config.n_heads, config.activation, config.n_layers
        names = {"q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin", "o": "attention.out_lin",
                 "ln1": "sa_layer_norm", "inner": "ffn.lin1", "outer": "ffn.lin2", "ln2": "output_layer_norm"}
        root = "transformer.layer"
    else:
        eps, heads, act_name, n = config.layer_norm_eps, config.num_attention_heads, config.hidden_act, \
            config.num_hidden_layers
        names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                 "o": "attention.output.dense", "ln1": "attention.output.LayerNorm", "inner": "intermediate.dense",
                 "outer": "output.dense", "ln2": "output.LayerNorm"}
        root = "encoder.layer"
    act = activation(act_name, config.model_type)
    layers = []
    for i in range(n):
        p = f"{root}.{i}."
        layers.append(EncoderLayer(
            _dense(sd, p + names["q"]), _dense(sd, p + names["k"]), _dense(sd, p + names["v"]),
            _dense(sd, p + names["o"]), _ln(sd, p + names["ln1"], eps), _dense(sd, p + names["inner"]),
            _dense(sd, p + names["outer"]), _ln(sd, p + names["ln2"], eps), heads, act,
        ))  # fmt: skip
    token_type = sd.get("embeddings.token_type_embeddings.weight")
    return Encoder(
        Embed(sd["embeddings.word_embeddings.weight"]),
        Embed(sd["embeddings.position_embeddings.weight"]),
        None if token_type is None else Embed(token_type),
        _ln(sd, "embeddings.LayerNorm", eps),
        layers,
    )


def _gpt2(sd: dict[str, np.ndarray], config: Any) -> Any:
    from probing.jax.models import GPT2, GPT2Block
    from probing.jax.nn import Embed, activation

    act = activation(config.activation_function, "gpt2")
    eps, heads = config.layer_norm_epsilon, config.n_head
    head_dim = config.n_embd // heads
    blocks = []
    for i in range(config.n_layer):
        scale = head_dim**-0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale /= float(i + 1)
        p = f"h.{i}."
        blocks.append(GPT2Block(
            _ln(sd, p + "ln_1", eps), _dense(sd, p + "attn.c_attn", transpose=False),
            _dense(sd, p + "attn.c_proj", transpose=False), _ln(sd, p + "ln_2", eps),
            _dense(sd, p + "mlp.c_fc", transpose=False), _dense(sd, p + "mlp.c_proj", transpose=False),
            heads, scale, act,
        ))  # fmt: skip
    return GPT2(Embed(sd["wte.weight"]), Embed(sd["wpe.weight"]), blocks, _ln(sd, "ln_f", eps))


def sliding_windows(config: Any) -> list[int | None]:
    """Each block's sliding window: Qwen2 per ``layer_types``, Mistral ``sliding_window`` for all, else none."""
    n = config.num_hidden_layers
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if types:
        return [window if t == "sliding_attention" else None for t in types[:n]]
    return [window] * n


def _llama(sd: dict[str, np.ndarray], config: Any) -> Any:
    from probing.jax.models import Llama, LlamaBlock
    from probing.jax.nn import Embed, RMSNorm, activation

    act = activation(config.hidden_act, config.model_type)
    rope = dict(getattr(config, "rope_parameters", None) or {})
    theta = float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))
    eps = config.rms_norm_eps
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    blocks = []
    for i, window in enumerate(sliding_windows(config)):
        p = f"layers.{i}."
        blocks.append(LlamaBlock(
            RMSNorm(sd[p + "input_layernorm.weight"], eps), _dense(sd, p + "self_attn.q_proj"),
            _dense(sd, p + "self_attn.k_proj"), _dense(sd, p + "self_attn.v_proj"),
            _dense(sd, p + "self_attn.o_proj"), RMSNorm(sd[p + "post_attention_layernorm.weight"], eps),
            _dense(sd, p + "mlp.gate_proj"), _dense(sd, p + "mlp.up_proj"), _dense(sd, p + "mlp.down_proj"),
            heads, kv_heads, theta, None if window is None else int(window), act,
        ))  # fmt: skip
    return Llama(Embed(sd["embed_tokens.weight"]), blocks, RMSNorm(sd["norm.weight"], eps))
