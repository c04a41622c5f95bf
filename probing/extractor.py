"""`ActivationExtractor`: forward hooks on the requested layers, pooled per example, in one pass.

Hooks pool each layer's output as soon as it is produced (only ``[batch, hidden]`` per layer is kept),
and the forward pass is stopped once every requested layer has fired, so no compute is spent on
deeper blocks. Hooks exist only inside `ActivationExtractor.hooks()` and are removed on exit, also
when the forward raises.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from probing.backend import BackendModel
from probing.errors import ConfigError
from probing.layers import LayerSelector, ResolvedLayer, find_block_list, num_blocks, parse_layers, resolve_layers
from probing.strategies import ExtractionStrategy, MeanStrategy, RowPlan, TokenLevelStrategy


class _StopForward(Exception):
    """Raised by the last hook to fire: everything requested is captured."""


@dataclass
class ActivationBatch:
    """Activations of one batch: ``activations[key]`` is ``[batch, dim]`` float32 for pooled strategies,
    ``[rows, dim]`` for token-level ones, where example ``i`` owns ``row_counts[i]`` consecutive rows."""

    activations: dict[str, np.ndarray]
    example_ids: np.ndarray
    token_counts: np.ndarray
    row_counts: np.ndarray | None = None
    row_fields: dict[str, np.ndarray] | None = None


@dataclass
class LayerOutputs:
    """What one forward pass produced, on the model's device."""

    activations: dict[str, torch.Tensor]
    row_counts: torch.Tensor | None = None
    row_fields: dict[str, torch.Tensor] | None = None


def _hidden_of(output: Any) -> torch.Tensor:
    """The hidden-state tensor of a module output: a tensor, a tuple or a ModelOutput."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        for key in ("last_hidden_state", "hidden_states"):
            if isinstance(output.get(key), torch.Tensor):
                return output[key]
        output = tuple(output.values())
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ConfigError(f"Cannot find a hidden-state tensor in a module output of type {type(output).__name__}.")


def positions_from_ids(model: nn.Module) -> bool:
    """Whether ``model``'s embeddings derive position ids from the input ids (RoBERTa, XLM-R, CamemBERT...)."""
    embeddings = getattr(model, "embeddings", None)
    return hasattr(embeddings, "create_position_ids_from_input_ids") and hasattr(embeddings, "padding_idx")


