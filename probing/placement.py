"""Models beyond one device: ``device_map`` placement and quantized checkpoints, checked before weights load.

What `probing` supports, and why:

- ``device_map`` (``"auto"``, ``"balanced"``, ``"balanced_low_0"``, ``"sequential"``, one device such as
  ``"cuda:1"``, or a dict of module name -> device) through transformers + ``accelerate`` (extra
  ``probing[big]``): blocks are placed whole on devices and accelerate's hooks move activations between
  them; forward hooks see each block's output where it ran. Offloading to ``disk`` is refused (every
  batch would read the weights from disk), and so is ``meta`` (no weights to compute with): to see a
  placement without loading anything, use `plan_device_map`, which builds the model on the meta device.
- Quantized weights: GGUF files (``model.gguf_file``) are dequantized at load into ``model.dtype``, so
  activations are those of the dequantized weights. Checkpoints saved quantized (a ``quantization_config``
  in config.json) load only for bitsandbytes (4/8-bit), which transformers runs on CUDA only: it needs a
  CUDA GPU and ``pip install bitsandbytes``. Every other method (GPTQ, AWQ, FP8, compressed-tensors,
  torchao, HQQ, ...) is refused before the weights load: `probing` cannot check their kernels' outputs
  against a reference, and most need a GPU kernel package.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

import torch

from probing.errors import ConfigError, ModelLoadError

DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
SUPPORTED_QUANTIZATION = ("bitsandbytes",)  # besides GGUF, which is dequantized at load


def check_device_map(device_map: Any) -> None:
    """Refuse a ``device_map`` that cannot run here, before anything loads."""
    from probing.backend import resolve_device

    if device_map is None:
        return
    if importlib.util.find_spec("accelerate") is None:
        raise ConfigError(
            f"device_map={device_map!r} needs the accelerate package, which is not installed: "
            "pip install 'probing[big]' (or pip install accelerate)."
        )
    if isinstance(device_map, str):
        if device_map in DEVICE_MAP_STRATEGIES:
            return
        if device_map in ("disk", "meta"):
            raise ConfigError(_refused_place(device_map))
        resolve_device(device_map)
        return
    if not isinstance(device_map, Mapping) or not device_map:
        raise ConfigError(
            f"device_map must be one of {', '.join(DEVICE_MAP_STRATEGIES)}, a device ('cuda:0', 'cpu') or a dict "
            f"of module name -> device; got {device_map!r}."
        )
    for module, place in device_map.items():
        if place in ("disk", "meta"):
            raise ConfigError(f"device_map[{module!r}]={place!r}: " + _refused_place(place))
        resolve_device(f"cuda:{place}" if isinstance(place, int) and not isinstance(place, bool) else place)


def _refused_place(place: str) -> str:
    if place == "disk":
        return (
            "offloading weights to disk is refused: every batch would read them from disk again. Give the model "
            "more devices (device_map='auto' over the GPUs of a node), float16/bfloat16 weights, or CPU RAM."
        )
    return (
        "'meta' holds no weights to compute with. To see where modules would go without loading anything, "
        "use probing.placement.plan_device_map(model, max_memory={...})."
    )


def quantization_method(config: Any) -> str | None:
    """The ``quant_method`` of a config's ``quantization_config``, or None for unquantized weights."""
    quant = getattr(config, "quantization_config", None)
    if quant is None:
        return None
    method = quant.get("quant_method") if isinstance(quant, Mapping) else getattr(quant, "quant_method", None)
    return str(getattr(method, "value", method) or "unknown")


def check_quantization(config: Any, name: str) -> None:
    """Refuse a quantized checkpoint `probing` cannot run here (see the module docstring), before weights load."""
    method = quantization_method(config)
    if method is None:
        return
    if method not in SUPPORTED_QUANTIZATION:
        raise ModelLoadError(
            f"{name!r} is a quantized checkpoint (quant_method={method!r}), which `probing` refuses: supported are "
            "GGUF files (model.gguf_file, dequantized at load) and bitsandbytes 4/8-bit on a CUDA GPU. Load the "
            "unquantized checkpoint (with model.dtype=bfloat16 to halve its memory) or a GGUF file instead."
        )
    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        missing = "no CUDA GPU here" if not torch.cuda.is_available() else "the bitsandbytes package is not installed"
        raise ModelLoadError(
            f"{name!r} holds bitsandbytes-quantized weights, which transformers runs on CUDA GPUs only, and {missing}. "
            "Run on a GPU machine with `pip install bitsandbytes`, or load the unquantized checkpoint."
        )


def is_spread(device_map: Mapping[str, Any] | None) -> bool:
    """True when accelerate put the model's modules on more than one device.

    Such a model must not be moved by Lightning (``.to(root_device)`` would gather every block on one
    device): `ExtractionModule` then keeps it unregistered and Lightning only moves the batches.
    """
    values = (device_map or {}).values()
    places = {f"cuda:{p}" if isinstance(p, int) and not isinstance(p, bool) else str(p) for p in values}
    return len(places) > 1


def input_device(model: torch.nn.Module) -> torch.device:
    """Where a (possibly spread) model takes its inputs: the device of its input embeddings."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if isinstance(emb, torch.nn.Module):
        param = next(emb.parameters(), None)
        if param is not None:
            return param.device
    return next(model.parameters()).device


def plan_device_map(model: torch.nn.Module, max_memory: Mapping[Any, int | str], dtype: Any = None) -> dict[str, Any]:
    """Where ``device_map='auto'`` would put each module of ``model`` (built on the meta device, e.g. with
    `probing.hooks.meta_model`) given ``max_memory`` per device; blocks are never split."""
    from accelerate import infer_auto_device_map

    no_split = list(getattr(model, "_no_split_modules", None) or [])
    return dict(
        infer_auto_device_map(model, max_memory=dict(max_memory), no_split_module_classes=no_split, dtype=dtype)
    )
