"""PNG plot of probe scores by layer: one panel per label field, one line per report (run/strategy) and method.

Each line has its 95% CI as a band, the control task as a dotted line of the same color, the
baseline (majority class; the mean for R^2) as a dashed gray line, its expected layer (centre of
gravity of the score gains) as a triangle on the top edge and its best layer as a star. matplotlib
is imported here only, and drawn through its Agg canvas without pyplot, so that neither ``import
probing`` nor a user's plotting backend is affected.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np

from probing.errors import ConfigError
from probing.probes.results import ProbeReport


def _short_layer(name: str) -> str:
    if name == "embeddings":
        return "emb"
    return name.removeprefix("blocks.")


#: marker per method, so that lines of several methods stay distinguishable where they overlap
MARKERS = {"sklearn": "o", "torch": "s", "mlp": "^", "ridge": "D"}


def _short_model(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1]


def series_names(reports: Sequence[ProbeReport]) -> list[str]:
    """Legend names of the reports: what differs among them (model, strategy, run id)."""
    if len(reports) == 1:
        return [""]
    parts: list[list[str]] = [[] for _ in reports]
    for attr, short in (("model", _short_model), ("strategy", str)):
        values = [short(getattr(r, attr)) for r in reports]
        if len(set(values)) > 1:
            for p, v in zip(parts, values, strict=True):
                p.append(v)
    names = [" ".join(p) for p in parts]
    if len(set(names)) < len(names):
        names = [f"{n} {r.run_id}".strip() for n, r in zip(names, reports, strict=True)]
    return names


def _expected_x(rep: ProbeReport, label: str, method: str, xs: np.ndarray, res: list) -> float | None:  # type: ignore[type-arg]
    """The expected layer of a curve on the plot's x axis, interpolated between the probed layers' places;
    None when its total gain is within half the best layer's CI (a flat curve has no centre of gravity)."""
    entry = next((e for e in rep.summary if e["label"] == label and e["method"] == method), None)
    if entry is None or entry.get("expected_layer") is None or not math.isfinite(float(entry["expected_layer"])):
        return None
    gain, low, high = (float(v) if v is not None else math.nan for v in (entry.get(k) for k in
                                                                           ("gain", "best_ci_low", "best_ci_high")))
    if gain <= (high - low) / 2:  # False when any is NaN (a report written before gains were stored)
        return None  # the curve gains less than its own uncertainty: there is no place to mark
    placed = [(r.layer_index, x) for r, x in zip(res, xs, strict=True) if r.layer_index is not None]
    if len(placed) < 2:
        return None
    index, x = zip(*sorted(placed), strict=True)
    return float(np.interp(float(entry["expected_layer"]), index, x))


def default_title(reports: Sequence[ProbeReport]) -> str:
    """``Probe score by layer: <model>, <strategy> pooling, <n> rows``, keeping only what all reports share."""
    parts = []
    models = {_short_model(r.model) for r in reports}
    strategies = {r.strategy for r in reports}
    rows = {r.n_rows for r in reports}
    if len(models) == 1:
        parts.append(models.pop())
    if len(strategies) == 1:
        parts.append(f"{strategies.pop()} pooling")
    if len(rows) == 1:
        parts.append(f"{rows.pop()} rows")
    return "Probe score by layer" + (": " + ", ".join(parts) if parts else "")


