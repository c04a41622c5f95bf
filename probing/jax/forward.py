"""`JaxForward`: the extractor's forward pass in JAX, returning the selected layers as torch tensors.

Which layers: every resolved layer (`probing.layers.ResolvedLayer`) is mapped to a site of the port
(``resid_pre.i`` for the embeddings and block inputs, ``resid_post.i`` for blocks, ``resid_mid.i``,
``attn_out.i``, ``mlp_out.i``, ``final``) by the torch module it hooks; a module the ports do not expose
(e.g. ``encoder.layer.0.attention.self.query``) is a `LayerNotFoundError` before any compute.

Early stop: only blocks up to the deepest requested one are traced, so deeper blocks are never run.

Shape buckets: XLA compiles one program per input shape. Batches are padded on the right (extra pad
tokens, mask 0) to a length bucket (16, 32, 64, ..., 512, then multiples of 512) and with all-padding
rows to a power-of-two batch size, and the outputs are cut back. Padding on the right never changes
the real tokens: encoders mask the extra keys, decoders see only earlier positions, and positions are
computed from the unpadded batch. So a run makes at most (batch buckets) x (length buckets) compiles;
`JaxForward.compiles` counts the traces actually made (each trace is one XLA compile).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from probing.backend import BackendModel
from probing.errors import LayerNotFoundError
from probing.layers import ResolvedLayer, find_block_list

log = logging.getLogger(__name__)

SUB_SITES = ("resid_mid", "attn_out", "mlp_out")


def length_bucket(tokens: int) -> int:
    """The padded length of a batch of ``tokens`` tokens: 16, 32, ..., 512, then multiples of 512."""
    if tokens > 512:
        return -(-tokens // 512) * 512
    return max(16, 1 << (max(tokens, 1) - 1).bit_length())


def batch_bucket(rows: int) -> int:
    """The padded batch size: the next power of two."""
    return 1 << (max(rows, 1) - 1).bit_length()


def site_table(model: torch.nn.Module) -> dict[tuple[str, str], str]:
    """(torch module name, captured side) -> the port's site, for every site of the torch model."""
    from probing.sites import _site, final_module

    list_name, blocks = find_block_list(model)
    n = len(blocks)
    table: dict[tuple[str, str], str] = {}
    for i in range(n):
        table[(f"{list_name}.{i}", "input")] = f"resid_pre.{i}"
        table[(f"{list_name}.{i}", "output")] = f"resid_post.{i}"
        for site in SUB_SITES:
            try:
                layer = _site(site, i, model, list_name, blocks)
            except LayerNotFoundError:
                continue
            table.setdefault((layer.module_name, layer.capture), f"{site}.{i}")
    final, _ = final_module(model, list_name, n)
    table.setdefault((final, "output"), "final")  # post-norm: the last block, already resid_post.{n-1}
    return table


def site_depth(site: str, n_blocks: int) -> int:
    """How many blocks must run for ``site``."""
    if site == "final":
        return n_blocks
    name, index = site.rsplit(".", 1)
    return int(index) + (0 if name == "resid_pre" else 1)


