"""``python -m probing probe <run path> [options]``: probe a stored run and print a short table.

`probe_main` parses the arguments, calls `probe_run` and prints `format_table`; the options and
defaults mirror `probe_run` (and ``conf/probe/default.yaml``).
"""

from __future__ import annotations

import argparse
import sys

from probing.config import ProbeConfig

D = ProbeConfig()  # the defaults: defined once, in probing.config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m probing probe",
        description="Train linear probes on every layer of a stored run, with majority baseline, control task "
        "(selectivity) and bootstrap CIs; writes CSV, JSON and a PNG plot (default: a new folder under <run>/probes/).",
    )
    p.add_argument("run", help="run folder, as printed by `python -m probing` (run: <path>)")
    p.add_argument("--labels", default=None, help="label fields, comma-separated (default: every label-like field)")
    p.add_argument("--method", default=D.method,
                   help=f"sklearn, torch, mlp, both (= sklearn,torch) or a comma list (default: {D.method}); "
                   "real-valued labels always get ridge regression")
    p.add_argument("--out", default=None, help="output folder (default: <run>/probes)")
    p.add_argument("--layers", default=None, help="layers, comma-separated: embeddings, 0, -1, blocks.3 (default: all)")
    p.add_argument("--split-field", default=D.split_field,
                   help=f"train/test field; 'none' for k-fold CV (default: {D.split_field})")
    p.add_argument("--group-field", default=None, help="rows of one group never straddle a split (e.g. sentence_id)")
    p.add_argument(
        "--control-field", default=None, help="type field of the control task; 'none' to skip (default: auto)"
    )
    p.add_argument("--k-folds", type=int, default=D.k_folds,
                   help=f"folds when there is no split field (default: {D.k_folds})")
    p.add_argument("--seed", type=int, default=D.seed,
                   help=f"seed of folds, control labels, bootstrap (default: {D.seed})")
    p.add_argument("--n-bootstrap", type=int, default=D.n_bootstrap,
                   help=f"bootstrap resamples (default: {D.n_bootstrap})")
    p.add_argument(
        "--search-rows",
        type=lambda v: None if v.lower() in ("none", "all") else int(v),
        default=D.search_rows,
        help=f"most fit and dev rows used to choose C; 'all' for every row (default: {D.search_rows})",
    )
    p.add_argument(
        "--max-rows",
        type=lambda v: None if v.lower() in ("none", "all") else int(v),
        default=D.max_rows,
        help="most rows probed (a larger run: a stratified sample, printed); 'all' for every row "
        f"(default: {D.max_rows})",
    )
    p.add_argument("--no-mdl", dest="mdl", action="store_false", default=D.mdl,
                   help="skip the MDL online codelengths (default: computed for every classification label)")
    p.add_argument(
        "--mdl-rows",
        type=lambda v: None if v.lower() in ("none", "all") else int(v),
        default=D.mdl_rows,
        help=f"most training rows coded by MDL (a seeded sample); 'all' for every row (default: {D.mdl_rows})",
    )
    p.add_argument("--top-neurons", type=int, default=D.top_neurons,
                   help=f"neurons per layer and label ranked by the linear probe's weights (default: {D.top_neurons})")
    p.add_argument("--mlp-hidden", type=int, default=D.mlp_hidden,
                   help=f"hidden units of MLP probes, --method mlp (default: {D.mlp_hidden})")
    p.add_argument("--overwrite", action="store_true", help="replace a report already in --out")
    p.add_argument("--storage-options", default=None,
                   help="fsspec options of a run at a URL, as JSON (endpoint, credentials): "
                        '\'{"key": "...", "secret": "...", "client_kwargs": {"endpoint_url": "http://..."}}\'')
    p.add_argument("--no-write", action="store_true", help="only print the table")
    return p


def probe_main(argv: list[str]) -> int:
    """Run ``probe`` with command-line arguments ``argv`` (without the ``probe`` word); return the exit code.

    0 on success; 2 for a usage error or a `ProbingError` (printed as ``probing: error: ...``).
    """
    from probing.errors import ProbingError
    from probing.probes.report import format_table
    from probing.probes.run import probe_run

    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return int(exc.code or 0)
    try:
        from probing.storage.fs_options import bind, parse_options

        bind(args.run, parse_options(args.storage_options))
        report = probe_run(
            args.run,
            label_fields=args.labels,
            method=args.method,
            split_field=args.split_field,
            group_field=args.group_field,
            k_folds=args.k_folds,
            control_field=args.control_field,
            seed=args.seed,
            out_dir=args.out,
            layers=[s.strip() for s in args.layers.split(",")] if args.layers else None,
            n_bootstrap=args.n_bootstrap,
            search_rows=args.search_rows,
            max_rows=args.max_rows,
            write=not args.no_write,
            overwrite=args.overwrite,
            mdl=args.mdl,
            mdl_rows=args.mdl_rows,
            top_neurons=args.top_neurons,
            mlp_hidden=args.mlp_hidden,
        )
    except (ProbingError, FileNotFoundError) as exc:
        print(f"probing: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(report))
    if report.files:
        from probing.viz.html import write_html_report

        report.files["html"] = str(write_html_report(report.run_path or args.run, report))
        print("probes: wrote " + ", ".join(report.files[k] for k in ("csv", "json", "png", "html")
                                           if k in report.files))
    return 0
