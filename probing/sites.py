"""Named sites, the same across families: ``resid_pre.L``, ``resid_mid.L``, ``resid_post.L``, ``attn_out.L``,
``mlp_out.L`` and ``final``; and globs over module names (``"model.layers.*.mlp"``).

A site is a module of block ``L`` and whether its input or its output is captured. Where each site sits
is the per-family knowledge kept here (`FAMILY_SITES`, one small table keyed by ``config.model_type``);
every entry is checked against transformers in ``tests/test_families.py``. What the sites mean:

- ``resid_pre.L``: the residual stream entering block L (``hidden_states[L]``; ``resid_pre.0`` is the
  ``embeddings`` layer).
- ``resid_mid.L``: the residual stream after attention was added, before the MLP reads it (pre-norm: the
  input of the MLP's norm; post-norm BERT-like: the attention sublayer's normalized output). Absent in
  parallel-residual blocks (GPT-NeoX/Pythia with ``use_parallel_residual``).
- ``resid_post.L``: the block's output (``blocks.L``, ``hidden_states[L+1]`` before any final norm).
- ``attn_out.L`` / ``mlp_out.L``: what the attention / MLP sublayer adds to the residual stream (after
  its output projection; in Gemma 2/3 after the post-attention / post-feedforward norm). Pre-norm:
  ``resid_mid = resid_pre + attn_out`` and ``resid_post = resid_mid + mlp_out``.
- ``final``: after the final norm (``hidden_states[-1]``); in post-norm families, the last block's output.
- ``attn_pattern.L``: block L's attention probabilities, ``[heads, keys]`` per query token (token-level runs
  only; see `probing.attention`): the second output of the family's self-attention module
  (`ATTENTION_MODULES`), which transformers computes only under eager attention, so the extractor switches
  the model to ``attn_implementation="eager"`` while it runs.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from probing.errors import LayerNotFoundError, close_matches
from probing.layers import EMBEDDINGS, ResolvedLayer

SITE_NAMES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "final")
_SITE_RE = re.compile(r"^(resid_pre|resid_mid|resid_post|attn_out|mlp_out|attn_pattern)\.(\*|-?\d+)$")
ATTN_PATTERN = "attn_pattern"
#: how a resolved attention-pattern layer captures its module: the weights its forward returns last
WEIGHTS = "weights"
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class Site:
    """A module inside a block (``path`` relative to the block) and which side of it is captured."""

    path: str
    capture: str = "output"  # or "input"


@dataclass(frozen=True)
class FamilySites:
    """Where a family's per-block sites sit; ``final`` is relative to the parent of the block list."""

    attn_out: Site
    mlp_out: Site
    resid_mid: Site | None
    final: str | None


_LLAMA_LIKE = FamilySites(Site("self_attn"), Site("mlp"), Site("post_attention_layernorm", "input"), "norm")
_GEMMA = FamilySites(
    Site("post_attention_layernorm"), Site("post_feedforward_layernorm"), Site("pre_feedforward_layernorm", "input"),
    "norm",
)  # fmt: skip
_BERT_LIKE = FamilySites(Site("attention.output.dense"), Site("output.dense"), Site("attention"), None)


def _gpt_neox(config: Any) -> FamilySites:
    parallel = getattr(config, "use_parallel_residual", True)
    mid = None if parallel else Site("post_attention_layernorm", "input")
    return FamilySites(Site("attention"), Site("mlp"), mid, "final_layer_norm")


def _opt(config: Any) -> FamilySites:
    if getattr(config, "do_layer_norm_before", True):
        return FamilySites(Site("self_attn"), Site("fc2"), Site("final_layer_norm", "input"), "final_layer_norm")
    return FamilySites(Site("self_attn"), Site("fc2"), Site("self_attn_layer_norm"), None)  # post-norm (OPT-350m)


#: model_type -> sites (or a function of the config, where a config flag moves them)
FAMILY_SITES: dict[str, FamilySites | Callable[[Any], FamilySites]] = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "phi3"), _LLAMA_LIKE),
    **dict.fromkeys(("gemma2", "gemma3_text"), _GEMMA),
    **dict.fromkeys(("bert", "roberta", "electra"), _BERT_LIKE),
    "distilbert": FamilySites(Site("attention.out_lin"), Site("ffn"), Site("sa_layer_norm"), None),
    "modernbert": FamilySites(Site("attn"), Site("mlp"), Site("mlp_norm", "input"), "final_norm"),
    "t5": FamilySites(
        Site("layer.0.SelfAttention"), Site("layer.1.DenseReluDense"), Site("layer.0"), "final_layer_norm"
    ),
    "gpt2": FamilySites(Site("attn"), Site("mlp"), Site("ln_2", "input"), "ln_f"),
    "gpt_neox": _gpt_neox,
    "opt": _opt,
}


