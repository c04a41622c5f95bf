"""Pluggable storage of runs: writers (`Storage.open_run(run_id) -> RunWriter`) and one reader (`open_run`)."""

from probing.storage.base import RunReader, RunWriter, Storage, open_run
from probing.storage.hdf5_store import HDF5Storage
from probing.storage.npz_store import NPZStorage
from probing.storage.zarr_store import ZarrStorage

__all__ = ["HDF5Storage", "NPZStorage", "RunReader", "RunWriter", "Storage", "ZarrStorage", "get_storage", "open_run"]


def get_storage(backend: str, root: str, **options: object) -> Storage:
    """Build a storage backend by name (``zarr``, ``hdf5``, ``npz``)."""
    from probing.errors import ConfigError

    backends: dict[str, type[Storage]] = {"zarr": ZarrStorage, "hdf5": HDF5Storage, "npz": NPZStorage}
    if backend not in backends:
        raise ConfigError(f"Unknown storage backend {backend!r}; expected one of {sorted(backends)}.")
    return backends[backend](root, **options)  # type: ignore[arg-type]
