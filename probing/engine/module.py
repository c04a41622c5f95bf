"""`ExtractionModule`: a LightningModule whose ``predict_step`` runs the model under the extractor's hooks."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from probing.extractor import ActivationExtractor


class ExtractionModule(pl.LightningModule):
    """Wraps an `ActivationExtractor` so that Lightning does device placement, precision and DDP.

    ``predict_step`` returns the batch's example ids, real token counts, padded size and the pooled
    activations of every requested layer (float32, on the device; the writer copies them out).
    """

    def __init__(self, extractor: ActivationExtractor) -> None:
        super().__init__()
        from probing.placement import is_spread

        self.extractor = extractor
        if is_spread(extractor.backend.extra.get("device_map")):
            # accelerate placed the blocks on several devices and moves activations between them; a registered
            # submodule would be gathered onto Lightning's root device, so it is held in a plain list instead
            self.placed_model = [extractor.model]
        else:
            self.model = extractor.model  # registered as a submodule: Lightning moves it to the device
        # a rank may have nothing to do (N < world size, or a resume that left it nothing)
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        out = self.extractor.run(batch)
        mask = batch["attention_mask"]
        return {
            "example_ids": batch["example_ids"],
            "token_counts": mask.sum(dim=1),
            "padded_tokens": int(mask.numel()),
            "activations": out.activations,
            "row_counts": out.row_counts,
            "row_fields": out.row_fields,
        }