#: model_type -> the self-attention module of a block whose forward returns ``(output, ..., weights)``
ATTENTION_MODULES: dict[str, str] = {
    **dict.fromkeys(("llama", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3_text", "opt"), "self_attn"),
    **dict.fromkeys(("bert", "roberta", "electra"), "attention.self"),
    "distilbert": "attention",
    "modernbert": "attn",
    "t5": "layer.0.SelfAttention",
    "gpt2": "attn",
    "gpt_neox": "attention",
}


def family_sites(model: nn.Module) -> FamilySites | None:
    """The sites of ``model``'s family, or None for a family `probing` does not map."""
    config = getattr(model, "config", None)
    entry = FAMILY_SITES.get(str(getattr(config, "model_type", "")))
    return entry(config) if callable(entry) else entry


def is_site_or_glob(selector: str) -> bool:
    """Whether ``selector`` is a named site (``mlp_out.3``, ``final``) or a glob over module names."""
    return selector == "final" or bool(_SITE_RE.match(selector)) or any(c in selector for c in GLOB_CHARS)


def _unmapped(model: nn.Module, site: str, list_name: str) -> LayerNotFoundError:
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    return LayerNotFoundError(
        f"Site {site!r} is not mapped for model type {kind!r}: `probing` names resid_mid, attn_out and mlp_out for "
        f"{', '.join(sorted(FAMILY_SITES))}. Select the module by name instead, e.g. layers=['{list_name}.3.mlp'] "
        f"or a glob layers=['{list_name}.*.mlp'] (`python -m probing layers <model>` lists the module names); "
        "resid_pre.L, resid_post.L and block indices work for every family."
    )


def final_module(model: nn.Module, list_name: str, n_blocks: int) -> tuple[str, nn.Module]:
    """(name, module) whose output is ``hidden_states[-1]``: the final norm, or the last block (post-norm)."""
    from probing.hooks import FINAL_NORMS

    modules = dict(model.named_modules())
    parent = list_name.rsplit(".", 1)[0] + "." if "." in list_name else ""
    sites = family_sites(model)
    if sites is not None:
        name = parent + sites.final if sites.final else f"{list_name}.{n_blocks - 1}"
        if name not in modules:
            raise LayerNotFoundError(f"Site 'final' should be module {name!r}, which {type(model).__name__} lacks.")
        return name, modules[name]
    for norm in FINAL_NORMS:
        if parent + norm in modules:
            return parent + norm, modules[parent + norm]
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    raise LayerNotFoundError(
        f"Site 'final' is not mapped for model type {kind!r} and no final norm named {', '.join(FINAL_NORMS)} "
        f"follows {list_name}. Select the final norm by its module name (`python -m probing layers <model>` lists "
        f"them), or the last block: layers=-1."
    )


def expand(selector: str, model: nn.Module, list_name: str, blocks: nn.ModuleList) -> list[ResolvedLayer] | None:
    """The layers a site or glob selector stands for, in block order; None if it is neither."""
    if not is_site_or_glob(selector):
        return None
    n = len(blocks)
    if selector == "final":
        name, module = final_module(model, list_name, n)
        return [ResolvedLayer("final", module, name, "output", None)]
    match = _SITE_RE.match(selector)
    if match is None:
        return _glob(selector, model, list_name, blocks)
    site, index = match.group(1), match.group(2)
    if index == "*":
        indices = list(range(n))
    else:
        i = int(index)
        if not -n <= i < n:
            raise LayerNotFoundError(
                f"{selector!r}: block {i} is out of range: {type(model).__name__} has {n} blocks, valid indices are "
                f"{-n}..{n - 1} (negative counts from the end), or '*' for every block."
            )
        indices = [i % n]
    return [_site(site, i, model, list_name, blocks) for i in indices]


def _site(site: str, i: int, model: nn.Module, list_name: str, blocks: nn.ModuleList) -> ResolvedLayer:
    block_name = f"{list_name}.{i}"
    if site == "resid_post":
        return ResolvedLayer(f"blocks.{i}", blocks[i], block_name, "output", i)
    if site == "resid_pre":
        key = EMBEDDINGS if i == 0 else f"resid_pre.{i}"
        return ResolvedLayer(key, blocks[i], block_name, "input", None)
    if site == ATTN_PATTERN:
        return _attention_site(i, model, block_name, blocks)
    sites = family_sites(model)
    if sites is None:
        raise _unmapped(model, f"{site}.{i}", list_name)
    spec: Site | None = getattr(sites, site)
    if spec is None:
        raise LayerNotFoundError(
            f"Site '{site}.{i}' does not exist in {type(model).__name__}: its blocks add attention and MLP to the "
            "residual stream in parallel (no stream between them). Use resid_pre, attn_out, mlp_out or resid_post."
        )
    name = f"{block_name}.{spec.path}" if spec.path else block_name
    module = dict(blocks[i].named_modules()).get(spec.path)
    if module is None:
        raise LayerNotFoundError(f"Site '{site}.{i}' should be module {name!r}, which {type(model).__name__} lacks.")
    return ResolvedLayer(f"{site}.{i}", module, name, spec.capture, None)


def _attention_site(i: int, model: nn.Module, block_name: str, blocks: nn.ModuleList) -> ResolvedLayer:
    kind = str(getattr(getattr(model, "config", None), "model_type", type(model).__name__))
    path = ATTENTION_MODULES.get(kind)
    if path is None:
        raise LayerNotFoundError(
            f"Site 'attn_pattern.{i}' is not mapped for model type {kind!r}: `probing` reads attention probabilities "
            f"in {', '.join(sorted(ATTENTION_MODULES))}. Other families: capture hidden states, or run transformers "
            "with output_attentions=True yourself."
        )
    module = dict(blocks[i].named_modules()).get(path)
    if module is None:
        raise LayerNotFoundError(
            f"Site 'attn_pattern.{i}' should be module {block_name}.{path}, which {type(model).__name__} lacks."
        )
    return ResolvedLayer(f"{ATTN_PATTERN}.{i}", module, f"{block_name}.{path}", WEIGHTS, None)


def _glob(pattern: str, model: nn.Module, list_name: str, blocks: nn.ModuleList) -> list[ResolvedLayer]:
    modules = dict(model.named_modules())
    names = [name for name in modules if name and fnmatch.fnmatchcase(name, pattern)]
    if not names:
        raise LayerNotFoundError(
            f"No module name of {type(model).__name__} matches {pattern!r}.{close_matches(pattern, modules)} "
            f"Globs match whole names from model.named_modules(), e.g. '{list_name}.*.{_first_child(blocks)}'."
        )
    block_index = {id(b): i for i, b in enumerate(blocks)}
    out = []
    for name in names:
        module = modules[name]
        if id(module) in block_index:
            i = block_index[id(module)]
            out.append(ResolvedLayer(f"blocks.{i}", module, f"{list_name}.{i}", "output", i))
        else:
            out.append(ResolvedLayer(name, module, name, "output", None))
    return out


def _first_child(blocks: nn.Module) -> str:
    return next((name for name, _ in blocks[0].named_children()), "mlp")  # type: ignore[index]


def describe_sites(model: nn.Module, list_name: str, n_blocks: int) -> list[str]:
    """Lines for ``python -m probing layers``: each site, the module it captures in block 0, and what it is."""
    sites = family_sites(model)
    lines = [f"named sites (the same in every mapped family; L in 0..{n_blocks - 1}, '*' for all, e.g. "
             "layers=[3, \"resid_mid.3\", \"mlp_out.*\", \"final\"]):"]  # fmt: skip
    rows: list[tuple[str, str, str]] = [("resid_pre.L", f"{list_name}.L (input)", "the residual stream into block L "
                                         "(hidden_states[L]; resid_pre.0 = embeddings)")]  # fmt: skip
    if sites is not None and sites.resid_mid is not None:
        mid = sites.resid_mid
        rows.append((
            "resid_mid.L", f"{list_name}.L.{mid.path} ({mid.capture})", "after attention is added, before the MLP"
        ))  # fmt: skip
    rows.append(("resid_post.L", f"{list_name}.L (output)", "the block's output = blocks.L = layers=L"))
    if sites is not None:
        rows.append(
            ("attn_out.L", f"{list_name}.L.{sites.attn_out.path} (output)", "what attention adds to the stream")
        )
        rows.append(("mlp_out.L", f"{list_name}.L.{sites.mlp_out.path} (output)", "what the MLP adds to the stream"))
    attention = ATTENTION_MODULES.get(str(getattr(getattr(model, "config", None), "model_type", "")))
    if attention is not None:
        rows.append((
            "attn_pattern.L", f"{list_name}.L.{attention} (weights)", "attention probabilities [heads, keys] per "
            "token (strategy=tokens; runs eager attention)",
        ))  # fmt: skip
    try:
        final_name, _ = final_module(model, list_name, n_blocks)
        kind = "after the final norm" if final_name != f"{list_name}.{n_blocks - 1}" else "post-norm: the last block"
        rows.append(("final", f"{final_name} (output)", f"{kind} = hidden_states[-1] of transformers"))
    except LayerNotFoundError:
        pass
    width = max(len(r[1]) for r in rows)
    lines += [f"  {site:<13} {where:<{width}}  {what}" for site, where, what in rows]
    if sites is None:
        model_type = getattr(getattr(model, "config", None), "model_type", "?")
        lines.append(f"  (model type {model_type!r} is not mapped: select attention and MLP modules by name or glob, "
                     f"e.g. layers=\"{list_name}.*.{_first_child(model.get_submodule(list_name))}\")")  # fmt: skip
    return lines
