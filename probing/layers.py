"""Resolve layer selectors (int, ``"embeddings"``, module name, module object, named site such as
``"mlp_out.3"`` or a glob over module names, see `probing.sites`) to hookable modules.

An int indexes the model's stack of transformer blocks; where that stack lives is the only
per-family knowledge `probing` keeps (`BLOCK_LIST_PATHS`), with a generic search as fallback.
Block ``i`` means the output of block ``i`` (``hidden_states[i + 1]`` of transformers, before any
final norm); ``"embeddings"`` means the input of block 0 (``hidden_states[0]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from probing.errors import LayerNotFoundError, close_matches

LayerSelector = int | str | nn.Module

# Where the list of transformer blocks lives, relative to the bare model (AutoModel) or a model with a
# head. First match wins; `find_block_list` falls back to the longest ModuleList of identical blocks.
BLOCK_LIST_PATHS: tuple[str, ...] = (
    "encoder.layer",  # BERT, RoBERTa, ELECTRA, MiniLM
    "transformer.layer",  # DistilBERT
    "h",  # GPT-2 (GPT2Model)
    "transformer.h",  # GPT-2 with LM head, GPT-J, Falcon
    "layers",  # Llama, Mistral, Qwen, Gemma (bare model)
    "model.layers",  # the same with LM head
    "gpt_neox.layers",
    "decoder.layers",  # OPT
    "encoder.block",  # T5's encoder
)

EMBEDDINGS = "embeddings"


@dataclass(frozen=True)
class ResolvedLayer:
    """A selector resolved against a model.

    Attributes:
        key: the name the layer is stored under (``embeddings``, ``blocks.3`` or a module name).
        module: the module to hook.
        module_name: its name in ``model.named_modules()``.
        capture: ``output`` (forward hook) or ``input`` (forward pre-hook: the embeddings).
        block_index: the non-negative block index, or None for a named module.
    """

    key: str
    module: nn.Module
    module_name: str
    capture: str = "output"
    block_index: int | None = None


def find_block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Return (name, ModuleList) of the model's transformer blocks."""
    modules = dict(model.named_modules())
    for path in BLOCK_LIST_PATHS:
        mod = modules.get(path)
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            return path, mod
    best: tuple[str, nn.ModuleList] | None = None
    for name, mod in modules.items():
        uniform = isinstance(mod, nn.ModuleList) and len(mod) > 0 and len({type(m) for m in mod}) == 1
        if uniform and (best is None or len(mod) > len(best[1])):
            best = (name, mod)  # type: ignore[assignment]
    if best is None:
        raise LayerNotFoundError(
            f"Could not find the list of transformer blocks in {type(model).__name__}. Select layers by "
            "module name (see model.named_modules()) or add the path to probing.layers.BLOCK_LIST_PATHS."
        )
    return best


def num_blocks(model: nn.Module) -> int:
    """How many transformer blocks the model has."""
    return len(find_block_list(model)[1])


def parse_layers(spec: object, n_blocks: int | None = None) -> list[LayerSelector]:
    """Parse a config value into selectors: ``all``, ``-1``, ``[0, 3, -1]``, ``"0:6:2"``, ``embeddings``.

    ``all`` means the embeddings and every block (needs ``n_blocks``); a string ``a:b[:c]`` is a
    Python-style range of block indices.
    """
    if isinstance(spec, (list, tuple)) or (hasattr(spec, "__iter__") and not isinstance(spec, (str, bytes))):
        out: list[LayerSelector] = []
        for item in spec:  # type: ignore[union-attr]
            out.extend(parse_layers(item, n_blocks))
        return out
    if isinstance(spec, (int, nn.Module)):
        return [spec]
    text = str(spec).strip()
    if text == "all":
        if n_blocks is None:
            raise LayerNotFoundError("layers='all' needs the model to count its blocks.")
        return [EMBEDDINGS, *range(n_blocks)]
    if ":" in text and all(part.strip().lstrip("-").isdigit() or part.strip() == "" for part in text.split(":")):
        if n_blocks is None:
            raise LayerNotFoundError(f"layers={text!r} (a range) needs the model to count its blocks.")
        parts = [int(p) if p.strip() else None for p in text.split(":")]
        return list(range(n_blocks)[slice(*parts)])
    if text.lstrip("-").isdigit():
        return [int(text)]
    return [text]


