"""examples/train_sae.py end to end on a tiny planted token-level run: one epoch reads every row once and
the autoencoder learns (it explains more of the variance than the zero map: a low-rank planted signal)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np

from probing.storage.ranges import Ranges
from probing.storage.zarr_store import ZarrStorage

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_sae.py"


def test_the_sae_example_trains_one_epoch_from_the_loader(tmp_path) -> None:
    rng = np.random.default_rng(0)
    n, dim = 200, 16
    counts = rng.integers(1, 12, size=n)
    starts = np.concatenate([[0], np.cumsum(counts)])
    total = int(starts[-1])
    basis = rng.normal(size=(4, dim))  # rows are sparse non-negative mixtures of 4 directions
    codes = rng.exponential(size=(total, 4)) * (rng.random((total, 4)) < 0.3)
    acts = (codes @ basis).astype(np.float32)
    storage = ZarrStorage(str(tmp_path), chunk_rows=64)
    w = storage.open_run("t", metadata={"layers": ["x"], "dataset": {"n_examples": n}, "mode": "tokens"},
                         layout=storage.layout(n, {"x": (dim,)}, ragged=True, total_rows=total),
                         share=Ranges.span(0, n), row_starts=starts)
    w.append(0, {"x": acts}, {"example_ids": np.arange(n), "token_counts": counts, "row_counts": counts})
    w.finalize()
    spec = importlib.util.spec_from_file_location("train_sae", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_sae"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    first = module.train_one_epoch(w.path, "x", batch_size=32, lr=1e-2, l1=1e-4)
    assert first.rows == total
    assert first.variance_explained > 0.5, first
    assert 0 < first.active_latents < 4 * dim