def plot_reports(
    reports: Sequence[ProbeReport],
    path: str | os.PathLike[str] | IO[bytes],
    *,
    names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Draw the accuracy by layer of one or several reports into a PNG at ``path`` (or a binary file); return the
    path (a file is returned as given).

    Args:
        reports: reports to compare (e.g. the same data under several strategies or models).
        names: legend name per report; default: what differs among them (model, strategy, run id).
        title: figure title; default: model, strategy and rows of the first report.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    if not reports:
        raise ConfigError("plot_reports needs at least one report.")
    if names is not None and len(names) != len(reports):
        raise ConfigError(f"plot_reports got {len(names)} names for {len(reports)} reports.")
    labels = list(dict.fromkeys(label for r in reports for label in r.label_fields))
    base = list(names) if names is not None else series_names(reports)
    n_methods = len({m for r in reports for m in r.methods})
    series = [
        (rep, method, (f"{name} {method}" if n_methods > 1 or not name else name).strip())
        for rep, name in zip(reports, base, strict=True)
        for method in rep.methods
    ]
    colors = [f"C{i % 10}" for i in range(len(series))]
    ncols = len(labels) if len(labels) <= 3 else 2 if len(labels) == 4 else 3
    nrows = math.ceil(len(labels) / ncols)
    longest = max((r.layers for r in reports), key=len)
    width = max(5.0, (0.35 * len(longest) + 2.2) * ncols)
    fig = Figure(figsize=(width, 3.4 * nrows + 1.2), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=False)
    has_control = False
    has_expected = False
    single = len(longest) == 1  # one point per line: CIs are error bars, the control task a marker
    for k, label in enumerate(labels):
        ax = axes[k // ncols][k % ncols]
        lows: list[float] = []
        majorities: set[float] = set()
        metrics: set[str] = set()
        for (rep, method, _name), color in zip(series, colors, strict=True):
            rows = {r.layer: r for r in rep.results if r.label == label and r.method == method}
            xs = np.array([i for i, layer in enumerate(rep.layers) if layer in rows])
            if len(xs) == 0:
                continue
            res = [rows[rep.layers[i]] for i in xs]
            acc = np.array([r.score for r in res])
            low_ci, high_ci = np.array([r.ci_low for r in res]), np.array([r.ci_high for r in res])
            if single:
                ax.errorbar(xs, acc, yerr=[acc - low_ci, high_ci - acc], color=color, marker=MARKERS.get(method, "o"),
                            ms=5, lw=1.5, capsize=4)
            else:
                ax.fill_between(xs, low_ci, high_ci, color=color, alpha=0.2, lw=0)
                ax.plot(xs, acc, color=color, marker=MARKERS.get(method, "o"), ms=4, lw=1.5)
            control = np.array([r.control_score for r in res])
            if np.isfinite(control).any():
                has_control = True
                ax.plot(xs, control, color=color, ls=":", lw=1.2, alpha=0.8, marker="x" if single else None, ms=6)
                lows.extend(control[np.isfinite(control)].tolist())
            majorities.add(round(res[0].baseline, 6))
            lows.extend([r.ci_low for r in res])
            metrics.add(res[0].metric)
            best = int(np.nanargmax(acc)) if np.isfinite(acc).any() else None
            if best is not None:
                ax.plot([xs[best]], [acc[best]], color=color, marker="*", ms=11, mec="white", mew=0.6, zorder=5)
            x_expected = _expected_x(rep, label, method, xs, res)
            if x_expected is not None:
                has_expected = True
                ax.plot([x_expected], [1.0], color=color, marker="v", ms=8, clip_on=False, zorder=5,
                        transform=ax.get_xaxis_transform())
        for m in sorted(majorities):
            ax.axhline(m, color="0.45", ls="--", lw=1.1)
            lows.append(m)
        ax.set_title(label, fontsize=10)
        ax.set_xticks(range(len(longest)))
        ax.set_xticklabels([_short_layer(layer) for layer in longest], fontsize=8)
        ax.set_xlim(-0.3, len(longest) - 0.7)
        low = min([v for v in lows if math.isfinite(v)], default=0.0)
        ax.set_ylim(max(0.0 if metrics <= {"accuracy"} else -0.2, low - 0.05), 1.02)
        ax.grid(True, alpha=0.3, lw=0.5)
        ax.tick_params(labelsize=8)
        if k % ncols == 0 or metrics == {"r2"}:
            ax.set_ylabel("test R$^2$" if metrics == {"r2"} else "test accuracy", fontsize=9)
        if k // ncols == nrows - 1:
            ax.set_xlabel("layer (emb = embeddings)", fontsize=9)
    for k in range(len(labels), nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    handles = [
        Line2D([], [], color=c, marker=MARKERS.get(method, "o"), ms=4, lw=1.5, label=name or method)
        for (_rep, method, name), c in zip(series, colors, strict=True)
    ]
    if single:
        handles.append(Line2D([], [], color="0.3", marker="|", ms=10, lw=0, label="95% CI (bar)"))
    else:
        handles.append(Line2D([], [], color="0.3", lw=6, alpha=0.25, label="95% CI"))
    if has_control:
        handles.append(Line2D([], [], color="0.3", ls=":" if not single else "", marker="x" if single else None,
                              lw=1.2, label="control task"))
    kinds = {r.metric for rep in reports for r in rep.results}
    name = {"accuracy": "majority baseline", "r2": "mean baseline"}
    baseline = " / ".join(name[k] for k in sorted(kinds) if k in name)
    handles.append(Line2D([], [], color="0.45", ls="--", lw=1.1, label=baseline))
    handles.append(Line2D([], [], color="0.3", marker="*", ms=9, lw=0, label="best layer"))
    if has_expected:
        handles.append(Line2D([], [], color="0.3", marker="v", ms=7, lw=0, label="expected layer"))
    per_row = max(1, int(width * 110 / 150))  # legend entries that fit one row of this width
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), per_row), fontsize=8,
               frameon=False)
    text = title or default_title(reports)
    fig.suptitle(textwrap.fill(text, max(30, int(width * 11))), fontsize=11)
    if not isinstance(path, (str, os.PathLike)):
        fig.savefig(path, format="png")
        return path  # type: ignore[return-value]
    p = Path(path)
    fig.savefig(p, format="png")
    return p
