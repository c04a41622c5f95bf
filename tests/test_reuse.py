"""Content-addressed runs: identical requests, layer subsets and pooled strategies served from stored runs,
checked against fresh extractions (the model's own pooling of padded batches), and with the model's
forward passes counted."""

from __future__ import annotations

import numpy as np
import pytest

from probing import (
    ActivationExtractor,
    CLSStrategy,
    DatasetRunner,
    LastTokenStrategy,
    MaxStrategy,
    MeanStrategy,
    ModelBackend,
    TokensStrategy,
    ZarrStorage,
    open_run,
)
from probing.storage.identity import run_identity, source_key


@pytest.fixture(scope="module")
def model(tiny_models):  # type: ignore[no-untyped-def]
    backend = ModelBackend().load_model(tiny_models["bert"])
    backend.forward_calls = 0

    def count(module, args, output):  # type: ignore[no-untyped-def]
        backend.forward_calls += 1

    backend.model.register_forward_hook(count)  # counts passes of the whole model (not early-stopped ones)
    for block in backend.model.encoder.layer[:1]:
        block.register_forward_hook(count)  # ... and of its first block, which every pass runs
    return backend


def run(root, model, data, layers, strategy, **kw):  # type: ignore[no-untyped-def]
    extractor = ActivationExtractor(model, layers=list(layers), strategy=strategy)
    return DatasetRunner(data, batch_size=kw.pop("batch_size", 4), extractor=extractor,
                         storage=ZarrStorage(str(root)), progress=False, announce=False, **kw).run()


def passes(model, fn):  # type: ignore[no-untyped-def]
    before = model.forward_calls
    result = fn()
    return result, model.forward_calls - before


def test_the_identity_ignores_how_a_run_ran_and_sees_what_it_holds() -> None:
    meta = {"model": {"weights_fingerprint": "w", "dtype": "float32", "padding_side": "right"},
            "layers": ["blocks.0"], "strategy": {"name": "mean"}, "max_length": 16,
            "dataset": {"fingerprint": "d", "n_examples": 3}, "storage": {"dtype": "float32"},
            "batching": {"batch_size": 4}, "trainer": {"devices": 1}, "run_id": "a"}
    same = {**meta, "batching": {"batch_size": 64, "bucketing": False}, "trainer": {"devices": 4}, "run_id": "b",
            "world_size": 4}
    assert run_identity(meta) == run_identity(same)
    for key, value in [("layers", ["blocks.1"]), ("strategy", {"name": "max"}), ("max_length", 8),
                       ("dataset", {"fingerprint": "e", "n_examples": 3}), ("storage", {"dtype": "float16"}),
                       ("model", {**meta["model"], "weights_fingerprint": "v"}),
                       ("model", {**meta["model"], "padding_side": "left"})]:
        assert run_identity({**meta, key: value}) != run_identity(meta), key
    assert source_key({**meta, "layers": ["blocks.1"], "strategy": {"name": "max"}}) == source_key(meta)


def test_an_identical_request_returns_the_stored_run_without_the_model(tmp_path, model, sentences) -> None:
    first, n1 = passes(model, lambda: run(tmp_path, model, sentences, [0, 2], MeanStrategy()))
    again, n2 = passes(model, lambda: run(tmp_path, model, sentences, [0, 2], MeanStrategy(), batch_size=2))
    assert n1 > 0 and n2 == 0
    assert again.path == first.path and again.stats["reused"] == "whole"
    fresh, n3 = passes(model, lambda: run(tmp_path, model, sentences, [0, 2], MeanStrategy(), reuse=False))
    assert n3 > 0 and fresh.path != first.path
    named, n4 = passes(model, lambda: run(tmp_path, model, sentences, [0, 2], MeanStrategy(), run_id="named"))
    assert n4 > 0  # a named run is computed (reuse=auto is off with a run_id)
    with open_run(first.path) as a, open_run(fresh.path) as b:
        assert run_identity(a.metadata) == run_identity(b.metadata)


