"""Attention patterns (``attn_pattern.L``) against transformers' own eager ``output_attentions=True``.

The reference runs each example alone (no padding) through a fresh copy of the model loaded with
``attn_implementation="eager"``; `probing` runs padded batches (right and left) under its own hooks.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probing import ActivationExtractor, DatasetRunner, ModelBackend, TokensStrategy, ZarrStorage, open_run
from probing.attention import eager_attention, example_local_keys, weights_of
from probing.errors import ConfigError, LayerNotFoundError
from probing.strategies import MeanStrategy

CASES = [("bert", "right"), ("bert", "left"), ("gpt2", "right"), ("gpt2", "left"), ("llama", "right"),
         ("llama", "left")]  # fmt: skip
DECODERS = ("gpt2", "llama")


def reference_attentions(folder, tokenizer, text):  # type: ignore[no-untyped-def]
    """``[layers][heads, n, n]`` of one unpadded example from transformers (eager, output_attentions)."""
    from transformers import AutoModel

    model = _REFERENCE.get(folder)
    if model is None:
        model = _REFERENCE[folder] = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    enc = tokenizer(text, return_tensors="pt")
    with torch.inference_mode():
        out = model(**enc, output_attentions=True, use_cache=False)
    return [a[0].numpy() for a in out.attentions]


_REFERENCE: dict[object, torch.nn.Module] = {}


@pytest.mark.parametrize(("family", "side"), CASES)
def test_patterns_match_transformers(tiny_models, sentences, family, side):
    model = ModelBackend().load_model(tiny_models[family], padding_side=side)
    assert model.model.config._attn_implementation == "sdpa"
    extractor = ActivationExtractor(model, ["attn_pattern.*"], TokensStrategy(keep_special=True))
    batch = extractor.extract(sentences)
    assert model.model.config._attn_implementation == "sdpa", "the model is switched back after the run"
    offsets = np.concatenate([[0], np.cumsum(batch.row_counts)])
    for i, text in enumerate(sentences):
        ref = reference_attentions(tiny_models[family], model.tokenizer, text)
        n = ref[0].shape[-1]
        assert batch.row_counts[i] == n
        for layer, expected in enumerate(ref):
            rows = batch.activations[f"attn_pattern.{layer}"][offsets[i] : offsets[i + 1]]  # [n, heads, T]
            got = rows[:, :, :n].transpose(1, 0, 2)
            np.testing.assert_allclose(got, expected, atol=1e-5)
            np.testing.assert_array_equal(rows[:, :, n:], 0.0)  # keys past the example's length
            np.testing.assert_allclose(got.sum(axis=-1), 1.0, atol=1e-5)
            if family in DECODERS:
                assert np.all(np.triu(got, k=1) == 0.0), "causal: nothing above the diagonal"


def test_run_stores_patterns_beside_hidden_states(tmp_path, tiny_models, sentences):
    """A run mixing attn_pattern with a hidden-state layer: rows [heads, K], K = the longest example."""
    model = ModelBackend().load_model(tiny_models["gpt2"], padding_side="left")
    extractor = ActivationExtractor(model, ["attn_pattern.1", 1], TokensStrategy(keep_special=True))
    run = DatasetRunner(sentences, 3, extractor, ZarrStorage(str(tmp_path)), progress=False).run()
    plain = ActivationExtractor(model, [1], TokensStrategy(keep_special=True)).extract(sentences)
    with open_run(run.path) as r:
        counts = r.example_metadata("token_counts")
        heads = model.model.config.num_attention_heads
        assert r.array("attn_pattern.1").shape == (int(counts.sum()), heads, int(counts.max()))
        for i, text in enumerate(sentences):
            expected = reference_attentions(tiny_models["gpt2"], model.tokenizer, text)[1]
            np.testing.assert_allclose(r.attention(1, i), expected, atol=1e-5)
            np.testing.assert_allclose(r.attention("attn_pattern.1", i), expected, atol=1e-5)
        np.testing.assert_allclose(r.activations("blocks.1"), plain.activations["blocks.1"], atol=1e-5)
        assert r.metadata["attention"] == {"layers": ["attn_pattern.1"], "implementation": "eager"}
        with pytest.raises(LayerNotFoundError, match="not an attention-pattern layer"):
            r.attention("blocks.1", 0)


def test_pooled_strategy_is_refused(tiny_models):
    model = ModelBackend().load_model(tiny_models["bert"])
    with pytest.raises(ConfigError, match="strategy=tokens"):
        ActivationExtractor(model, ["attn_pattern.0"], MeanStrategy())


def test_unmapped_and_weightless_models_are_refused(tiny_models):
    with pytest.raises(ConfigError, match="cannot switch to eager"), eager_attention(torch.nn.Linear(2, 2)):
        pass
    with pytest.raises(ConfigError, match="returned no attention weights"):
        weights_of((torch.zeros(1, 2, 3), None), "h.0.attn")
    model = ModelBackend().load_model(tiny_models["bert"])
    with pytest.raises(LayerNotFoundError, match="out of range"):
        ActivationExtractor(model, ["attn_pattern.9"], TokensStrategy(keep_special=True))


def test_example_local_keys_left_padding():
    """Keys are reordered to the example's own tokens (a closed form: pad columns removed, zeros after)."""
    weights = torch.arange(2 * 1 * 3 * 3, dtype=torch.float32).reshape(2, 1, 3, 3)
    mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    local = example_local_keys(weights, mask)
    expected = np.concatenate([weights[0, 0][:, [1, 2]].numpy(), np.zeros((3, 1))], axis=1)
    np.testing.assert_array_equal(local[0, 0].numpy(), expected)
    np.testing.assert_array_equal(local[1].numpy(), weights[1].numpy())
