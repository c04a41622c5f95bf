"""Token-level runs: every token (`tokens`) or every word (`words`) against plain transformers, stored ragged."""

from __future__ import annotations

import numpy as np
import pytest
from reference import encoded_hidden_states, hidden_states

from probing import (
    ActivationExtractor,
    DatasetRunner,
    HDF5Storage,
    ModelBackend,
    NPZStorage,
    TokensStrategy,
    WordsStrategy,
    ZarrStorage,
    open_run,
)
from probing.errors import ConfigError

CASES = [("bert", "right"), ("distilbert", "right"), ("gpt2", "left"), ("llama", "right")]


def token_reference(model, text, layer, keep_special):  # type: ignore[no-untyped-def]
    states = hidden_states(model.model, model.tokenizer, text)[layer + 1]
    special = np.asarray(model.tokenizer(text, return_special_tokens_mask=True)["special_tokens_mask"], bool)
    return states if keep_special else states[~special]


def word_reference(model, words, layer, pool):  # type: ignore[no-untyped-def]
    """Per-word vectors of one unpadded example from plain ``output_hidden_states`` (no final norm)."""
    enc = model.tokenizer(words, is_split_into_words=True, return_tensors="pt")
    h = encoded_hidden_states(model.model, enc)[layer + 1]
    wids = enc.word_ids(0)
    out = []
    for w in range(len(words)):
        pos = [i for i, x in enumerate(wids) if x == w]
        if not pos:
            continue
        rows = h[pos]
        out.append({"first": rows[0], "last": rows[-1], "mean": rows.mean(0)}[pool])
    return np.stack(out)


@pytest.mark.parametrize(("family", "side"), CASES)
@pytest.mark.parametrize("keep_special", [False, True])
def test_tokens_match_reference(tiny_models, sentences, family, side, keep_special):
    model = ModelBackend().load_model(tiny_models[family], padding_side=side)
    batch = ActivationExtractor(model, layers=[0, 3], strategy=TokensStrategy(keep_special)).extract(sentences)
    offsets = np.concatenate([[0], np.cumsum(batch.row_counts)])
    for i, text in enumerate(sentences):
        for key, layer in (("blocks.0", 0), ("blocks.3", 3)):
            got = batch.activations[key][offsets[i] : offsets[i + 1]]
            np.testing.assert_allclose(got, token_reference(model, text, layer, keep_special), atol=1e-5)


@pytest.mark.parametrize(("family", "side"), CASES)
@pytest.mark.parametrize("pool", ["first", "last", "mean"])
def test_words_match_reference(tmp_path, tiny_models, sentences, family, side, pool):
    model = ModelBackend().load_model(tiny_models[family], padding_side=side)
    data = [{"words": s.split(), "tags": [f"T{len(w)}" for w in s.split()]} for s in sentences]
    extractor = ActivationExtractor(model, layers=[1, -1], strategy=WordsStrategy(pool))
    run = DatasetRunner(data, 3, extractor, ZarrStorage(str(tmp_path)), words_field="words", progress=False).run()
    r = open_run(run.path)
    assert r.mode == "words"
    np.testing.assert_array_equal(np.diff(r.offsets), [len(d["words"]) for d in data])
    assert list(r.row_metadata("tags")) == [t for d in data for t in d["tags"]]
    assert list(r.row_metadata("words")) == [w for d in data for w in d["words"]]
    np.testing.assert_array_equal(r.row_metadata("word_index"), [i for d in data for i in range(len(d["words"]))])
    for i, d in enumerate(data):
        np.testing.assert_allclose(r.rows_of(-1, i), word_reference(model, d["words"], 3, pool), atol=1e-5)
        np.testing.assert_allclose(r.rows_of(1, i), word_reference(model, d["words"], 1, pool), atol=1e-5)


def test_words_strategy_needs_words(tmp_path, tiny_models, sentences):
    model = ModelBackend().load_model(tiny_models["bert"])
    extractor = ActivationExtractor(model, layers=[0], strategy=WordsStrategy())
    with pytest.raises(ConfigError, match="pre-split"):
        DatasetRunner(sentences, 3, extractor, ZarrStorage(str(tmp_path)))


STORES = {
    "zarr": lambda root, dtype: ZarrStorage(root, dtype=dtype, chunk_rows=5),
    "hdf5": lambda root, dtype: HDF5Storage(root, dtype=dtype, chunk_rows=5),
    "npz": lambda root, dtype: NPZStorage(root, dtype=dtype),
}


@pytest.mark.parametrize("backend", sorted(STORES))
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("mode", ["pooled", "tokens"])
def test_every_backend_dtype_and_mode_round_trips(tmp_path, tiny_models, sentences, backend, dtype, mode):
    from probing import MeanStrategy

    model = ModelBackend().load_model(tiny_models["gpt2"])
    strategy = MeanStrategy() if mode == "pooled" else TokensStrategy()
    data = [{"text": s, "label": f"ünï-{i % 3}"} for i, s in enumerate(sentences * 2)]
    extractor = ActivationExtractor(model, layers=["embeddings", -1], strategy=strategy)
    direct = extractor.extract([d["text"] for d in data])
    run = DatasetRunner(data, 3, extractor, STORES[backend](str(tmp_path), dtype), progress=False).run()
    r = open_run(run.path)
    assert r.mode == mode and r.n_examples == len(data)
    for key in ("embeddings", "blocks.3"):
        got = r.activations(key)
        assert got.dtype == np.dtype(dtype)
        tol = 1e-5 if dtype == "float32" else 1e-3
        np.testing.assert_allclose(got, direct.activations[key].astype(dtype), atol=tol, rtol=tol)
        batches = list(r.iter_batches(key, 4))
        np.testing.assert_array_equal(np.concatenate(batches), got)
    assert list(r.example_metadata("label")) == [d["label"] for d in data]
    ds = r.torch_dataset()
    assert len(ds) == len(data)
    item = ds[5]
    offs = r.offsets
    np.testing.assert_array_equal(
        item["blocks.3"].numpy(),
        r.activations(-1)[offs[5] : offs[6]].squeeze(0) if mode == "pooled" else r.activations(-1)[offs[5] : offs[6]],
    )
    xa = r.to_xarray()
    assert xa.dims == ("layer", "example" if mode == "pooled" else "row", "hidden")
    assert list(xa.coords["layer"].values) == ["embeddings", "blocks.3"]
    if mode == "pooled":
        assert list(xa.coords["label"].values) == [d["label"] for d in data]
    else:  # token-level runs store each row's token as a string beside its id
        ids = r.row_metadata("token_id")
        assert list(r.row_metadata("token")) == model.tokenizer.convert_ids_to_tokens(ids.tolist())
        assert "token" in xa.coords
