"""``python -m probing layers MODEL``: the hook points of a model, from its config, without its weights.

The model is built on PyTorch's ``meta`` device (shapes only, no memory, no weights read), so even a
large model is listed in seconds. What it prints is what ``layers=`` accepts: ``embeddings``, block
indices, and module names (any module of ``model.named_modules()``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

#: names of a final norm after the last block (pre-norm families): its output is ``hidden_states[-1]``
FINAL_NORMS = ("ln_f", "norm", "final_layer_norm", "final_layernorm", "norm_f")


def meta_model(name_or_path: str, *, revision: str | None = None, gguf_file: str | None = None) -> Any:
    """The bare model (``AutoModel``) of ``name_or_path`` on the meta device: its modules, no weights."""
    import torch
    from transformers import AutoConfig, AutoModel

    from probing.embedded import EMBEDDED_MODELS
    from probing.errors import ModelLoadError

    path = name_or_path
    if path in EMBEDDED_MODELS and not os.path.isdir(path):
        with contextlib.suppress(ImportError):
            path = EMBEDDED_MODELS[path]()
    kwargs: dict[str, Any] = {"revision": revision}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    try:
        config = AutoConfig.from_pretrained(os.path.expanduser(path), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"Could not read the config of {name_or_path!r}: {exc}. Point at a local folder holding config.json."
        ) from exc
    with torch.device("meta"):
        return AutoModel.from_config(config)


def describe_hook_points(model: Any, name: str = "") -> str:
    """What ``layers=`` can select in ``model``, as text."""
    from probing.layers import find_block_list

    list_name, blocks = find_block_list(model)
    n = len(blocks)
    modules = dict(model.named_modules())
    final = next((m for m in FINAL_NORMS if m in modules), None)
    kind = getattr(model.config, "model_type", type(model).__name__)
    norm = (f"pre-norm: each block normalizes its input, and the final norm {final!r} follows the last block"
            if final else "post-norm: each block normalizes its output; there is no final norm")
    lines = [
        f"{name or type(model).__name__} ({kind}, {n} blocks in {list_name!r}, {norm})",
        "  layers=embeddings      the input of block 0 (hidden_states[0] of transformers)",
        f"  layers=0 .. {n - 1:<9} the output of block i ({list_name}.i; hidden_states[i+1]), before any final norm",
        f"  layers=all             embeddings and every block; ranges: layers=\"0:{n}:2\"; negative: layers=-1",
    ]
    if final:
        lines.append(f"  layers={final:<15} the final norm's output (= hidden_states[-1] of transformers)")
    from probing.sites import describe_sites

    lines += describe_sites(model, list_name, n)
    prefix = f"{list_name}.0."
    inside = [(k[len(prefix):], type(m).__name__) for k, m in modules.items() if k.startswith(prefix)]
    if inside:
        lines.append(f"modules of block 0 (the same names in every block: layers={list_name}.<i>.<name>):")
        width = max(len(k) for k, _ in inside)
        lines += [f"  {list_name}.0.{k:<{width}}  {t}" for k, t in inside]
    others = [(k, type(m).__name__) for k, m in modules.items()
              if k and not k.startswith(f"{list_name}.") and k != list_name and "." not in k]
    if others:
        lines.append("other top-level modules: " + ", ".join(f"{k} ({t})" for k, t in others))
    return "\n".join(lines)


def layers_main(args: list[str]) -> int:
    """``python -m probing layers MODEL [--revision R] [--gguf-file F]``; returns the exit code."""
    p = argparse.ArgumentParser(
        prog="python -m probing layers",
        description="List a model's hook points (what layers= selects) from its config, without loading weights.",
    )
    p.add_argument("model", help="a model folder, or a hub id in the local cache (the embedded all-MiniLM-L6-v2)")
    p.add_argument("--revision", default=None)
    p.add_argument("--gguf-file", default=None, help="a GGUF file inside the model folder")
    try:
        a = p.parse_args(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    from probing.errors import ProbingError

    try:
        print(describe_hook_points(meta_model(a.model, revision=a.revision, gguf_file=a.gguf_file), a.model))
    except ProbingError as exc:
        print(f"probing: error: {exc}", file=sys.stderr)
        return 2
    return 0
