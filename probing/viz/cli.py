"""``python -m probing plot RUN [RUN2 ...]`` (PCA, CKA heatmap, probe curves as PNG) and ``python -m probing report
RUN`` (the self-contained HTML report)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

KINDS = ("pca", "umap", "cka", "curves")


def _plot_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m probing plot",
        description="Draw a PNG of stored runs: --kind pca (2-D PCA per layer coloured by --label; umap the same with "
        "UMAP, from .[viz]), cka (linear CKA "
        "between the layers of one run, or of two runs over the same examples), curves (probe scores by layer of "
        "every run on one plot, from their newest probe reports).",
    )
    p.add_argument("runs", nargs="+", help="run folders (curves: also probe report JSON files)")
    p.add_argument("--kind", choices=KINDS, default="curves", help="what to draw (default: curves)")
    p.add_argument("--label", default=None, help="pca: colour by this field; curves: only these labels (comma list)")
    p.add_argument("--layers", default=None, help="layers, comma-separated (embeddings, 0, -1, blocks.3); "
                   "cka with two runs: the first run's (default: all)")
    p.add_argument("--layers-b", default=None, help="cka with two runs: the second run's layers (default: all)")
    p.add_argument("--names", default=None, help="legend / axis names of the runs, comma-separated")
    p.add_argument("--max-rows", type=int, default=None,
                   help="rows sampled (seeded) from each run (default: 2000 for pca, 1000 for cka)")
    p.add_argument("--seed", type=int, default=0, help="seed of the row sample (default: 0)")
    p.add_argument("--title", default=None, help="figure title")
    p.add_argument("--out", default=None, help="the PNG (default: <first run>/plots/<kind>.png)")
    return p


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _default_out(run: str, kind: str, label: str | None) -> Path:
    base = Path(run)
    folder = base.parent if base.is_file() else base
    return folder / "plots" / (f"{kind}-{label}.png" if label and kind in ("pca", "umap") else f"{kind}.png")


def plot_main(argv: list[str]) -> int:
    """Run ``plot`` with ``argv`` (without the word ``plot``); return the exit code (2: bad input)."""
    from probing.errors import ConfigError, ProbingError

    try:
        args = _plot_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    names = _split(args.names)
    try:
        if names is not None and len(names) != len(args.runs):
            raise ConfigError(f"--names gave {len(names)} names for {len(args.runs)} runs.")
        out = Path(args.out) if args.out else _default_out(args.runs[0], args.kind, args.label)
        out.parent.mkdir(parents=True, exist_ok=True)
        seed, rows = args.seed, args.max_rows
        if args.kind in ("pca", "umap"):
            from probing.viz.figures import plot_projection
            from probing.viz.rows import MAX_ROWS

            if len(args.runs) != 1:
                raise ConfigError(f"--kind {args.kind} draws one run; got {len(args.runs)}. Draw each separately.")
            plot_projection(args.runs[0], out, layers=_split(args.layers), label=args.label,
                            max_rows=rows or MAX_ROWS, seed=seed, title=args.title, method=args.kind)
        elif args.kind == "cka":
            from probing.viz.figures import plot_cka
            from probing.viz.similarity import CKA_ROWS

            if len(args.runs) > 2:
                raise ConfigError(f"--kind cka compares one run's layers or two runs; got {len(args.runs)} runs.")
            second = args.runs[1] if len(args.runs) == 2 else None
            plot_cka(args.runs[0], out, second, layers_a=_split(args.layers), layers_b=_split(args.layers_b),
                     max_rows=rows or CKA_ROWS, seed=seed, title=args.title,
                     names=(names * 2 if len(names) == 1 else names) if names else None)
        else:
            from probing.viz.curves import plot_curves

            plot_curves(args.runs, out, labels=_split(args.label), names=names, title=args.title)
    except (ProbingError, FileNotFoundError, KeyError) as exc:
        print(f"probing: error: {exc}", file=sys.stderr)
        return 2
    print(f"plot: {out}")
    return 0


def _report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m probing report",
        description="Write one self-contained HTML report of a run (metadata, probe table with CIs and selectivity, "
        "probe curves, PCA of the best layer, CKA between layers; images embedded, opens offline).",
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--probes", default=None, help="the probe report (JSON or its folder; default: the run's newest)")
    p.add_argument("--label", default=None, help="label colouring the PCA (default: the first probed label)")
    p.add_argument("--out", default=None, help="the HTML file (default: report.html beside the probe report)")
    return p


def report_main(argv: list[str]) -> int:
    """Run ``report`` with ``argv`` (without the word ``report``); return the exit code (2: bad input)."""
    from probing.errors import ProbingError

    try:
        args = _report_parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        from probing.probes.results import load_report
        from probing.viz.html import write_html_report

        report = load_report(args.probes) if args.probes else None
        path = write_html_report(args.run, report, args.out, label=args.label)
    except (ProbingError, FileNotFoundError, KeyError) as exc:
        print(f"probing: error: {exc}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0
