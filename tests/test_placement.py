"""Weights in bfloat16/float16, device_map placement (CPU and meta here) and quantized checkpoints refused."""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch
from family_zoo import build

from probing import ActivationExtractor, ModelBackend, TokensStrategy
from probing.errors import ConfigError, ModelLoadError

TEXT = "the cat sat on the mat"
accelerate = pytest.importorskip("accelerate", reason="device_map needs the 'big' extra (accelerate)")


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build("llama", tmp_path_factory.mktemp("placement") / "llama")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_weights_match_transformers_in_that_dtype(llama, dtype):
    folder, tok, model = llama
    loaded = ModelBackend().load_model(folder, dtype=str(dtype).removeprefix("torch."))
    assert {p.dtype for p in loaded.model.parameters()} == {dtype}
    got = ActivationExtractor(loaded, layers=["all"], strategy=TokensStrategy(keep_special=True)).extract([TEXT])
    ref = copy.deepcopy(model).to(dtype)  # a copy: casting the shared float32 model back would round it
    with torch.no_grad():
        states = ref(**tok(TEXT, return_tensors="pt"), output_hidden_states=True).hidden_states
    assert got.activations["blocks.0"].dtype == np.float32  # stored as float32, computed in half
    np.testing.assert_allclose(got.activations["embeddings"], states[0][0].float().numpy(), atol=0)
    np.testing.assert_allclose(got.activations["blocks.0"], states[1][0].float().numpy(), atol=1e-6)


def test_device_map_auto_on_cpu_gives_the_same_activations(llama):
    folder = llama[0]
    plain = ModelBackend().load_model(folder)
    spread = ModelBackend().load_model(folder, device_map="auto")
    assert spread.device == torch.device("cpu") and spread.extra["device_map"] == {"": "cpu"}
    a = ActivationExtractor(plain, layers=["all", "final"]).extract([TEXT]).activations
    b = ActivationExtractor(spread, layers=["all", "final"]).extract([TEXT]).activations
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_the_cli_takes_model_device_map_and_stores_it_with_the_run(llama, tmp_path):
    from cli_helpers import cli, run_path

    from probing import open_run

    folder = llama[0]
    args = (f"model.name_or_path={folder}", "data=generated", "data.limit=6", "layers=[0,final]", "progress=false")
    placed = cli(*args, "model.device_map=auto", "run_id=placed", cwd=tmp_path)
    assert placed.returncode == 0, placed.stderr[-3000:]
    plain = cli(*args, "run_id=plain", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr[-3000:]
    a, b = (open_run(tmp_path / run_path(p.stdout)) for p in (placed, plain))
    assert a.metadata["config"]["model"]["device_map"] == "auto"
    for key in b.layers:
        np.testing.assert_array_equal(a.activations(key), b.activations(key))


def test_a_model_spread_over_devices_is_not_moved_by_lightning(llama, tmp_path):
    """A model accelerate spread over several devices stays where it was placed: `ExtractionModule` holds it
    unregistered, so Lightning's ``.to(root_device)`` cannot gather its blocks, and the run is unchanged.
    (Here both "devices" are the CPU; a real split over GPUs needs a GPU machine: bench/gpu_check.sh.)"""
    from probing import DatasetRunner, MeanStrategy, ZarrStorage
    from probing.engine.module import ExtractionModule
    from probing.placement import is_spread

    folder = llama[0]
    spread = ModelBackend().load_model(folder)
    spread.extra["device_map"] = {"model.embed_tokens": "cpu", "model.layers.0": 0, "model.layers.1": "cpu"}
    assert is_spread(spread.extra["device_map"])
    module = ExtractionModule(ActivationExtractor(spread, layers=["all"]))
    assert list(module.parameters()) == []  # nothing for Lightning to move
    module.to(torch.float64)
    assert next(spread.model.parameters()).dtype == torch.float32
    texts = ["the cat sat on the mat", "a dog ran", "birds sing in the morning light"]
    runs = [
        DatasetRunner(texts, 2, ActivationExtractor(b, layers=["all"], strategy=MeanStrategy()),
                      ZarrStorage(tmp_path), run_id=name, progress=False).run()
        for b, name in ((spread, "spread"), (ModelBackend().load_model(folder), "plain"))
    ]  # fmt: skip
    from probing import open_run

    a, b = (open_run(r.path) for r in runs)
    for key in b.layers:
        np.testing.assert_array_equal(a.activations(key), b.activations(key))
    with pytest.raises(ConfigError, match="one process per node"):
        DatasetRunner(texts, 2, ActivationExtractor(spread, layers=["all"]), ZarrStorage(tmp_path),
                      trainer={"accelerator": "cpu", "devices": 2, "strategy": "ddp"}, progress=False)


def test_placement_on_meta_spreads_whole_blocks(llama):
    from probing.hooks import meta_model
    from probing.placement import plan_device_map

    model = meta_model(str(llama[0]))
    per_block = sum(p.numel() * 4 for p in model.layers[0].parameters())
    plan = plan_device_map(model, {0: int(per_block * 1.5), 1: int(per_block * 1.5), "cpu": 10**9})
    # about one block fits per GPU: the model fills GPU 0, then GPU 1, then the CPU, in order
    assert list(plan.values()) == sorted(plan.values(), key=lambda d: (d == "cpu", d if d != "cpu" else 0))
    assert set(plan.values()) == {0, 1, "cpu"}
    assert {"layers.0", "layers.1"} <= set(plan)  # whole blocks, never split between devices
    assert not any(k.startswith(("layers.0.", "layers.1.")) for k in plan)


@pytest.mark.parametrize(
    ("device_map", "match"),
    [
        ("disk", "disk is refused"),
        ({"": "meta"}, "'meta' holds no weights"),
        ("cuda:0", "CUDA is not available"),
        ({"layers.0": 3}, "CUDA is not available"),
        ("everywhere", "Unknown device"),
        (["auto"], "device_map must be one of"),
    ],
)
def test_bad_device_maps_are_refused_before_loading(tmp_path, device_map, match):
    if torch.cuda.is_available() and "CUDA" in match:
        pytest.skip("this machine has CUDA")
    from probing.errors import DeviceError

    with pytest.raises((ConfigError, DeviceError), match=match):
        ModelBackend().load_model(tmp_path / "never-read", device_map=device_map)


@pytest.mark.parametrize(
    ("quant", "match"),
    [
        ({"quant_method": "gptq", "bits": 4}, "quant_method='gptq'.*refuses.*GGUF"),
        ({"quant_method": "awq", "bits": 4}, "quant_method='awq'"),
        ({"quant_method": "fp8"}, "quant_method='fp8'"),
        ({"quant_method": "bitsandbytes", "load_in_4bit": True}, "bitsandbytes.*CUDA GPUs only"),
    ],
)
def test_quantized_checkpoints_are_refused_before_the_weights_load(llama, tmp_path, quant, match):
    if torch.cuda.is_available() and quant["quant_method"] == "bitsandbytes":
        pytest.skip("bitsandbytes may run here")
    folder = tmp_path / "quantized"
    shutil.copytree(llama[0], folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "quantization_config": quant}))
    (folder / "model.safetensors").write_bytes(b"not weights")  # reading them would fail differently
    with pytest.raises(ModelLoadError, match=match):
        ModelBackend().load_model(folder)