def test_a_layer_subset_is_served_by_the_run_that_has_it(tmp_path, model, sentences) -> None:
    full, _ = passes(model, lambda: run(tmp_path, model, sentences, [0, 1, 3], LastTokenStrategy()))
    sub, n = passes(model, lambda: run(tmp_path, model, sentences, [3, 0], LastTokenStrategy()))
    assert n == 0 and sub.stats["reused"] == "layers" and sub.layers == ["blocks.3", "blocks.0"]
    fresh = run(tmp_path / "fresh", model, sentences, [3, 0], LastTokenStrategy())
    with open_run(sub.path) as a, open_run(fresh.path) as b:
        for k in sub.layers:
            np.testing.assert_allclose(a.activations(k), b.activations(k), atol=1e-6)
    other, n = passes(model, lambda: run(tmp_path, model, sentences, [2], LastTokenStrategy()))
    assert n > 0  # a layer the stored runs lack: computed


@pytest.mark.parametrize("strategy", [MeanStrategy(), MaxStrategy(), LastTokenStrategy(), CLSStrategy()],
                         ids=["mean", "max", "last", "first"])
def test_pooled_strategies_from_every_token_equal_a_fresh_extraction(tmp_path_factory, model, sentences,
                                                                     strategy) -> None:
    root = tmp_path_factory.getbasetemp() / "pool-source"
    data = sentences * 2
    tokens = run(root, model, data, [0, 3], TokensStrategy(keep_special=True))
    derived, n = passes(model, lambda: run(root, model, data, [3], strategy))
    assert n == 0 and derived.stats["reused"] == "pool" and derived.path != tokens.path
    fresh = run(tmp_path_factory.mktemp("fresh"), model, data, [3], strategy)
    with open_run(derived.path) as a, open_run(fresh.path) as b:
        np.testing.assert_allclose(a.activations(3), b.activations(3), atol=1e-6, rtol=0)
        assert list(a.example_metadata("text")) == data
        np.testing.assert_array_equal(a.example_metadata("token_counts"), b.example_metadata("token_counts"))
        assert a.metadata["derived_from"]["source"] == tokens.path
        assert run_identity(a.metadata) == run_identity(b.metadata)  # it is the run a fresh pass would write
    again, n = passes(model, lambda: run(root, model, data, [3], strategy))
    assert n == 0 and again.path == derived.path  # and now it is found whole


def test_tokens_without_special_tokens_do_not_serve_a_mean(tmp_path, model, sentences) -> None:
    run(tmp_path, model, sentences, [0], TokensStrategy(keep_special=False))
    _, n = passes(model, lambda: run(tmp_path, model, sentences, [0], MeanStrategy()))
    assert n > 0


@pytest.mark.slow
def test_the_cli_serves_a_rerun_from_the_stored_run_and_lists_identities(tmp_path, tiny_models) -> None:
    from cli_helpers import cli, run_path

    args = ("+model=distilbert", "+strategy=mean", f"model.name_or_path={tiny_models['distilbert']}", "layers=[0,-1]",
            "data.limit=10", "progress=false", "output_dir=out", "probe_after_extract=false")
    first = cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = cli(*args, "data.batch_size=3", cwd=tmp_path)  # how it runs is not what it is
    assert again.returncode == 0, again.stderr[-3000:]
    assert "the model was not run" in again.stdout and run_path(again.stdout) == run_path(first.stdout)
    listing = cli("runs", "out", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    with open_run(tmp_path / run_path(first.stdout)) as r:
        assert run_identity(r.metadata) in listing.stdout and r.run_id in listing.stdout


@pytest.mark.slow
def test_a_sweep_over_layers_and_pooling_runs_the_model_once(tmp_path, tiny_models) -> None:
    """Two strategies x two layers: one source extraction (every token of blocks 0 and 2), then four jobs
    pooled from it; each job says the model was not run, and the source is the only run not derived."""
    from cli_helpers import cli

    proc = cli("-m", "+strategy=mean,max", "layers=0,2", f"model.name_or_path={tiny_models['bert']}",
               "data.limit=12", "progress=false", "hydra.sweep.dir=sweep", "probe_after_extract=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("the model was not run") == 4
    with open_run(tmp_path / "sweep" / "_source") as src:
        assert src.layers == ["blocks.0", "blocks.2"] and src.metadata["strategy"]["name"] == "tokens"
        assert "derived_from" not in src.metadata
    for i in range(4):
        with open_run(tmp_path / "sweep" / f"job{i}") as job:
            assert job.metadata["derived_from"]["source"].endswith("_source") and job.n_examples == 12