def resolve_layers(model: nn.Module, selectors: Sequence[LayerSelector]) -> list[ResolvedLayer]:
    """Resolve selectors against ``model``; fail before any compute with close matches and the range.

    Duplicate selectors (``[5, -1]`` on a 6-block model) resolve to one layer, kept at its first place.
    """
    if isinstance(selectors, (str, int, nn.Module)):
        selectors = [selectors]
    if len(selectors) == 0:
        raise LayerNotFoundError("No layers requested: pass at least one layer (index, name or module).")
    list_name, blocks = find_block_list(model)
    n = len(blocks)
    names = {id(m): name for name, m in model.named_modules()}
    modules = dict(model.named_modules())
    block_index = {id(b): i for i, b in enumerate(blocks)}
    resolved: list[ResolvedLayer] = []
    seen: set[str] = set()
    from probing.sites import expand

    for sel in selectors:
        layers = expand(sel, model, list_name, blocks) if isinstance(sel, str) and sel not in modules else None
        for layer in layers or [_resolve_one(sel, model, list_name, blocks, n, names, modules, block_index)]:
            if layer.key not in seen:
                seen.add(layer.key)
                resolved.append(layer)
    return resolved


def _resolve_one(
    sel: LayerSelector,
    model: nn.Module,
    list_name: str,
    blocks: nn.ModuleList,
    n: int,
    names: dict[int, str],
    modules: dict[str, nn.Module],
    block_index: dict[int, int],
) -> ResolvedLayer:
    if isinstance(sel, bool):
        raise LayerNotFoundError(f"Layer selector {sel!r} is a bool; use an int index, a name or a module.")
    if isinstance(sel, int):
        if not -n <= sel < n:
            raise LayerNotFoundError(
                f"Layer index {sel} is out of range: {type(model).__name__} has {n} blocks "
                f"({list_name}), valid indices are {-n}..{n - 1} (negative counts from the end), "
                f"or 'embeddings'."
            )
        i = sel % n
        return ResolvedLayer(f"blocks.{i}", blocks[i], f"{list_name}.{i}", "output", i)
    if isinstance(sel, nn.Module):
        if id(sel) not in names:
            raise LayerNotFoundError(
                f"Module {type(sel).__name__} is not part of {type(model).__name__}; pass a module of "
                "this model (from model.named_modules())."
            )
        return _named(names[id(sel)], sel, list_name, block_index)
    if not isinstance(sel, str):
        raise LayerNotFoundError(f"Layer selector {sel!r} must be an int, a str or an nn.Module.")
    if sel == EMBEDDINGS:
        return ResolvedLayer(EMBEDDINGS, blocks[0], f"{list_name}.0", "input", None)
    if sel.startswith("blocks.") and sel[7:].isdigit():
        return _resolve_one(int(sel[7:]), model, list_name, blocks, n, names, modules, block_index)
    if sel.lstrip("-").isdigit():
        return _resolve_one(int(sel), model, list_name, blocks, n, names, modules, block_index)
    if sel not in modules or sel == "":
        raise LayerNotFoundError(
            f"No module named {sel!r} in {type(model).__name__}.{close_matches(sel, modules)} "
            f"Valid: a block index in {-n}..{n - 1}, 'embeddings', or a name from model.named_modules() "
            f"(blocks are {list_name}.0 .. {list_name}.{n - 1})."
        )
    return _named(sel, modules[sel], list_name, block_index)


def _named(name: str, module: nn.Module, list_name: str, block_index: dict[int, int]) -> ResolvedLayer:
    if id(module) in block_index:
        i = block_index[id(module)]
        return ResolvedLayer(f"blocks.{i}", module, f"{list_name}.{i}", "output", i)
    return ResolvedLayer(name, module, name, "output", None)