class JaxForward:
    """Run the JAX port of ``backend`` for ``layers``; ``__call__(batch)`` gives ``{key: [B, T, H]}`` float32.

    ``forward_params`` are the torch model's forward parameters and ``positions_from_mask`` the torch
    extractor's choice: position ids from the mask (left padding) and token types are used exactly where
    the torch extractor passes them; otherwise each family's own default positions.
    """

    def __init__(self, backend: BackendModel, layers: Sequence[ResolvedLayer], *, early_stop: bool,
                 forward_params: set[str], positions_from_mask: bool) -> None:  # fmt: skip

        model = backend.model
        table = site_table(model)
        self.sites: dict[str, str] = {}
        for layer in layers:
            site = table.get((layer.module_name, layer.capture))
            if site is None:
                raise LayerNotFoundError(
                    f"Layer {layer.key!r} ({layer.capture} of module {layer.module_name}) is not computed by "
                    "model.backend=jax: its ports expose the embeddings, block indices and the named sites "
                    "resid_pre.L, resid_mid.L, resid_post.L, attn_out.L, mlp_out.L and final. Select one of those, "
                    "or use model.backend=torch for other modules."
                )
            self.sites[layer.key] = site
        self.n_blocks = len(find_block_list(model)[1])
        needed = max(site_depth(s, self.n_blocks) for s in self.sites.values())
        self.depth = needed if early_stop else self.n_blocks
        self.wanted = frozenset(self.sites.values())
        config = model.config
        self.model_type = str(getattr(config, "model_type", ""))
        self.pad_index = getattr(config, "pad_token_id", None)
        self.position_from_mask = positions_from_mask
        self.token_types = "token_type_ids" in forward_params
        self.shapes: set[tuple[int, int]] = set()
        key = (self.depth, self.wanted)
        if key not in backend.jax_compiled:
            backend.jax_compiled[key] = _Compiled(backend.jax_model, self.depth, self.wanted)
        self._compiled: _Compiled = backend.jax_compiled[key]
        self._start = self._compiled.compiles

    @property
    def compiles(self) -> int:
        """XLA compiles made for this extractor (a shape another extractor of the same model and sites
        compiled already is not compiled again)."""
        return self._compiled.compiles - self._start

    def describe(self) -> dict[str, Any]:
        """What goes into run metadata (the compile count is known at the end of a run: see the log)."""
        import flax
        import jax

        return {
            "sites": dict(self.sites),
            "blocks_run": self.depth,
            "length_buckets": "16, 32, ..., 512, then multiples of 512",
            "batch_buckets": "powers of two",
            "device": str(jax.devices()[0]),
            "jax": jax.__version__,
            "flax": flax.__version__,
        }

    def _positions(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Position ids as the torch side has them: from the mask when a row is left-padded (the torch
        extractor passes ``cumsum(mask) - 1``), else the model's own default."""
        if self.position_from_mask and bool((mask[:, 0] == 0).any()):
            return np.clip(np.cumsum(mask, axis=1) - 1, 0, None)
        if self.model_type == "roberta" and self.pad_index is not None:
            real = (ids != self.pad_index).astype(np.int64)
            return np.cumsum(real, axis=1) * real + self.pad_index  # transformers' RoBERTa positions
        return np.broadcast_to(np.arange(ids.shape[1]), ids.shape)

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        mask_t = batch["attention_mask"]
        ids = batch["input_ids"].cpu().numpy().astype(np.int64)
        mask = mask_t.cpu().numpy().astype(np.int64)
        rows, tokens = ids.shape
        positions = self._positions(ids, mask)
        types = batch.get("token_type_ids") if self.token_types else None
        shape = (batch_bucket(rows), length_bucket(tokens))
        self.shapes.add(shape)

        def pad(a: np.ndarray) -> np.ndarray:
            out = np.zeros(shape, dtype=np.int32)
            out[:rows, :tokens] = a
            return out

        token_types = None if types is None else pad(types.cpu().numpy())
        outputs = self._compiled(pad(ids), pad(mask), pad(positions), token_types)
        host = {site: np.asarray(value) for site, value in outputs.items()}  # one transfer per site
        return {
            key: torch.from_numpy(np.array(host[site][:rows, :tokens], dtype=np.float32)).to(mask_t.device)
            for key, site in self.sites.items()
        }


class _Compiled:
    """One jitted forward of a port for fixed (blocks run, sites); counts its traces (= XLA compiles)."""

    def __init__(self, model: Any, depth: int, wanted: frozenset[str]) -> None:
        import jax
        from flax import nnx

        graphdef, self.state = nnx.split(model)
        self.compiles = 0

        def forward(state: Any, ids: Any, mask: Any, positions: Any, token_types: Any) -> Any:
            self.compiles += 1  # Python runs here once per trace, i.e. once per compiled shape
            return nnx.merge(graphdef, state)(ids, mask, positions, token_types, depth=depth, wanted=wanted)

        self.fn = jax.jit(forward)

    def __call__(self, *args: Any) -> Any:
        return self.fn(self.state, *args)
