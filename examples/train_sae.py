"""Train a small sparse autoencoder for one epoch on a stored run, read through the shuffled loader.

    python examples/train_sae.py runs/<run id> --layer -1 [--expansion 4] [--l1 1e-3] [--batch-size 4096]

The run can be token-level (``+strategy=tokens``: one row per token, the usual SAE data) or pooled.
Rows come from ``reader.loader``: whole chunks in a seeded random order, mixed in a bounded buffer,
split between DataLoader workers (and DDP ranks, from torch.distributed) with no row seen twice.
The SAE is ``z = relu(W_e (x - b_d) + b_e)``, ``x_hat = W_d z + b_d`` with unit-norm decoder columns,
trained on ``mse + l1 * |z|_1``; it prints the loss, the fraction of variance explained and the mean
number of active latents per row.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch import nn

from probing import open_run


class SparseAutoencoder(nn.Module):
    def __init__(self, dim: int, latents: int) -> None:
        super().__init__()
        self.encoder = nn.Linear(dim, latents)
        self.decoder = nn.Linear(latents, dim)
        with torch.no_grad():
            self.decoder.weight.copy_(self.encoder.weight.T)
            self.normalize()

    def normalize(self) -> None:
        """Unit-norm decoder columns (so the L1 penalty cannot be dodged by scaling)."""
        with torch.no_grad():
            self.decoder.weight /= self.decoder.weight.norm(dim=0, keepdim=True).clamp(min=1e-8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = torch.relu(self.encoder(x - self.decoder.bias))
        return self.decoder(z), z


@dataclass
class EpochResult:
    rows: int
    loss: float
    variance_explained: float
    active_latents: float


def train_one_epoch(run: str, layer: int | str = -1, *, expansion: int = 4, l1: float = 1e-3, lr: float = 1e-3,
                    batch_size: int = 4096, num_workers: int = 0, seed: int = 0) -> EpochResult:
    """One epoch of SAE training on ``layer`` of the run at ``run``."""
    torch.manual_seed(seed)
    with open_run(run) as reader:
        loader = reader.loader(layer, batch_size, shuffle=True, seed=seed)
    dim = int(loader.row_shape[0])
    sae = SparseAutoencoder(dim, expansion * dim)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    rows = 0
    sq_err = sq_dev = loss_sum = active = 0.0
    loader.set_epoch(0)
    for x in loader.dataloader(num_workers=num_workers):
        x_hat, z = sae(x)
        mse = (x_hat - x).pow(2).sum(dim=1).mean()
        loss = mse + l1 * z.abs().sum(dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sae.normalize()
        with torch.no_grad():
            rows += len(x)
            loss_sum += float(loss) * len(x)
            sq_err += float((x_hat - x).pow(2).sum())
            sq_dev += float((x - x.mean(dim=0)).pow(2).sum())
            active += float((z > 0).sum())
    return EpochResult(rows, loss_sum / max(rows, 1), 1 - sq_err / max(sq_dev, 1e-12), active / max(rows, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--layer", default="-1")
    ap.add_argument("--expansion", type=int, default=4)
    ap.add_argument("--l1", type=float, default=1e-3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=0)
    a = ap.parse_args()
    r = train_one_epoch(a.run, a.layer, expansion=a.expansion, l1=a.l1, lr=a.lr, batch_size=a.batch_size,
                        num_workers=a.workers)
    print(f"rows {r.rows:,}  loss {r.loss:.4f}  variance explained {r.variance_explained:.3f}  "
          f"active latents/row {r.active_latents:.1f}")


if __name__ == "__main__":
    main()
