"""`RunDataset`: a ``torch.utils.data.Dataset`` over a stored run that reads one chunk at a time."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset


class RunDataset(Dataset[dict[str, torch.Tensor]]):
    """Examples of a run; item ``i`` is ``{layer key: tensor}`` (``[dim]``, or ``[rows, dim]`` for tokens).

    Rows are read in blocks of ``block_rows`` and one block per layer is cached, so sequential access
    reads each block once and memory stays at one block per layer, whatever the run's size.
    """

    def __init__(self, reader: Any, layers: list[str], block_rows: int = 4096) -> None:
        self.reader = reader
        self.layers = layers
        self.block_rows = block_rows
        self.offsets = reader.offsets
        self._cache: dict[str, tuple[int, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def _rows(self, layer: str, start: int, stop: int) -> np.ndarray:
        block = start // self.block_rows
        cached = self._cache.get(layer)
        if stop <= (block + 1) * self.block_rows:
            if cached is None or cached[0] != block:
                path = f"layers/{layer}"
                total = self.reader.store.shape(path)[0]
                lo = block * self.block_rows
                cached = (block, self.reader.store.read(path, lo, min(total, lo + self.block_rows)))
                self._cache[layer] = cached
            lo = block * self.block_rows
            return cached[1][start - lo : stop - lo]
        return self.reader.store.read(f"layers/{layer}", start, stop)  # an example longer than a block

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        s, e = int(self.offsets[index]), int(self.offsets[index + 1])
        out = {}
        for layer in self.layers:
            rows = torch.from_numpy(np.array(self._rows(layer, s, e), dtype=np.float32))
            out[layer] = rows if self.reader.ragged else rows[0]
        return out
