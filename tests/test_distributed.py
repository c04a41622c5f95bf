"""DDP from the CLI (2 CPU processes, gloo): exactly N rows in dataset order, equal to one process."""

from __future__ import annotations

import numpy as np
import pytest
from cli_helpers import cli

from probing import ActivationExtractor, DatasetRunner, MeanStrategy, ModelBackend, ZarrStorage, open_run
from probing.data.builtin import generate

pytestmark = pytest.mark.slow
DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]


def single_process(model_dir, n, tmp_path):  # type: ignore[no-untyped-def]
    model = ModelBackend().load_model(model_dir)
    extractor = ActivationExtractor(model, layers="all", strategy=MeanStrategy())
    storage = ZarrStorage(str(tmp_path / "single"), chunk_rows=8)
    runner = DatasetRunner(generate(n), 4, extractor, storage, max_length=128, progress=False, allow_empty=n == 0)
    return open_run(runner.run().path)


@pytest.mark.parametrize("n", [0, 1, 7, 101])
def test_two_ranks_equal_one(tmp_path, tiny_models, n):
    ref = single_process(tiny_models["bert"], n, tmp_path)
    proc = cli(
        f"model.name_or_path={tiny_models['bert']}",
        "data=generated",  # the sentences single_process ran
        f"data.limit={n}",
        "data.batch_size=4",
        "storage.chunk_rows=8",
        "progress=false",
        "output_dir=out",
        "run_id=ddp",
        f"data.allow_empty={n == 0}",
        *DDP,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = open_run(tmp_path / "out" / "ddp")
    assert got.metadata["stats"]["world_size"] == 2
    assert got.layers == ref.layers
    for layer in ref.layers:
        a = got.activations(layer)
        assert a.shape == (n, 32)
        np.testing.assert_allclose(a, ref.activations(layer), atol=1e-5)
    assert list(got.example_metadata("text")) == [r["text"] for r in generate(n)]
    parts = got.metadata["stats"]["parts"]
    assert sum(p["rows_stored"] for p in parts.values()) == n
    # each rank tokenized its own contiguous share only: W ranks do the tokenizer work once, not W times
    tokenized = [parts[f"a000-r{r:05d}"]["tokenized"] for r in range(2)]
    assert tokenized == [n // 2, n - n // 2]


def test_a_stream_on_two_ranks_equals_the_dataset_on_one(tmp_path, tiny_models):
    import json

    n = 900  # a stream is dealt to the ranks in blocks of one bucketing window (400 examples here)
    rows = [{"text": r["text"], "tense": r["tense"]} for r in generate(n)]
    data = tmp_path / "texts.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    common = [f"model.name_or_path={tiny_models['bert']}", "data=files", f"data.path={data}", "data.batch_size=4",
              "storage.chunk_rows=8", "progress=false", "output_dir=out", "probe_after_extract=false"]
    one = cli(*common, "run_id=one", cwd=tmp_path)
    two = cli(*common, "data.streaming=true", "run_id=two", *DDP, cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = open_run(tmp_path / "out" / "one"), open_run(tmp_path / "out" / "two")
    assert b.metadata["dataset"]["streamed"] and b.n_examples == n
    for layer in a.layers:
        np.testing.assert_allclose(b.activations(layer), a.activations(layer), atol=1e-5)
    assert list(b.example_metadata("text")) == [r["text"] for r in rows]
    assert list(b.example_metadata("tense")) == [r["tense"] for r in rows]
    parts = b.metadata["stats"]["parts"]
    assert sorted(p["tokenized"] for p in parts.values()) == [400, n - 400]  # blocks 0 and 2 on rank 0, 1 on rank 1


def test_word_level_run_on_two_ranks_equals_one(tmp_path, tiny_models):
    import json

    rows = [
        {"words": f"the cat sat on mat {i}".split()[: 2 + i % 5], "tag": [f"t{j}" for j in range(2 + i % 5)]}
        for i in range(23)
    ]
    data = tmp_path / "words.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    common = [
        f"model.name_or_path={tiny_models['bert']}",
        "data=files",
        f"data.path={data}",
        "data.words_field=words",
        "+strategy=words",
        "data.batch_size=4",
        "storage.chunk_rows=8",
        "progress=false",
        "output_dir=out",
    ]
    one = cli(*common, "run_id=one", cwd=tmp_path)
    two = cli(*common, "run_id=two", *DDP, cwd=tmp_path)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    a, b = open_run(tmp_path / "out" / "one"), open_run(tmp_path / "out" / "two")
    np.testing.assert_array_equal(a.offsets, b.offsets)
    assert list(b.row_metadata("tag")) == [t for r in rows for t in r["tag"]]
    for layer in a.layers:
        np.testing.assert_allclose(a.activations(layer), b.activations(layer), atol=1e-5)
