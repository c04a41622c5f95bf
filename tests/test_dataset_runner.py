"""DatasetRunner end to end on tiny models: values, order, metadata, dataset kinds, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from reference import reference

from probing import (
    ActivationExtractor,
    DatasetRunner,
    LastTokenStrategy,
    MeanStrategy,
    ModelBackend,
    NPZStorage,
    ZarrStorage,
    open_run,
)
from probing.errors import DatasetError, RunExistsError


def run(tmp_path, model, data, *, layers=(0, -1), strategy=None, storage=None, **kw):  # type: ignore[no-untyped-def]
    extractor = ActivationExtractor(model, layers=list(layers), strategy=strategy or MeanStrategy())
    storage = storage or ZarrStorage(str(tmp_path / "out"))
    return DatasetRunner(
        data, batch_size=kw.pop("batch_size", 3), extractor=extractor, storage=storage, progress=False, **kw
    ).run()


@pytest.mark.parametrize("bucketing", [True, False])
@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_stored_values_equal_reference_in_dataset_order(tmp_path, tiny_models, sentences, family, bucketing):
    model = ModelBackend().load_model(tiny_models[family])
    data = sentences * 3
    result = run(tmp_path, model, data, strategy=LastTokenStrategy(), bucketing=bucketing)
    reader = open_run(result.path)
    assert reader.layers == ["blocks.0", "blocks.3"]
    for layer in (0, -1, "blocks.3"):
        acts = reader.activations(layer)
        assert acts.shape == (len(data), 32)
        for i, text in enumerate(data):
            want = reference(model.model, model.tokenizer, text, layer if layer != "blocks.3" else 3, "last")
            np.testing.assert_allclose(acts[i], want, atol=1e-5)
    assert list(reader.example_metadata("text")) == data
    counts = [len(model.tokenizer(t)["input_ids"]) for t in data]
    np.testing.assert_array_equal(reader.example_metadata("token_counts"), counts)


def test_metadata_records_what_the_run_was(tmp_path, tiny_models, sentences):
    model = ModelBackend().load_model(tiny_models["bert"])
    result = run(tmp_path, model, sentences, max_length=16)
    meta = open_run(result.path).metadata
    assert meta["completed"] is True
    assert meta["model"]["name_or_path"] == str(tiny_models["bert"])
    assert meta["model"]["dtype"] == "float32"
    assert meta["layers"] == ["blocks.0", "blocks.3"]
    assert meta["layer_modules"] == {"blocks.0": "encoder.layer.0", "blocks.3": "encoder.layer.3"}
    assert meta["strategy"] == {"name": "mean"}
    assert meta["max_length"] == 16
    assert meta["dataset"]["n_examples"] == len(sentences) and len(meta["dataset"]["fingerprint"]) == 16
    assert {"torch", "transformers", "lightning", "zarr"} <= set(meta["versions"])
    assert meta["storage"]["dtype"] == "float32" and meta["created"] and meta["finished"]


def test_dicts_keep_their_fields_and_hf_datasets_work(tmp_path, tiny_models, sentences):
    import datasets

    model = ModelBackend().load_model(tiny_models["distilbert"])
    records = [{"text": s, "label": i % 2, "tag": f"t{i}"} for i, s in enumerate(sentences)]
    a = open_run(run(tmp_path / "a", model, iter(records)).path)
    np.testing.assert_array_equal(a.example_metadata("label"), [i % 2 for i in range(len(sentences))])
    assert list(a.example_metadata("tag"))[:2] == ["t0", "t1"]
    b = open_run(run(tmp_path / "b", model, datasets.Dataset.from_list(records)).path)
    np.testing.assert_array_equal(a.activations(-1), b.activations(-1))
    np.testing.assert_array_equal(b.example_metadata("label"), a.example_metadata("label"))


def test_npz_storage_gives_the_same_result(tmp_path, tiny_models, sentences):
    model = ModelBackend().load_model(tiny_models["llama"])
    z = open_run(run(tmp_path / "z", model, sentences).path)
    n = open_run(run(tmp_path / "n", model, sentences, storage=NPZStorage(str(tmp_path / "npz"))).path)
    for layer in z.layers:
        np.testing.assert_array_equal(z.activations(layer), n.activations(layer))


def test_empty_dataset_is_refused_unless_allowed(tmp_path, tiny_models):
    model = ModelBackend().load_model(tiny_models["bert"])
    with pytest.raises(DatasetError, match="no examples.*allow_empty"):
        run(tmp_path, model, [])
    reader = open_run(run(tmp_path, model, [], allow_empty=True).path)
    assert reader.completed and reader.n_examples == 0
    assert reader.activations(-1).shape == (0, 32)


def test_existing_completed_run_is_refused_before_compute(tmp_path, tiny_models, sentences):
    model = ModelBackend().load_model(tiny_models["bert"])
    first = run(tmp_path, model, sentences, run_id="same")
    with pytest.raises(RunExistsError, match="never overwritten"):
        run(tmp_path, model, sentences, run_id="same")
    assert open_run(first.path).completed


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([{"txt": "a"}], "no 'text' field"),
        ([3], "expected a str"),
        ("just a string", "single string"),
    ],
)
def test_bad_datasets_are_clear_errors(tmp_path, tiny_models, data, match):
    model = ModelBackend().load_model(tiny_models["bert"])
    with pytest.raises(DatasetError, match=match):
        run(tmp_path, model, data)


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_empty_texts_are_refused_before_compute(tmp_path, tiny_models, family):
    model = ModelBackend().load_model(tiny_models[family])  # gpt2 adds no special tokens: "" has none at all
    with pytest.raises(DatasetError, match=r"empty .*text.*\[1, 3\]"):
        run(tmp_path, model, ["the cat", "", "a dog", " \t "])
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_two_runs_in_one_process_get_two_run_ids(tmp_path, tiny_models, sentences):
    """The README's quick start, twice in one Python process, into one folder."""
    model = ModelBackend().load_model(tiny_models["bert"])
    first = run(tmp_path, model, sentences)
    second = run(tmp_path, model, sentences, reuse=False)  # by default the same request is served by the first
    assert first.run_id != second.run_id and first.path != second.path
    assert open_run(first.path).completed and open_run(second.path).completed
    assert run(tmp_path, model, sentences).path == first.path  # reuse=auto: no run_id, the stored run


