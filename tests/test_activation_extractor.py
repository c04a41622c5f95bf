"""ActivationExtractor against plain transformers, for every family, strategy and padding side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from reference import reference

from probing import (
    ActivationExtractor,
    CLSStrategy,
    CustomStrategy,
    LastTokenStrategy,
    MaxStrategy,
    MeanStrategy,
    ModelBackend,
)
from probing.errors import ConfigError, LayerNotFoundError

STRATEGIES = {"mean": MeanStrategy, "max": MaxStrategy, "last": LastTokenStrategy, "cls": CLSStrategy}
CASES = [
    ("bert", "right"),
    ("distilbert", "right"),
    ("gpt2", "right"),
    ("gpt2", "left"),
    ("llama", "right"),
    ("llama", "left"),
]


def load(tiny_models: dict[str, Path], family: str, padding_side: str = "right"):  # type: ignore[no-untyped-def]
    return ModelBackend().load_model(tiny_models[family], padding_side=padding_side)


@pytest.mark.parametrize(("family", "side"), CASES)
@pytest.mark.parametrize("strategy", ["mean", "max", "last", "cls"])
def test_strategies_match_unpadded_reference(tiny_models, sentences, family, side, strategy):
    model = load(tiny_models, family, side)
    if strategy == "cls" and model.is_decoder:
        pytest.skip("cls is refused for decoders (tested below)")
    layers = ["embeddings", 0, 2, -1]
    extractor = ActivationExtractor(model, layers=layers, strategy=STRATEGIES[strategy]())
    batch = extractor.extract(sentences)  # one mixed-length, padded batch
    assert extractor.layer_keys == ["embeddings", "blocks.0", "blocks.2", "blocks.3"]
    for key, layer in zip(extractor.layer_keys, layers, strict=True):
        got = batch.activations[key]
        assert got.shape == (len(sentences), 32)
        for i, text in enumerate(sentences):
            want = reference(model.model, model.tokenizer, text, layer, strategy)
            np.testing.assert_allclose(got[i], want, atol=1e-5, err_msg=f"{family}/{side} {key} example {i}")


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_result_does_not_depend_on_batch_neighbours(tiny_models, sentences, family):
    model = load(tiny_models, family, "left" if family != "bert" else "right")
    extractor = ActivationExtractor(model, layers=[1, -1], strategy=LastTokenStrategy())
    together = extractor.extract(sentences).activations["blocks.3"]
    alone = np.stack([extractor.extract([s]).activations["blocks.3"][0] for s in sentences])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_cls_with_pooler_equals_pooler_output(tiny_models, sentences):
    model = load(tiny_models, "bert")
    extractor = ActivationExtractor(model, layers=[-1], strategy=CLSStrategy(use_pooler=True))
    got = extractor.extract(sentences).activations["blocks.3"]
    for i, s in enumerate(sentences):
        enc = model.tokenizer(s, return_tensors="pt")
        with torch.no_grad():
            want = model.model(**enc).pooler_output[0].numpy()
        np.testing.assert_allclose(got[i], want, atol=1e-5)


def test_cls_pooler_falls_back_to_first_token_without_pooler(tiny_models, sentences):
    model = load(tiny_models, "distilbert")
    with pytest.warns(UserWarning, match="no pooler"):
        extractor = ActivationExtractor(model, layers=[-1], strategy=CLSStrategy(use_pooler=True))
    got = extractor.extract(sentences[:3]).activations["blocks.3"]
    for i, s in enumerate(sentences[:3]):
        np.testing.assert_allclose(got[i], reference(model.model, model.tokenizer, s, -1, "cls"), atol=1e-5)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_cls_is_refused_for_decoders(tiny_models, family):
    with pytest.raises(ConfigError, match="last"):
        ActivationExtractor(load(tiny_models, family), layers=[-1], strategy=CLSStrategy())


def test_custom_strategy_gets_unpadded_tokens(tiny_models, sentences):
    model = load(tiny_models, "gpt2", "left")
    seen: list[int] = []

    def first_plus_last(tokens: np.ndarray) -> np.ndarray:
        seen.append(tokens.shape[0])
        return np.concatenate([tokens[0], tokens[-1]])

    extractor = ActivationExtractor(model, layers=[2], strategy=CustomStrategy(first_plus_last))
    got = extractor.extract(sentences).activations["blocks.2"]
    assert got.shape == (len(sentences), 64)
    assert seen == [len(model.tokenizer(s)["input_ids"]) for s in sentences]
    for i, s in enumerate(sentences):
        want = np.concatenate(
            [
                reference(model.model, model.tokenizer, s, 2, "cls"),
                reference(model.model, model.tokenizer, s, 2, "last"),
            ]
        )
        np.testing.assert_allclose(got[i], want, atol=1e-5)


def test_selection_by_index_name_and_module_agree(tiny_models, sentences):
    model = load(tiny_models, "bert")
    block = model.model.encoder.layer[1]
    by_index = ActivationExtractor(model, layers=[1, -3])
    by_name = ActivationExtractor(model, layers=["encoder.layer.1"])
    by_module = ActivationExtractor(model, layers=[block])
    assert by_index.layer_keys == ["blocks.1"]  # 1 and -3 are the same block: kept once
    a = by_index.extract(sentences).activations["blocks.1"]
    np.testing.assert_array_equal(a, by_name.extract(sentences).activations["blocks.1"])
    np.testing.assert_array_equal(a, by_module.extract(sentences).activations["blocks.1"])


def test_submodule_by_name_is_captured(tiny_models, sentences):
    model = load(tiny_models, "bert")
    extractor = ActivationExtractor(model, layers=["encoder.layer.0.attention.output"], strategy=MeanStrategy())
    out = extractor.extract(sentences[:2]).activations["encoder.layer.0.attention.output"]
    assert out.shape == (2, 32)


def test_layer_ranges_and_all(tiny_models):
    model = load(tiny_models, "llama")
    assert ActivationExtractor(model, layers="all").layer_keys == ["embeddings"] + [f"blocks.{i}" for i in range(4)]
    assert ActivationExtractor(model, layers="0:4:2").layer_keys == ["blocks.0", "blocks.2"]
    assert ActivationExtractor(model, layers=["1", "-1"]).layer_keys == ["blocks.1", "blocks.3"]


@pytest.mark.parametrize(
    ("layers", "match"),
    [
        ([4], r"out of range.*-4\.\.3"),
        ([-5], "out of range"),
        (["encoder.layr.1"], "Did you mean.*encoder.layer.1"),
        (["nonsense"], "No module named"),
        ([torch.nn.Linear(2, 2)], "not part of"),
        ([], "No layers"),
    ],
)
def test_bad_layers_fail_before_compute(tiny_models, layers, match):
    model = load(tiny_models, "bert")
    calls = []
    handle = model.model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(LayerNotFoundError, match=match):
            ActivationExtractor(model, layers=layers)
    finally:
        handle.remove()
    assert calls == []


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_hooks_removed_after_use_and_on_error(tiny_models, sentences):
    model = load(tiny_models, "bert")
    extractor = ActivationExtractor(model, layers=["embeddings", 0, -1])
    before = _hook_count(model.model)
    with extractor.hooks():
        assert _hook_count(model.model) == before + 3
    assert _hook_count(model.model) == before
    extractor.extract(sentences)
    assert _hook_count(model.model) == before

    def boom(*args):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    h = model.model.encoder.layer[1].register_forward_pre_hook(boom)
    with pytest.raises(RuntimeError, match="boom"):
        extractor.extract(sentences)
    h.remove()
    assert _hook_count(model.model) == before


@pytest.mark.parametrize("family", ["bert", "distilbert", "gpt2", "llama"])
def test_early_stop_skips_deeper_blocks(tiny_models, sentences, family):
    model = load(tiny_models, family)
    from probing.layers import find_block_list

    _, blocks = find_block_list(model.model)
    ran: list[int] = []
    handles = [b.register_forward_pre_hook(lambda m, a, i=i: ran.append(i)) for i, b in enumerate(blocks)]
    try:
        ActivationExtractor(model, layers=[1, "embeddings"]).extract(sentences)
        assert ran == [0, 1]
        ran.clear()
        ActivationExtractor(model, layers=[1], early_stop=False).extract(sentences)
        assert ran == [0, 1, 2, 3]
    finally:
        for h in handles:
            h.remove()
