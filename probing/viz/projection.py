"""2-D PCA of one layer's vectors (numpy SVD on a bounded seeded sample), with the label of each row."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probing.errors import ConfigError
from probing.viz.rows import MAX_ROWS, RunLike, open_rows, read_sample, sample_rows


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores on the first two principal components of ``x`` [n, d] and their explained-variance ratios.

    The mean is removed and the thin SVD ``X = U S V^T`` taken; the scores are ``U S`` (columns 0, 1). Each
    component's sign is fixed so that its largest-magnitude loading is positive (a deterministic picture)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 3:
        raise ConfigError(f"PCA needs a [rows >= 3, dims] array, got shape {x.shape}.")
    xc = x - x.mean(axis=0)
    u, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = min(2, len(s))
    signs = np.sign(vt[np.arange(k), np.abs(vt[:k]).argmax(axis=1)])
    signs[signs == 0] = 1.0
    scores = u[:, :k] * s[:k] * signs
    total = float((s**2).sum())
    ratio = (s[:k] ** 2) / total if total > 0 else np.zeros(k)
    if k < 2:  # one-dimensional vectors: the second axis is zero
        scores = np.column_stack([scores, np.zeros(len(x))])
        ratio = np.append(ratio, 0.0)
    return scores, ratio


def umap_2d(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 2-D UMAP embedding of ``x`` (McInnes et al. 2018), from the optional ``umap-learn`` (``.[viz]``)."""
    try:
        import umap
    except ImportError as exc:
        raise ConfigError("method='umap' needs umap-learn: pip install 'probing[viz]' (or use method='pca').") from exc
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "n_jobs overridden by setting random_state": seeded, serial
        reducer = umap.UMAP(n_components=2, random_state=seed, n_neighbors=min(15, len(x) - 1))
        return np.asarray(reducer.fit_transform(np.asarray(x, dtype=np.float32)), dtype=np.float64)


#: 2-D projections: name -> what the axes are called
METHODS = {"pca": "PC", "umap": "UMAP"}


@dataclass(frozen=True)
class Projection:
    """A layer's rows projected to 2-D: ``coords`` [n, 2], ``explained`` (variance ratio of each axis),
    ``positions`` (which rows of the run), ``values`` (the label of each row; None without a label)."""

    layer: str
    coords: np.ndarray
    explained: np.ndarray
    positions: np.ndarray
    label: str | None
    values: list[object] | None
    n_total: int
    method: str = "pca"


def label_values(rows: object, label: str) -> list[object]:
    """Every row's value of ``label`` (None where a row has none), checked to exist."""
    from probing.probes.data import load_labels

    lab = load_labels(rows, label)  # type: ignore[arg-type]
    if lab.regression:
        return [None if not np.isfinite(v) else float(v) for v in lab.y]
    return [None if c < 0 else lab.classes[int(c)] for c in lab.y]


def project_layer(run: RunLike, layer: int | str, label: str | None = None, *, max_rows: int | None = MAX_ROWS,
                  seed: int = 0, method: str = "pca") -> Projection:
    """The 2-D projection (``method``: ``"pca"``, or ``"umap"`` with ``.[viz]``) of ``layer`` on a seeded sample of
    at most ``max_rows`` rows, with ``label``'s values (``explained``: PCA's variance ratios; NaN for UMAP)."""
    if method not in METHODS:
        raise ConfigError(f"Unknown projection {method!r}; expected one of {list(METHODS)}.")
    with open_rows(run) as rows:
        key = rows.layer_key(layer)
        values = label_values(rows, label) if label is not None else None  # checked before any vector is read
        positions = sample_rows(rows.n_examples, max_rows, seed)
        x = read_sample(rows, key, positions)
        if method == "umap":
            coords, explained = umap_2d(x, seed), np.full(2, np.nan)
        else:
            coords, explained = pca_2d(x)
        picked = None if values is None else [values[int(i)] for i in positions]
        return Projection(key, coords, explained, positions, label, picked, rows.n_examples, method)
