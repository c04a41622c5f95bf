"""PNG figures of projections and CKA matrices (matplotlib's Agg canvas, no pyplot)."""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from probing.errors import ConfigError
from probing.viz.projection import Projection, project_layer
from probing.viz.rows import MAX_ROWS, RunLike, open_rows
from probing.viz.similarity import CKA_ROWS, CKAResult, cka_matrix

#: most panels of a projection figure: more layers are thinned to this many, evenly spaced
MAX_PANELS = 12
Target = str | os.PathLike[str] | IO[bytes]


def _short(layer: str) -> str:
    return "emb" if layer == "embeddings" else layer.removeprefix("blocks.")


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, out: Target) -> Path | IO[bytes]:
    fig.savefig(out, format="png")
    return Path(out) if isinstance(out, (str, os.PathLike)) else out


def thin_layers(layers: Sequence[str], most: int = MAX_PANELS) -> list[str]:
    """At most ``most`` of ``layers``, evenly spaced, first and last kept."""
    if len(layers) <= most:
        return list(layers)
    picks = np.unique(np.round(np.linspace(0, len(layers) - 1, most)).astype(int))
    return [layers[i] for i in picks]


def _draw_projection(ax: Any, proj: Projection) -> Any:
    """Scatter one projection, coloured by its label: classes get a legend, real values a colour scale."""
    x, y = proj.coords[:, 0], proj.coords[:, 1]
    handle = None
    if proj.values is None:
        ax.scatter(x, y, s=6, alpha=0.6, lw=0, color="C0")
    else:
        have = np.array([v is not None for v in proj.values])
        ax.scatter(x[~have], y[~have], s=5, alpha=0.3, lw=0, color="0.7")
        present = [v for v in proj.values if v is not None]
        if present and all(isinstance(v, float) for v in present):
            handle = ax.scatter(x[have], y[have], c=np.array(present, dtype=float), s=6, alpha=0.7,
                                lw=0, cmap="viridis")
        else:
            classes = sorted({str(v) for v in present})
            for j, c in enumerate(classes):
                keep = np.array([v is not None and str(v) == c for v in proj.values])
                ax.scatter(x[keep], y[keep], s=6, alpha=0.7, lw=0, color=f"C{j % 10}", label=c)
    pcs = proj.explained
    detail = f"  (PC1 {100 * pcs[0]:.0f}%, PC2 {100 * pcs[1]:.0f}%)" if proj.method == "pca" else ""
    ax.set_title(proj.layer + detail, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return handle


def plot_projection(run: RunLike, out: Target, *, layers: Sequence[int | str] | None = None,
                    label: str | None = None, max_rows: int | None = MAX_ROWS, seed: int = 0,
                    title: str | None = None, method: str = "pca") -> Path | IO[bytes]:
    """A PNG grid of 2-D projections (``method``: ``"pca"``, or ``"umap"`` with ``.[viz]``), one panel per layer
    (default: every layer, at most `MAX_PANELS`), points coloured by ``label``; written to ``out`` (a path or a
    binary file); returns ``out``."""
    with open_rows(run) as rows:
        keys = thin_layers(rows.layers) if layers is None else [rows.layer_key(s) for s in layers]
        if not keys:
            raise ConfigError("plot_projection got no layers.")
        projections = [project_layer(rows.reader if hasattr(rows, "reader") else rows, k, label,
                                     max_rows=max_rows, seed=seed, method=method) for k in keys]
        model = str(rows.metadata.get("model", {}).get("name_or_path", "")).rstrip("/").rsplit("/", 1)[-1]
        run_id = rows.run_id
    ncols = min(len(keys), 4)
    nrows = math.ceil(len(keys) / ncols)
    width = max(4.6, 2.8 * ncols + 0.6)
    fig = _figure(width, 2.6 * nrows + 1.1)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    handle = None
    for k, proj in enumerate(projections):
        handle = _draw_projection(axes[k // ncols][k % ncols], proj) or handle
    for k in range(len(projections), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    first = projections[0]
    if handle is not None:
        fig.colorbar(handle, ax=axes, shrink=0.8, label=label)
    elif label is not None:
        hs, ls = axes[0][0].get_legend_handles_labels()
        if len(ls) > 12:
            hs, ls = hs[:12], [*ls[:11], f"... ({len(ls)} classes)"]
        fig.legend(hs, ls, loc="outside lower center", ncol=min(len(ls), 8), fontsize=8, frameon=False,
                   markerscale=2, title=label, title_fontsize=8)
    sample = f"{len(first.positions):,} of {first.n_total:,} rows" if len(first.positions) < first.n_total else \
        f"{first.n_total:,} rows"
    who = f"{model} ({run_id})" if model else run_id
    text = title or f"{method.upper()} by layer: {who}, {sample}"
    fig.suptitle(textwrap.fill(text, int(width * 12)), fontsize=10)
    return _save(fig, out)


def plot_cka(run_a: RunLike | CKAResult, out: Target, run_b: RunLike | None = None, *,
             layers_a: Sequence[int | str] | None = None, layers_b: Sequence[int | str] | None = None,
             max_rows: int | None = CKA_ROWS, seed: int = 0, names: Sequence[str] | None = None,
             title: str | None = None) -> Path | IO[bytes]:
    """A PNG heatmap of linear CKA between the layers of one run (or of two runs over the same examples);
    ``run_a`` may be a computed `CKAResult`. Returns ``out``."""
    res = run_a if isinstance(run_a, CKAResult) else cka_matrix(run_a, run_b, layers_a=layers_a, layers_b=layers_b,
                                                               max_rows=max_rows, seed=seed)
    name_a, name_b = names if names is not None else (res.run_a, res.run_b)
    na, nb = len(res.layers_a), len(res.layers_b)
    fig = _figure(max(4.0, 0.45 * nb + 2.4), max(3.4, 0.4 * na + 1.6))
    ax = fig.subplots()
    im = ax.imshow(res.matrix, vmin=0.0, vmax=1.0, cmap="magma", origin="lower", aspect="auto")
    if na * nb <= 400:
        for i in range(na):
            for j in range(nb):
                v = res.matrix[i, j]
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if v > 0.6 else "white")
    ax.set_xticks(range(nb), [_short(k) for k in res.layers_b], fontsize=8)
    ax.set_yticks(range(na), [_short(k) for k in res.layers_a], fontsize=8)
    ax.set_xlabel(f"layer of {name_b}", fontsize=9)
    ax.set_ylabel(f"layer of {name_a}", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.9, label="linear CKA")
    what = "between layers" if res.run_a == res.run_b and name_a == name_b else f"{name_a} vs {name_b}"
    text = title or f"Linear CKA {what}, {res.n_rows:,} rows"
    fig.suptitle(textwrap.fill(text, int(max(4.0, 0.45 * nb + 2.4) * 12)), fontsize=10)
    return _save(fig, out)
