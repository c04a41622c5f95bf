"""Linear CKA (Kornblith et al. 2019) between the layers of one run, or between two runs over the same examples.

``CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on column-centred ``X``, ``Y``; computed through the
Gram matrices ``K = X X^T`` (``||Y^T X||_F^2 = <K, L>``), so that wide layers cost no more than narrow ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from probing.errors import ConfigError
from probing.viz.rows import MAX_ROWS, RunLike, open_rows, read_sample, sample_rows

#: most rows CKA reads by default: its Gram matrices are rows x rows
CKA_ROWS = 1000


def _centred_gram(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0)
    return x @ x.T


def _cka_from_grams(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741 - the paper's names
    den = np.sqrt(np.vdot(k, k) * np.vdot(l, l))
    return float(np.vdot(k, l) / den) if den > 0 else float("nan")


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same ``n`` rows (``x`` [n, d1], ``y`` [n, d2]); NaN if one is
    constant."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ConfigError(f"CKA needs two [n, d] arrays over the same rows, got shapes {x.shape} and {y.shape}.")
    return _cka_from_grams(_centred_gram(x), _centred_gram(y))


@dataclass(frozen=True)
class CKAResult:
    """``matrix[i, j]`` is the CKA of ``layers_a[i]`` (of run ``run_a``) and ``layers_b[j]`` (of ``run_b``) on
    ``n_rows`` rows (a seeded sample of ``n_total``)."""

    matrix: np.ndarray
    layers_a: list[str]
    layers_b: list[str]
    run_a: str
    run_b: str
    n_rows: int
    n_total: int


def _same_rows(a: object, b: object, positions: np.ndarray) -> None:
    """Refuse two runs whose rows are not the same examples: counts, per-example rows, texts."""
    na, nb = a.n_examples, b.n_examples  # type: ignore[attr-defined]
    if na != nb:
        raise ConfigError(
            f"CKA between runs compares the same examples; {a.run_id} has {na} rows and {b.run_id} has {nb}."  # type: ignore[attr-defined]
            " Extract both models over the same data (same data.* options and limit)."
        )
    for field in ("sentence_id", "text", "word"):
        fa, fb = a.example_fields, b.example_fields  # type: ignore[attr-defined]
        if field in fa and field in fb:
            va = np.asarray(a.example_metadata(field))[positions]  # type: ignore[attr-defined]
            vb = np.asarray(b.example_metadata(field))[positions]  # type: ignore[attr-defined]
            if not np.array_equal(va, vb):
                bad = int(np.flatnonzero(va != vb)[0])
                raise ConfigError(
                    f"CKA between runs compares the same examples; row {int(positions[bad])} has {field} "
                    f"{str(va[bad])[:60]!r} in {a.run_id} and {str(vb[bad])[:60]!r} in {b.run_id}."  # type: ignore[attr-defined]
                    " Extract both models over the same data in the same order."
                )


def _layers(rows: object, layers: Sequence[int | str] | None) -> list[str]:
    keys = rows.layers if layers is None else [rows.layer_key(s) for s in layers]  # type: ignore[attr-defined]
    return list(dict.fromkeys(keys))


def cka_matrix(run_a: RunLike, run_b: RunLike | None = None, *, layers_a: Sequence[int | str] | None = None,
               layers_b: Sequence[int | str] | None = None, max_rows: int | None = CKA_ROWS,
               seed: int = 0) -> CKAResult:
    """Linear CKA between every layer of ``run_a`` and every layer of ``run_b`` (default: ``run_a`` itself),
    on one seeded sample of at most ``max_rows`` rows, the same rows in both runs."""
    if max_rows is not None and max_rows > 20 * MAX_ROWS:
        raise ConfigError(f"max_rows={max_rows} makes {max_rows}^2 Gram matrices; use at most {20 * MAX_ROWS}.")
    with open_rows(run_a) as a:
        keys_a = _layers(a, layers_a)
        positions = sample_rows(a.n_examples, max_rows, seed)
        if run_b is None:
            keys_b = _layers(a, layers_b) if layers_b is not None else keys_a
            grams = {k: _centred_gram(read_sample(a, k, positions)) for k in dict.fromkeys([*keys_a, *keys_b])}
            grams_a, grams_b, name_b = [grams[k] for k in keys_a], [grams[k] for k in keys_b], a.run_id
        else:
            with open_rows(run_b) as b:
                _same_rows(a, b, positions)  # before any vector is read
                keys_b = _layers(b, layers_b)
                grams_b = [_centred_gram(read_sample(b, k, positions)) for k in keys_b]
                name_b = b.run_id
            grams_a = [_centred_gram(read_sample(a, k, positions)) for k in keys_a]
        matrix = np.array([[_cka_from_grams(ka, kb) for kb in grams_b] for ka in grams_a])
        return CKAResult(matrix, keys_a, keys_b, a.run_id, name_b, len(positions), a.n_examples)