def test_a_stream_gives_the_same_run_as_the_dataset(tmp_path, tiny_models, sentences):
    """A datasets.IterableDataset (read once, length unknown up front) is stored like the Dataset it streams."""
    import datasets

    model = ModelBackend().load_model(tiny_models["gpt2"])
    records = [{"text": s, "label": i % 3, "ok": i % 2 == 0} for i, s in enumerate(sentences * 9)]
    whole = open_run(run(tmp_path / "a", model, datasets.Dataset.from_list(records)).path)
    streamed = run(tmp_path / "b", model, datasets.Dataset.from_list(records).to_iterable_dataset(num_shards=3))
    b = open_run(streamed.path)
    assert b.n_examples == streamed.n_examples == len(records) and b.metadata["dataset"]["streamed"]
    for layer in whole.layers:
        np.testing.assert_allclose(b.activations(layer), whole.activations(layer), atol=1e-6)
    for field in ("text", "label", "ok", "token_counts"):
        assert list(b.example_metadata(field)) == list(whole.example_metadata(field))


def test_token_level_strategies_are_not_streamed(tmp_path, tiny_models, sentences):
    import datasets

    from probing import TokensStrategy
    from probing.errors import ConfigError

    model = ModelBackend().load_model(tiny_models["bert"])
    stream = datasets.Dataset.from_list([{"text": s} for s in sentences]).to_iterable_dataset()
    with pytest.raises(ConfigError, match="placed from a first pass"):
        run(tmp_path, model, stream, strategy=TokensStrategy())


def test_a_treebank_keeps_its_own_text_and_per_word_tags(tmp_path, tiny_models):
    from probing import WordsStrategy
    from probing.data.loaders import load_conllu

    conllu = tmp_path / "t-dev.conllu"
    conllu.write_text(
        "# sent_id = a\n# text = The cat sat.\n"
        "1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_\n2\tcat\tcat\tNOUN\tNN\t_\t3\tnsubj\t_\t_\n"
        "3\tsat\tsit\tVERB\tVBD\t_\t0\troot\t_\tSpaceAfter=No\n4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_\n\n"
        "# sent_id = b\n# text = A dog ran!\n"
        "1\tA\ta\tDET\tDT\t_\t2\tdet\t_\t_\n2\tdog\tdog\tNOUN\tNN\t_\t3\tnsubj\t_\t_\n"
        "3\tran\trun\tVERB\tVBD\t_\t0\troot\t_\tSpaceAfter=No\n4\t!\t!\tPUNCT\t.\t_\t3\tpunct\t_\t_\n\n"
    )
    model = ModelBackend().load_model(tiny_models["bert"])
    result = run(tmp_path, model, load_conllu(str(conllu)), strategy=WordsStrategy(), words_field="words")
    r = open_run(result.path)
    assert list(r.example_metadata("text")) == ["The cat sat.", "A dog ran!"]  # the treebank's, not joined words
    assert list(r.example_metadata("sent_id")) == ["a", "b"]
    assert list(r.row_metadata("upos")) == ["DET", "NOUN", "VERB", "PUNCT"] * 2
    assert list(r.row_metadata("head")) == [2, 3, 0, 3] * 2 and r.row_metadata("head").dtype == np.int64
    assert list(r.row_metadata("words"))[:4] == ["The", "cat", "sat", "."]


def test_a_run_that_does_not_fit_the_disk_is_refused_before_it_starts(tmp_path, tiny_models, sentences, monkeypatch):
    import shutil
    from collections import namedtuple

    from probing.errors import ConfigError

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    model = ModelBackend().load_model(tiny_models["bert"])
    with pytest.raises(ConfigError, match=r"needs about .* free"):
        run(tmp_path, model, sentences * 50)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
