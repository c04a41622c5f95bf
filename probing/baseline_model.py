"""The random-weights baseline (Belinkov 2021; NeuroX has one): the same architecture, untrained.

A probe that does well on a trained model's layer may do almost as well on the same architecture
with random weights, when the property can be read off the token identities that even random
layers pass on. `random_weights` builds that control model from the loaded model's own config,
with the library's own initialisation (the trained model's class built from its config) under a fixed seed, keeping the
tokenizer, dtype and device, so that it is extracted and probed exactly like the trained model.
"""

from __future__ import annotations

import dataclasses

import torch

from probing.backend import BackendModel
from probing.errors import ConfigError

#: the seed of the random weights (the same seed gives the same weights); not 0, the seed most scripts and
#: test suites already use to build small random models, which this copy would then equal
SEED = 1234


def random_weights(trained: BackendModel, seed: int = SEED) -> BackendModel:
    """A copy of ``trained`` with freshly initialised weights: same config, tokenizer, dtype and device."""
    devices = {p.device for p in trained.model.parameters()}
    if len(devices) > 1:
        raise ConfigError(
            "The random-weights baseline copies a model on one device; this one is spread over "
            f"{sorted(map(str, devices))} (device_map). Load it on one device for the baseline, or extract the "
            "random copy separately."
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # the class the trained model was loaded as (a T5 encoder stays an encoder, remote code stays remote)
        model = type(trained.model)(trained.model.config).to(trained.dtype)
    model.eval()
    model.requires_grad_(False)
    model.to(next(iter(devices)) if devices else trained.device)
    return dataclasses.replace(
        trained, model=model, extra={**trained.extra, "weights": f"random (seed {seed})"}
    )
