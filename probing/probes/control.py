"""Control tasks (Hewitt & Liang, 2019, "Designing and Interpreting Probes with Control Tasks").

Every word type (or whatever ``control_field`` holds: the word form, or the text of a sentence)
gets one random label, fixed for all its rows, drawn from the task's label distribution. A probe
can only do well on such a task by memorizing types, not by reading the property from the
representation, so ``selectivity = task accuracy - control accuracy`` tells how much of a probe's
accuracy is due to the representation rather than to the probe's own capacity.
"""

from __future__ import annotations

import zlib

import numpy as np


def control_labels(types: np.ndarray, y: np.ndarray, n_classes: int, *, seed: int = 0, salt: str = "") -> np.ndarray:
    """Random labels that are a fixed function of the type of each row.

    Args:
        types: per-row type (word form, text); rows with equal types get equal labels.
        y: the task's integer labels; their empirical distribution is the one labels are drawn from.
        n_classes: number of classes of the task.
        seed: with ``salt`` (the label field name), selects the random mapping; the same
            arguments always give the same labels.
    """
    keys = np.asarray([str(t) for t in np.asarray(types).tolist()], dtype=object)
    uniq, inverse = np.unique(keys, return_inverse=True)
    p = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(np.float64)
    p /= p.sum()
    rng = np.random.default_rng([seed, zlib.crc32(salt.encode())])
    per_type = rng.choice(n_classes, size=len(uniq), p=p)
    return per_type[inverse.reshape(-1)].astype(np.int64)


def control_values(types: np.ndarray, y: np.ndarray, *, seed: int = 0, salt: str = "") -> np.ndarray:
    """The control task of a real-valued label: every type gets one value drawn from the label's values.

    As for `control_labels`, a probe can only predict these by memorizing types.
    """
    keys = np.asarray([str(t) for t in np.asarray(types).tolist()], dtype=object)
    uniq, inverse = np.unique(keys, return_inverse=True)
    rng = np.random.default_rng([seed, zlib.crc32(salt.encode())])
    per_type = rng.choice(np.asarray(y, dtype=np.float64), size=len(uniq), replace=True)
    return per_type[inverse.reshape(-1)]
