"""probing: extract transformer activations over a dataset, layer by layer, store them, probe them.

The dataflow: `ModelBackend` (model + tokenizer) -> `ActivationExtractor` (hooks, strategies) ->
`DatasetRunner` (Lightning engine) -> `Storage` (Zarr, NPZ) -> `open_run` (reader).

Names are imported lazily so that ``python -m probing`` starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ModelBackend": "probing.backend",
    "BackendModel": "probing.backend",
    "ActivationExtractor": "probing.extractor",
    "ActivationBatch": "probing.extractor",
    "ExtractionStrategy": "probing.strategies",
    "LastTokenStrategy": "probing.strategies",
    "MeanStrategy": "probing.strategies",
    "MaxStrategy": "probing.strategies",
    "CLSStrategy": "probing.strategies",
    "CustomStrategy": "probing.strategies",
    "get_strategy": "probing.strategies",
    "DatasetRunner": "probing.engine.runner",
    "RunResult": "probing.engine.runner",
    "Storage": "probing.storage.base",
    "RunWriter": "probing.storage.writer",
    "RunReader": "probing.storage.reader",
    "open_run": "probing.storage.base",
    "ZarrStorage": "probing.storage.zarr_store",
    "NPZStorage": "probing.storage.npz_export",
    "HDF5Storage": "probing.storage.hdf5_store",
    "TokensStrategy": "probing.strategies",
    "WordsStrategy": "probing.strategies",
    "TextDataset": "probing.data.sources",
    "probe_run": "probing.probes.run",
}

__all__ = [
    "probe_run",
    "HDF5Storage",
    "TokensStrategy",
    "WordsStrategy",
    "ActivationBatch",
    "ActivationExtractor",
    "BackendModel",
    "CLSStrategy",
    "CustomStrategy",
    "DatasetRunner",
    "ExtractionStrategy",
    "LastTokenStrategy",
    "MaxStrategy",
    "MeanStrategy",
    "ModelBackend",
    "NPZStorage",
    "RunReader",
    "RunResult",
    "RunWriter",
    "Storage",
    "TextDataset",
    "ZarrStorage",
    "get_strategy",
    "open_run",
]

if TYPE_CHECKING:
    from probing.backend import BackendModel, ModelBackend
    from probing.data.sources import TextDataset
    from probing.engine.runner import DatasetRunner, RunResult
    from probing.extractor import ActivationBatch, ActivationExtractor
    from probing.probes.run import probe_run
    from probing.storage.base import Storage, open_run
    from probing.storage.hdf5_store import HDF5Storage
    from probing.storage.npz_export import NPZStorage
    from probing.storage.reader import RunReader
    from probing.storage.writer import RunWriter
    from probing.storage.zarr_store import ZarrStorage
    from probing.strategies import (
        CLSStrategy,
        CustomStrategy,
        ExtractionStrategy,
        LastTokenStrategy,
        MaxStrategy,
        MeanStrategy,
        TokensStrategy,
        WordsStrategy,
        get_strategy,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'probing' has no attribute {name!r}")
