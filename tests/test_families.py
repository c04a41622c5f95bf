"""Every family against transformers: one unpadded example, token by token, atol 1e-5 in float32.

The reference is computed here, independently of `probing`: the model object the test built (not the
one `ModelBackend` loads back), the tokenizer object the test built (not the one loaded back), plain
``output_hidden_states`` and forward hooks written in this file on module paths spelled out below.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from family_zoo import FAMILIES, build, tokenizer

from probing import ActivationExtractor, ModelBackend, TokensStrategy

TEXT = "the very big red bird flew quickly over the small green tree"
ATOL = 1e-5

#: where each family keeps its blocks and its final norm, written out here (not taken from probing)
BLOCKS = {
    "bert": "encoder.layer", "distilbert": "transformer.layer", "roberta": "encoder.layer",
    "electra": "encoder.layer", "modernbert": "layers", "t5": "encoder.block", "gpt2": "h",
    "gpt_neox": "layers", "llama": "layers", "mistral": "layers", "qwen2": "layers", "qwen3": "layers",
    "gemma2": "layers", "gemma3_text": "layers", "phi3": "layers", "opt": "decoder.layers",
}  # fmt: skip
FINAL_NORM = {
    "modernbert": "final_norm", "t5": "encoder.final_layer_norm", "gpt2": "ln_f", "gpt_neox": "final_layer_norm",
    "llama": "norm", "mistral": "norm", "qwen2": "norm", "qwen3": "norm", "gemma2": "norm", "gemma3_text": "norm",
    "phi3": "norm", "opt": "decoder.final_layer_norm",
}  # fmt: skip


class Family:
    """One family's folder, the objects the test built, and (once loaded) the backend model."""

    def __init__(self, name: str, folder: Path, tokenizer: Any, model: torch.nn.Module) -> None:
        self.name, self.folder, self.tokenizer, self.model = name, folder, tokenizer, model
        self._loaded: Any = None

    @property
    def loaded(self) -> Any:
        if self._loaded is None:
            self._loaded = ModelBackend().load_model(self.folder)
        return self._loaded

    def encoded(self, text: str = TEXT) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer(text, return_tensors="pt"))

    def module(self, path: str) -> torch.nn.Module:
        return dict(self.model.named_modules())[path]


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Family]:
    root = tmp_path_factory.mktemp("family_zoo")
    return {f: Family(f, *build(f, root / f)) for f in FAMILIES}