class ActivationExtractor:
    """Capture pooled activations of several layers of a `BackendModel` in one forward pass.

    Args:
        model: the loaded model (`ModelBackend.load_model`).
        layers: selectors: block index (negative from the end), ``"embeddings"``, a module name, a
            module, ``"all"`` or a range string ``"0:6:2"``.
        strategy: how token states become one vector per example (default: `MeanStrategy`).
        early_stop: stop the forward pass once all requested layers have been captured.
    """

    def __init__(
        self,
        model: BackendModel,
        layers: Sequence[LayerSelector] | LayerSelector = (-1,),
        strategy: ExtractionStrategy | None = None,
        *,
        early_stop: bool = True,
    ) -> None:
        self.backend = model
        self.strategy = strategy if strategy is not None else MeanStrategy()
        if not isinstance(self.strategy, ExtractionStrategy):
            raise ConfigError(f"strategy must be an ExtractionStrategy, got {type(self.strategy).__name__}.")
        self.n_blocks = num_blocks(model.model)
        self.selectors = parse_layers(layers, self.n_blocks)
        self.layers: list[ResolvedLayer] = resolve_layers(model.model, self.selectors)
        self.strategy.validate(model.model, model.is_decoder)
        from probing.sites import WEIGHTS

        #: attention-pattern layers (``attn_pattern.L``): rows ``[heads, keys]``, captured under eager attention
        self.attention_keys = [layer.key for layer in self.layers if layer.capture == WEIGHTS]
        if self.attention_keys:
            from probing.attention import check_strategy

            check_strategy(self.strategy, self.attention_keys)
        self.early_stop = early_stop
        self._forward_params = set(inspect.signature(model.model.forward).parameters)
        #: left padding: pass ``position_ids = cumsum(mask) - 1``, except where the embeddings count positions
        #: from the input ids themselves (RoBERTa-like: ``padding_idx + cumsum(ids != pad)``, right for either
        #: side; explicit ids would start them at 0 instead of ``padding_idx + 1``, 2.7 off on a tiny RoBERTa)
        self.positions_from_mask = "position_ids" in self._forward_params and not positions_from_ids(model.model)
        self._mask: torch.Tensor | None = None
        self._plan: RowPlan | None = None
        self._captured: dict[str, torch.Tensor] = {}
        self._active = False
        self._jax: Any = None
        if getattr(model, "framework", "torch") == "jax":
            from probing.jax.forward import JaxForward

            # the JAX port computes the layers (sites checked here, before any compute); pooling stays in torch
            self._jax = JaxForward(model, self.layers, early_stop=early_stop, forward_params=self._forward_params,
                                   positions_from_mask=self.positions_from_mask)

    # -- public API ---------------------------------------------------------------------------
    @property
    def layer_keys(self) -> list[str]:
        """The storage keys of the resolved layers, in request order."""
        return [layer.key for layer in self.layers]

    @property
    def model(self) -> nn.Module:
        return self.backend.model

    @contextmanager
    def hooks(self) -> Iterator[ActivationExtractor]:
        """Register the hooks for the duration of the ``with`` block; always removed on exit."""
        if self._active:
            yield self
            return
        handles: list[Any] = []
        with contextlib.ExitStack() as stack:
            if self.attention_keys:
                from probing.attention import eager_attention

                stack.enter_context(eager_attention(self.model))
            with self._registered(handles):
                yield self

    @contextmanager
    def _registered(self, handles: list[Any]) -> Iterator[None]:
        try:
            for layer in self.layers:
                if layer.capture == "input":
                    handles.append(layer.module.register_forward_pre_hook(self._make_pre_hook(layer), with_kwargs=True))
                else:
                    handles.append(layer.module.register_forward_hook(self._make_hook(layer)))
            self._active = True
            yield
        finally:
            for h in handles:
                h.remove()
            self._active = False
            self._captured = {}
            self._mask = None
            self._plan = None

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the model on a tokenized batch (on the model's device) and return pooled activations.

        ``batch`` holds ``input_ids`` and ``attention_mask`` (and optionally ``token_type_ids``);
        the result maps each layer key to a float32 ``[batch, dim]`` tensor on the same device.
        """
        return self.run(batch).activations

    def run(self, batch: Mapping[str, torch.Tensor]) -> LayerOutputs:
        """Like `forward`, and for token-level strategies also the rows per example and row fields."""
        mask = batch["attention_mask"]
        inputs: dict[str, Any] = {
            k: v
            for k, v in batch.items()
            if k in ("input_ids", "attention_mask", "token_type_ids") and k in self._forward_params
        }
        if self.positions_from_mask and bool((mask[:, 0] == 0).any()):
            # left padding: positions must count real tokens only, or absolute positions shift
            inputs["position_ids"] = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        if "use_cache" in self._forward_params:
            inputs["use_cache"] = False
        plan = self.strategy.plan(dict(batch)) if isinstance(self.strategy, TokenLevelStrategy) else None
        if self._jax is not None:
            return self._run_jax(batch, plan)
        with self.hooks():
            self._mask = mask.bool()
            self._plan = plan
            self._captured = {}
            with contextlib.suppress(_StopForward):
                self.model(**inputs)
            missing = [k for k in self.layer_keys if k not in self._captured]
            if missing:
                raise ConfigError(
                    f"Layers {missing} were not reached in the forward pass; they are not used by "
                    f"{type(self.model).__name__}.forward. Select other modules."
                )
            acts = {k: self._captured[k] for k in self.layer_keys}
        if plan is None:
            return LayerOutputs(acts)
        return LayerOutputs(acts, plan.lengths, plan.row_fields)

    def _run_jax(self, batch: Mapping[str, torch.Tensor], plan: RowPlan | None) -> LayerOutputs:
        """`run` with the JAX port: its hidden states go through the same strategies as the hooks' ones."""
        hidden = self._jax(batch)
        mask = batch["attention_mask"].bool()
        acts: dict[str, torch.Tensor] = {}
        for key in self.layer_keys:
            if plan is not None:
                assert isinstance(self.strategy, TokenLevelStrategy)
                acts[key] = self.strategy.rows(hidden[key], plan).float()
            else:
                acts[key] = self.strategy.pool(hidden[key], mask).float()
        if plan is None:
            return LayerOutputs(acts)
        return LayerOutputs(acts, plan.lengths, plan.row_fields)

    @property
    def jax_compiles(self) -> int | None:
        """How many XLA compiles the JAX forward made so far (one per padded shape); None under torch."""
        return None if self._jax is None else int(self._jax.compiles)

    def extract(self, inputs: Sequence[str] | Sequence[Sequence[str]] | Mapping[str, torch.Tensor]) -> ActivationBatch:
        """Tokenize (if given texts, or word lists for pre-split input), run, pool: the seed's
        ``extract(inputs) -> ActivationBatch``."""
        if isinstance(inputs, Mapping):
            batch = dict(inputs)
        else:
            items = [inputs] if isinstance(inputs, str) else list(inputs)
            words = bool(items) and all(isinstance(x, (list, tuple)) for x in items)
            enc = self.backend.tokenizer(
                items,
                padding=True,
                truncation=True,
                return_tensors="pt",
                return_special_tokens_mask=True,
                is_split_into_words=words,
            )
            batch = dict(enc)
            if words:
                rows = [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(items))]
                batch["word_ids"] = torch.tensor(rows, dtype=torch.long)
        batch = {k: v.to(self.backend.device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        with torch.inference_mode():
            out = self.run(batch)
        counts = batch["attention_mask"].sum(dim=1).cpu().numpy()
        return ActivationBatch(
            activations={k: v.float().cpu().numpy() for k, v in out.activations.items()},
            example_ids=np.arange(len(counts)),
            token_counts=counts,
            row_counts=None if out.row_counts is None else out.row_counts.cpu().numpy(),
            row_fields=None if out.row_fields is None else {k: v.cpu().numpy() for k, v in out.row_fields.items()},
        )

    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        """The shape of one stored row of each layer (``(hidden,)`` for a block), from one forward pass
        on a two-word input: a run's arrays are made before any batch is computed."""
        words = self.strategy.mode == "words"
        sample: list[Any] = [["probing", "activations"]] if words else ["probing activations"]
        out = self.extract(sample)
        return {k: tuple(int(d) for d in v.shape[1:]) for k, v in out.activations.items()}

    def describe(self) -> dict[str, Any]:
        """What goes into run metadata."""
        return {
            "layers": self.layer_keys,
            "layer_modules": {layer.key: layer.module_name for layer in self.layers},
            "selectors": [s if isinstance(s, (int, str)) else type(s).__name__ for s in self.selectors],
            "num_blocks": self.n_blocks,
            "block_list": find_block_list(self.model)[0],
            "strategy": self.strategy.describe(),
            "early_stop": self.early_stop,
            "backend": getattr(self.backend, "framework", "torch"),
            **({"jax": self._jax.describe()} if self._jax is not None else {}),
            **({"attention": {"layers": self.attention_keys, "implementation": "eager"}} if self.attention_keys
               else {}),
        }

    # -- hooks ----------------------------------------------------------------------------------
    def _store(self, key: str, hidden: torch.Tensor) -> None:
        assert self._mask is not None
        batch, tokens = self._mask.shape
        if hidden.dim() == 2 and hidden.shape[0] == batch * tokens:
            hidden = hidden.view(batch, tokens, -1)  # OPT flattens tokens around its MLP (fc2, final_layer_norm)
        if self._plan is not None:
            assert isinstance(self.strategy, TokenLevelStrategy)
            self._captured[key] = self.strategy.rows(hidden.float(), self._plan).float()
        else:
            self._captured[key] = self.strategy.pool(hidden.float(), self._mask).float()
        if self.early_stop and len(self._captured) == len(self.layers):
            raise _StopForward

    def _store_attention(self, key: str, weights: torch.Tensor) -> None:
        """Rows ``[rows, heads, T]`` of a batch's attention probabilities: the strategy's query rows, keys in
        example-local order (`probing.attention.example_local_keys`)."""
        from probing.attention import example_local_keys

        assert self._mask is not None and self._plan is not None and isinstance(self.strategy, TokenLevelStrategy)
        local = example_local_keys(weights.float(), self._mask)
        b, h, q, k = local.shape
        by_query = local.permute(0, 2, 1, 3).reshape(b, q, h * k)
        self._captured[key] = self.strategy.rows(by_query, self._plan).reshape(-1, h, k)
        if self.early_stop and len(self._captured) == len(self.layers):
            raise _StopForward

    def _make_hook(self, layer: ResolvedLayer) -> Any:
        from probing.sites import WEIGHTS

        if layer.capture == WEIGHTS:
            from probing.attention import weights_of

            def attention_hook(module: nn.Module, args: Any, output: Any) -> None:
                self._store_attention(layer.key, weights_of(output, layer.module_name))

            return attention_hook

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._store(layer.key, _hidden_of(output))

        return hook

    def _make_pre_hook(self, layer: ResolvedLayer) -> Any:
        def pre_hook(module: nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
            if not isinstance(hidden, torch.Tensor):
                raise ConfigError(f"Cannot read the embeddings from the input of {layer.module_name}.")
            self._store(layer.key, hidden)

        return pre_hook
