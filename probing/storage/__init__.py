"""Pluggable storage of runs: writers (`Storage.open_run(run_id) -> RunWriter`) and one reader (`open_run`).

Backends (`probing.storage.registry`): Zarr (default), HDF5, NPZ (an export of a finished run).
"""

from probing.storage.base import Storage, open_run
from probing.storage.hdf5_store import HDF5Storage
from probing.storage.npz_export import NPZStorage, export_npz
from probing.storage.reader import RunReader
from probing.storage.registry import get_storage
from probing.storage.writer import RunWriter
from probing.storage.zarr_store import ZarrStorage

__all__ = [
    "HDF5Storage",
    "NPZStorage",
    "RunReader",
    "RunWriter",
    "Storage",
    "ZarrStorage",
    "export_npz",
    "get_storage",
    "open_run",
]
