"""ModelBackend: loading, devices, dtypes, pad tokens, offline errors."""

from __future__ import annotations

import pytest
import torch

from probing import ModelBackend
from probing.backend import resolve_device
from probing.errors import ConfigError, DeviceError, ModelLoadError


@pytest.mark.parametrize("family", ["bert", "distilbert", "gpt2", "llama"])
def test_loads_each_family_with_pad_token_and_float32(tiny_models, family):
    m = ModelBackend().load_model(tiny_models[family], device="cpu")
    assert m.tokenizer.pad_token is not None
    assert m.is_decoder == (family in ("gpt2", "llama"))
    assert all(p.dtype == torch.float32 for p in m.model.parameters())
    assert m.device == torch.device("cpu")
    assert not m.model.training


def test_explicit_dtype(tiny_models):
    m = ModelBackend().load_model(tiny_models["bert"], dtype="bfloat16")
    assert next(m.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="auto"):
        ModelBackend().load_model(tiny_models["bert"], dtype="auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_names_what_is_available(tiny_models):
    with pytest.raises(DeviceError, match=r"CUDA is not available.*Available: cpu"):
        ModelBackend().load_model(tiny_models["bert"], device="cuda:0")


def test_unknown_device():
    with pytest.raises(DeviceError, match="Unknown device 'gpu0'.*cpu"):
        resolve_device("gpu0")


def test_hub_name_offline_says_how_to_use_a_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="local folder"):
        ModelBackend().load_model("no-such-org/no-such-model-xyz")


def test_missing_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        ModelBackend().load_model(str(tmp_path / "missing"))


def test_padding_side_is_applied(tiny_models):
    assert ModelBackend().load_model(tiny_models["gpt2"], padding_side="left").tokenizer.padding_side == "left"
    with pytest.raises(ConfigError):
        ModelBackend().load_model(tiny_models["gpt2"], padding_side="middle")
