"""Content-addressed run identity: a hash of what determines a run's values, and finding runs that serve a request.

A run's *identity* hashes what its arrays depend on, read from its metadata:

- the model: a fingerprint of its weights (`weights_fingerprint`: every parameter's name, shape, dtype
  and a strided sample of its values), its revision, the dtype it ran in, the tokenizer (a hash of its
  vocabulary and special tokens) and the padding side;
- what was kept: the layers (stored keys), the strategy and its options, the mode, the max length;
- the data: the dataset fingerprint, the text and words fields;
- the stored dtype (float16 values differ from float32 ones).

Not in it: how the run ran (ranks, devices, batch size, bucketing, token budget, workers), where it
went (output folder, run id), when, and package versions (recorded, not hashed: a new transformers
release does not invalidate every run; `probing runs` shows them).

The *source key* is the same hash without layers, strategy and mode: two runs with one source key saw
the same model on the same data, so a run's layers serve any subset of them, and a token-level run
that kept every token (``tokens`` with ``keep_special=true``) serves the pooled strategies (`POOLABLE`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: pooled strategies a token-level run with every token can give without the model (first = cls)
POOLABLE = ("mean", "max", "last", "cls")
#: values sampled per parameter tensor for the weights fingerprint
SAMPLE_VALUES = 4096


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def weights_fingerprint(model: Any) -> str:
    """A hash of a torch model's weights: every parameter and buffer's name, shape and dtype, and up to
    `SAMPLE_VALUES` evenly spaced values of each (float32 bytes). Fast (a sample, not every byte); two
    checkpoints of one architecture differ in it unless they agree on every sampled value."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            h.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            flat = tensor.detach().reshape(-1)
            if flat.numel() > SAMPLE_VALUES:
                flat = flat[:: flat.numel() // SAMPLE_VALUES][:SAMPLE_VALUES]
            h.update(flat.float().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of a tokenizer's vocabulary, special tokens and class (what turns text into ids)."""
    try:
        vocab = sorted(tokenizer.get_vocab().items())
    except Exception:  # noqa: BLE001 - a tokenizer without get_vocab: its class and size only
        vocab = [("size", len(tokenizer))]
    special = getattr(tokenizer, "all_special_tokens", [])
    return _digest([type(tokenizer).__name__, vocab, list(special)])[:32]


def _get(meta: Mapping[str, Any], *path: str) -> Any:
    value: Any = meta
    for part in path:
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def source_fields(meta: Mapping[str, Any]) -> dict[str, Any]:
    """What a run's values depend on besides layers and strategy (model, data, lengths, dtypes).

    The framework is part of it when it is not torch: a JAX run equals the torch run within 1e-5 but not
    bit for bit, so reuse never serves one for the other (torch runs keep the identities they had before
    the JAX backend existed)."""
    backend = _get(meta, "model", "backend")
    return {
        **({"backend": backend} if backend not in (None, "torch") else {}),
        "weights": _get(meta, "model", "weights_fingerprint"),
        "revision": _get(meta, "model", "revision"),
        "model_dtype": _get(meta, "model", "dtype"),
        "tokenizer": _get(meta, "model", "tokenizer_fingerprint"),
        "padding_side": _get(meta, "model", "padding_side"),
        "max_length": meta.get("max_length"),
        "dataset": _get(meta, "dataset", "fingerprint"),
        "n_examples": _get(meta, "dataset", "n_examples"),
        "text_field": _get(meta, "dataset", "text_field"),
        "words_field": _get(meta, "dataset", "words_field"),
    }


def identity_fields(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the identity hashes: `source_fields`, the layers, strategy, mode and stored dtype."""
    return {
        **source_fields(meta),
        "layers": list(meta.get("layers", [])),
        "strategy": meta.get("strategy"),
        "mode": meta.get("mode", "pooled"),
        "storage_dtype": _get(meta, "storage", "dtype"),
    }


def run_identity(meta: Mapping[str, Any]) -> str:
    """The run's identity: 16 hex digits of the hash of `identity_fields`."""
    return _digest(identity_fields(meta))[:16]


def source_key(meta: Mapping[str, Any]) -> str:
    """16 hex digits of the hash of `source_fields`: runs of one model on one data."""
    return _digest(source_fields(meta))[:16]


def fingerprinted(meta: Mapping[str, Any]) -> bool:
    """True if the metadata carries the fingerprints the identity needs (runs written before it do not)."""
    return bool(_get(meta, "model", "weights_fingerprint")) and bool(_get(meta, "dataset", "fingerprint"))


@dataclass(frozen=True)
class StoredRun:
    """A run found in a folder: where, its metadata, its identity and source key."""

    path: str
    meta: dict[str, Any]

    @property
    def identity(self) -> str | None:
        return run_identity(self.meta) if fingerprinted(self.meta) else None

    @property
    def source(self) -> str | None:
        return source_key(self.meta) if fingerprinted(self.meta) else None

    @property
    def completed(self) -> bool:
        return bool(self.meta.get("completed"))


def stored_runs(folder: str) -> list[StoredRun]:
    """Every run directly inside ``folder`` (local), with its metadata; unreadable ones are skipped."""
    from probing.storage.registry import backend_of

    p = Path(folder)
    if not p.is_dir():
        return []
    out = []
    for child in sorted(p.iterdir()):
        if not child.is_dir():
            continue
        backend = backend_of(str(child))
        if backend is None:
            continue
        try:
            store = backend.open_existing(str(child))
        except Exception:  # noqa: BLE001 - a damaged run is not a candidate
            continue
        try:
            meta = dict(store.get_attrs("").get("probing", {}))
        finally:
            store.close()
        out.append(StoredRun(str(child), meta))
    return out


@dataclass(frozen=True)
class Reuse:
    """How a request is served from a stored run: ``whole`` (the same identity), ``layers`` (a subset
    of its layers) or ``pool`` (a pooled strategy from its token-level rows)."""

    kind: str
    run: StoredRun


def _dtype_serves(source: str | None, wanted: str | None, pooling: bool) -> bool:
    """float32 rows serve float32 and float16 requests (a cast, as a fresh run casts); float16 rows serve
    float16 layer subsets only (pooling float16 rows is not pooling the float32 states)."""
    if source == wanted:
        return not pooling or source == "float32"
    return source == "float32" and wanted == "float16"


def find_reuse(folder: str, meta: Mapping[str, Any], *, partial: bool = True) -> Reuse | None:
    """A completed run under ``folder`` that serves the request ``meta`` (a run's metadata-to-be), best first
    (among equals, the oldest by creation time):
    the same identity, else (with ``partial``) a run with all the requested layers (and the requested
    strategy, or every token for a pooled one). None if nothing serves it."""
    if not fingerprinted(meta):
        return None
    wanted_id, wanted_src = run_identity(meta), source_key(meta)
    runs = [r for r in stored_runs(folder) if r.completed and r.source == wanted_src]
    runs.sort(key=lambda r: (str(r.meta.get("created", "")), r.path))  # the oldest first: what a rerun gets
    for r in runs:
        if r.identity == wanted_id:
            return Reuse("whole", r)
    if not partial:
        return None
    layers = list(meta.get("layers", []))
    strategy = meta.get("strategy") or {}
    dtype = _get(meta, "storage", "dtype")
    for r in runs:
        if not set(layers) <= set(r.meta.get("layers", [])):
            continue
        r_dtype = _get(r.meta, "storage", "dtype")
        if r.meta.get("strategy") == strategy and r.meta.get("mode") == meta.get("mode"):
            if _dtype_serves(r_dtype, dtype, pooling=False):
                return Reuse("layers", r)
        elif (meta.get("mode", "pooled") == "pooled" and strategy.get("name") in POOLABLE
              and not strategy.get("use_pooler") and r.meta.get("strategy") == {"name": "tokens", "keep_special": True}
              and _dtype_serves(r_dtype, dtype, pooling=True)):
            return Reuse("pool", r)
    return None


def pool_rows(rows: np.ndarray, offsets: np.ndarray, name: str) -> np.ndarray:
    """Pool a token-level layer ``rows`` [total, dim] per example (``offsets``) the way the strategy pools
    the padded batch: mean, max, last or first (cls) over every token (float32). An example with no rows
    has no pooled value; the caller refuses those runs (`poolable`)."""
    counts = np.diff(offsets)
    starts = offsets[:-1]
    if name == "mean":
        sums = np.add.reduceat(rows.astype(np.float64), starts, axis=0) if len(rows) else rows
        return (sums / counts[:, None]).astype(np.float32)
    if name == "max":
        return np.maximum.reduceat(rows, starts, axis=0).astype(np.float32)
    if name == "last":
        return rows[offsets[1:] - 1].astype(np.float32)
    if name == "cls":
        return rows[starts].astype(np.float32)
    raise ValueError(f"cannot pool {name!r}")