def run_reference(
    fam: Family, hooks: dict[str, tuple[str, str]] | None = None
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """hidden_states of the test's own model on the test's own tokens, and what hooks saw:
    ``hooks[key] = (module path, "input" | "output")``."""
    seen: dict[str, np.ndarray] = {}
    handles = []

    def tensor(x: Any) -> torch.Tensor:
        return x if isinstance(x, torch.Tensor) else x[0]

    for key, (path, where) in (hooks or {}).items():
        mod = fam.module(path)
        if where == "input":
            handles.append(
                mod.register_forward_pre_hook(
                    lambda m, a, kw, key=key: seen.__setitem__(
                        key, tensor(a[0] if a else kw["hidden_states"])[0].numpy().copy()
                    ),
                    with_kwargs=True,
                )
            )
        else:
            handles.append(
                mod.register_forward_hook(lambda m, a, o, key=key: seen.__setitem__(key, tensor(o)[0].numpy().copy()))
            )
    try:
        with torch.no_grad():
            out = fam.model(**fam.encoded(), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return [h[0].numpy() for h in out.hidden_states], seen


def extract(fam: Family, layers: list[Any]) -> dict[str, np.ndarray]:
    """`probing`'s token rows of TEXT (special tokens kept), through the backend's own tokenizer."""
    ex = ActivationExtractor(fam.loaded, layers=layers, strategy=TokensStrategy(keep_special=True))
    return ex.extract([TEXT]).activations


@pytest.mark.parametrize("family", FAMILIES)
def test_backend_tokenizes_as_saved(zoo, family):
    """The Qwen2 4e-2 of issue 16: transformers 5 swapped the saved tokenizer for Qwen2Tokenizer."""
    fam = zoo[family]
    want = fam.tokenizer(TEXT)["input_ids"]
    assert fam.loaded.tokenizer(TEXT)["input_ids"] == want
    assert fam.tokenizer.unk_token_id not in want


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_match_hidden_states(zoo, family):
    fam = zoo[family]
    states, seen = run_reference(fam, {"last": (f"{BLOCKS[family]}.{len(fam.module(BLOCKS[family])) - 1}", "output")})
    n = len(states) - 1
    got = extract(fam, ["all"])
    np.testing.assert_allclose(got["embeddings"], states[0], atol=ATOL, err_msg=f"{family} embeddings")
    for i in range(n - 1):
        np.testing.assert_allclose(got[f"blocks.{i}"], states[i + 1], atol=ATOL, err_msg=f"{family} block {i}")
    # the last entry of hidden_states has the final norm applied where the family has one
    want_last = seen["last"] if family in FINAL_NORM else states[n]
    np.testing.assert_allclose(got[f"blocks.{n - 1}"], want_last, atol=ATOL, err_msg=f"{family} last block")


def test_t5_encoder_loads_alone(zoo):
    loaded = zoo["t5"].loaded
    assert type(loaded.model).__name__ == "T5EncoderModel"  # not T5Model with a random decoder
    rows = ActivationExtractor(loaded, layers=[-1], strategy=TokensStrategy(keep_special=True), early_stop=False)
    assert rows.extract([TEXT]).activations["blocks.1"].shape[1] == 32


def test_other_encoder_decoder_models_are_refused(tmp_path):
    import transformers as tf

    from probing.errors import ModelLoadError

    cfg = tf.BartConfig(
        vocab_size=50,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        max_position_embeddings=32,
    )
    tf.BartModel(cfg).save_pretrained(tmp_path)
    tokenizer("encoder").save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="encoder-decoder model \\(bart\\).*encoder of mt5, t5, umt5"):
        ModelBackend().load_model(tmp_path)


#: post-norm families: the norms that follow the attention and the MLP sublayers, per block (test's own list)
POST_NORMS = {
    "bert": ("attention.output.LayerNorm", "output.LayerNorm"),
    "roberta": ("attention.output.LayerNorm", "output.LayerNorm"),
    "electra": ("attention.output.LayerNorm", "output.LayerNorm"),
    "distilbert": ("sa_layer_norm", "output_layer_norm"),
}
PARALLEL = {"gpt_neox"}  # attention and MLP read the same stream and both add to it
SITES_OF_ALL = ["resid_pre.*", "resid_mid.*", "resid_post.*", "attn_out.*", "mlp_out.*", "final"]


def site_differences(fam: Family) -> dict[str, float]:
    """Max abs difference of each site (over blocks and tokens) from the reference relation it must meet."""
    name = fam.name
    block_list = BLOCKS[name]
    n = len(fam.module(block_list))
    states, seen = run_reference(fam, {"last": (f"{block_list}.{n - 1}", "output")})
    sites = SITES_OF_ALL if name not in PARALLEL else [s for s in SITES_OF_ALL if s != "resid_mid.*"]
    got = extract(fam, sites)

    def g(site: str, i: int) -> np.ndarray:
        return got[
            "embeddings" if site == "resid_pre" and i == 0 else ("blocks" if site == "resid_post" else site) + f".{i}"
        ]

    diff: dict[str, float] = {}

    def record(site: str, a: np.ndarray, b: np.ndarray) -> None:
        diff[site] = max(diff.get(site, 0.0), float(np.abs(a - b).max()))

    for i in range(n):
        record("resid_pre", g("resid_pre", i), states[i])
        record("resid_post", g("resid_post", i), states[i + 1] if i < n - 1 or name not in FINAL_NORM else seen["last"])
        pre, attn, mlp, post = (g(s, i) for s in ("resid_pre", "attn_out", "mlp_out", "resid_post"))
        if name in PARALLEL:
            record("attn_out+mlp_out", post, pre + attn + mlp)
            continue
        mid = g("resid_mid", i)
        if name in POST_NORMS:
            ln_attn, ln_mlp = (fam.module(f"{block_list}.{i}.{p}") for p in POST_NORMS[name])
            with torch.no_grad():
                record("attn_out", mid, ln_attn(torch.from_numpy(pre + attn)).numpy())
                record("mlp_out", post, ln_mlp(torch.from_numpy(mid + mlp)).numpy())
        else:
            record("attn_out", mid, pre + attn)
            record("mlp_out", post, mid + mlp)
    record("final", got["final"], states[-1])
    return diff


@pytest.mark.parametrize("family", FAMILIES)
def test_sites_match_transformers(zoo, family):
    """resid_pre/resid_post/final against hidden_states; attn_out/mlp_out/resid_mid by the residual sums
    (pre-norm), or through the family's own post-attention / output norms (post-norm)."""
    diff = site_differences(zoo[family])
    assert {"resid_pre", "resid_post", "final"} <= set(diff)
    bad = {k: v for k, v in diff.items() if not v <= ATOL}
    assert not bad, f"{family}: {bad}"


def test_site_selectors_mix_with_indices_and_globs(zoo):
    from probing.layers import resolve_layers

    model = zoo["llama"].loaded.model
    got = resolve_layers(model, [1, "resid_mid.1", "mlp_out.*", "resid_post.-1", "resid_pre.0", "layers.*.mlp"])
    assert [(r.key, r.module_name, r.capture) for r in got] == [
        ("blocks.1", "layers.1", "output"),
        ("resid_mid.1", "layers.1.post_attention_layernorm", "input"),
        ("mlp_out.0", "layers.0.mlp", "output"),
        ("mlp_out.1", "layers.1.mlp", "output"),
        ("embeddings", "layers.0", "input"),
        ("layers.0.mlp", "layers.0.mlp", "output"),  # a glob keeps module names as keys
        ("layers.1.mlp", "layers.1.mlp", "output"),
    ]
    assert [r.key for r in resolve_layers(model, ["layers.?"])] == ["blocks.0", "blocks.1"]


@pytest.mark.parametrize(
    ("family", "selector", "match"),
    [
        ("llama", "mlp_out.2", r"block 2 is out of range.*-2\.\.1"),
        ("llama", "layers.*.mpl", r"No module name .* matches 'layers\.\*\.mpl'.*layers\.\*\.self_attn"),
        ("gpt_neox", "resid_mid.0", "in parallel"),
    ],
)
def test_bad_sites_fail_before_compute(zoo, family, selector, match):
    from probing.errors import LayerNotFoundError

    with pytest.raises(LayerNotFoundError, match=match):
        ActivationExtractor(zoo[family].loaded, layers=[selector])


def test_unknown_family_says_how_to_select_by_name(zoo, monkeypatch):
    from probing.errors import LayerNotFoundError
    from probing.sites import FAMILY_SITES

    monkeypatch.delitem(FAMILY_SITES, "llama")
    loaded = zoo["llama"].loaded
    with pytest.raises(LayerNotFoundError, match=r"not mapped for model type 'llama'.*layers=\['layers\.3\.mlp'\]"):
        ActivationExtractor(loaded, layers=["attn_out.0"])
    # block-level sites and the final norm (found by name) still work for any family
    keys = ActivationExtractor(loaded, layers=["resid_pre.1", "resid_post.0", "final"]).layer_keys
    assert keys == ["resid_pre.1", "blocks.0", "final"]


def test_layers_command_lists_the_sites(zoo, capsys):
    from probing.hooks import layers_main

    assert layers_main([str(zoo["gemma2"].folder)]) == 0
    out = capsys.readouterr().out
    assert "resid_mid.L   layers.L.pre_feedforward_layernorm (input)" in out
    assert "attn_out.L    layers.L.post_attention_layernorm (output)" in out
    assert "final         norm (output)" in out


def test_site_index_out_of_range_fails_in_preflight_before_loading():
    from probing.errors import LayerNotFoundError
    from probing.preflight import ModelFacts, check_layers

    facts = ModelFacts("llama", 4, True)
    check_layers(["resid_mid.3", "mlp_out.*", "final", "model.layers.*.mlp"], facts)
    with pytest.raises(LayerNotFoundError, match="Layer index 4 is out of range"):
        check_layers(["attn_out.4"], facts)
