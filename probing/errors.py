"""Exception classes of `probing`.

Every error says what was given, what was expected, and what to do. They are raised before any
compute starts wherever the input allows it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ProbingError(Exception):
    """Base class of all errors raised by `probing`."""


class ConfigError(ProbingError, ValueError):
    """An option or combination of options is invalid."""


class DeviceError(ProbingError, RuntimeError):
    """A requested device does not exist on this machine."""


class ModelLoadError(ProbingError, OSError):
    """A model or tokenizer could not be loaded."""


class LayerNotFoundError(ProbingError, KeyError):
    """A layer selector matches no module of the model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatasetError(ProbingError, ValueError):
    """The dataset is malformed (missing text field, empty example, ...)."""


class RunExistsError(ProbingError, FileExistsError):
    """A completed run already exists where a new one was to be written."""


class RunIncompleteError(ProbingError, RuntimeError):
    """A run was opened for reading but never completed."""


class NonFiniteError(ProbingError, RuntimeError):
    """Activations hold NaN or inf (or values beyond the storage dtype's range); the run stays incomplete."""


class StorageWriteError(ProbingError, OSError):
    """The storage refused a write (disk full, quota, read-only, permissions). What was already durable
    stays, and a resume finishes the run once the cause is fixed."""

    exit_code = 74  # EX_IOERR: not bad input, and not something a retry alone fixes


class DamagedRunError(ProbingError, OSError):
    """Stored data does not read back as written: a missing, altered or resized chunk."""


class ResumeMismatchError(ProbingError, ValueError):
    """A run was resumed with settings that differ from the ones it started with."""


def close_matches(word: str, candidates: Iterable[str], n: int = 5) -> str:
    """Return a short 'did you mean' phrase for ``word`` among ``candidates`` (empty if none)."""
    matches = difflib.get_close_matches(word, list(candidates), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(repr(m) for m in matches)}?" if matches else ""
