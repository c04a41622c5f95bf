"""Storage backends by name: ``storage.backend=zarr`` in a config, and which backend wrote a run folder.

Adding a backend is one module (a `Storage` subclass with its `ArrayStore`) and one line here.
Modules are imported only when used, so ``import probing`` stays fast.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from probing.errors import ConfigError, close_matches
from probing.storage.base import Storage, is_url

#: name -> "module:class"
BACKENDS: dict[str, str] = {
    "zarr": "probing.storage.zarr_store:ZarrStorage",
    "hdf5": "probing.storage.hdf5_store:HDF5Storage",
    "npz": "probing.storage.npz_export:NPZStorage",
}


def backend_class(name: str) -> type[Storage]:
    """The `Storage` class registered under ``name``."""
    if name not in BACKENDS:
        raise ConfigError(
            f"Unknown storage backend {name!r}.{close_matches(name, BACKENDS)} Expected one of {sorted(BACKENDS)}."
        )
    module, _, cls = BACKENDS[name].partition(":")
    backend: type[Storage] = getattr(importlib.import_module(module), cls)
    return backend


def get_storage(backend: str, root: str, **options: Any) -> Storage:
    """Build a storage backend by name (``zarr``, ``hdf5``, ``npz``) with its options."""
    return backend_class(backend)(root, **options)


def backend_of(path: str) -> type[Storage] | None:
    """The backend whose run is at ``path``, or None if there is no run there."""
    for name in BACKENDS:
        cls = backend_class(name)
        if is_url(path) and not cls.supports_urls:
            continue
        if cls.detect(path):
            return cls
    return None


def list_runs(folder: str) -> list[str]:
    """Names of the runs directly inside a local folder."""
    p = Path(folder)
    if is_url(folder) or not p.is_dir():
        return []
    return sorted(x.name for x in p.iterdir() if x.is_dir() and backend_of(str(x)) is not None)
