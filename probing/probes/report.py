"""Writing a `ProbeReport`: CSV and JSON tables, a PNG plot, and a short text table for the terminal."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from probing.errors import ProbingError
from probing.probes.results import COLUMNS, ProbeReport, ProbeResult


def _clean(value: Any) -> Any:
    """NaN/inf as None (JSON has no NaN), floats rounded to what is meaningful."""
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 6)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_csv(report: ProbeReport, path: str | os.PathLike[str]) -> Path:
    """One row per layer x label field x method, columns `COLUMNS` (empty cell: not available)."""
    p = Path(path)
    with p.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS))
        writer.writeheader()
        for row in report.rows():
            writer.writerow({k: "" if v is None else v for k, v in _clean(row).items()})
    return p


def write_json(report: ProbeReport, path: str | os.PathLike[str]) -> Path:
    """The whole report (run, settings, split schemes, timings and results), loadable with `load_report`."""
    p = Path(path)
    p.write_text(json.dumps(_clean(report.to_dict()), indent=1) + "\n")
    return p


def report_stem(report: ProbeReport) -> str:
    """File name stem of a report: ``probes_<methods>`` (so that sklearn and torch results sit side by side)."""
    return "probes_" + "+".join(report.methods)


def new_report_dir(probes_dir: str | os.PathLike[str], methods: list[str]) -> Path:
    """A fresh folder for one probe invocation: ``<probes dir>/<UTC time>-<methods>`` (never an existing one)."""
    import datetime as dt

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(probes_dir) / f"{stamp}-{'+'.join(methods)}"
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def write_report(
    report: ProbeReport, out_dir: str | os.PathLike[str], *, plot: bool = True, overwrite: bool = False
) -> dict[str, str]:
    """Write CSV, JSON and (unless ``plot`` is False) PNG into ``out_dir``; record and return their paths.

    A report already in ``out_dir`` is never replaced silently: it is refused unless ``overwrite``."""
    from probing.probes.plot import plot_reports

    out = Path(out_dir)
    stem = report_stem(report)
    existing = [p.name for p in (out / f"{stem}.{ext}" for ext in ("csv", "json", "png")) if p.exists()]
    if existing and not overwrite:
        raise ProbingError(
            f"{out} already holds a report ({', '.join(existing)}); it is not replaced. Write elsewhere (out_dir / "
            "--out; by default every probe writes its own folder under <run>/probes/), or pass overwrite=True "
            "(--overwrite)."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        files = {"csv": str(write_csv(report, out / f"{stem}.csv"))}
        if plot:
            files["png"] = str(plot_reports([report], out / f"{stem}.png"))
        report.files = {**files, "json": str(out / f"{stem}.json")}
        files["json"] = str(write_json(report, out / f"{stem}.json"))
    except OSError as exc:
        raise ProbingError(
            f"Cannot write probe results into {out}: {exc}. Pass out_dir (--out) to write elsewhere."
        ) from exc
    return report.files


def upload_report(report: ProbeReport, run_url: str, methods: list[str]) -> dict[str, str]:
    """Write the report of a run stored at a URL into ``<run url>/probes/<UTC time>-<methods>/``: the files
    are made in a local temporary folder, then each is uploaded whole (an object store has no folders to
    write into); ``report.files`` then names the URLs."""
    import tempfile

    from probing.storage.fs_options import url_to_fs

    fs, root = url_to_fs(run_url)
    with tempfile.TemporaryDirectory(prefix="probing-report-") as tmp:
        name = new_report_dir(tmp, methods).name
        base = f"{root.rstrip('/')}/probes/{name}"
        k = 1
        while fs.exists(base):
            k += 1
            base = f"{root.rstrip('/')}/probes/{name}-{k}"
        local = write_report(report, Path(tmp) / "report")
        url = f"{run_url.rstrip('/')}/probes/{base.rsplit('/', 1)[-1]}"
        report.files = {kind: f"{url}/{Path(file).name}" for kind, file in local.items()}
        write_json(report, local["json"])  # the JSON names where its files are: the bucket, not the temporary folder
        for file in local.values():
            fs.put_file(file, f"{base}/{Path(file).name}")
    return report.files


def _cell(r: ProbeResult) -> str:
    text = f"{r.score:.3f} [{r.ci_low:.2f},{r.ci_high:.2f}]"
    if math.isfinite(r.selectivity):
        text += f" {r.selectivity:+.2f}"
    if math.isfinite(r.compression):
        text += f" {r.compression:.2f}x"
        if math.isfinite(r.control_compression):
            text += f"/{r.control_compression:.2f}x"
    return text


def _layer_number(value: float | None) -> str:
    return f"{value:.2f}" if value is not None and math.isfinite(value) else "-"


def format_table(report: ProbeReport) -> str:
    """A short text table: per method, one line per layer, per label field ``score [CI] selectivity compression``.

    ``score`` is test accuracy (R^2 for ridge regression), ``selectivity`` the score minus the control
    task's, ``compression`` the MDL ratio uniform / online codelength. The last lines give the
    baseline of each label field (majority class, or the mean for R^2), its expected layer (centre of
    gravity of the score gains, layers counted as ``hidden_states``: embeddings 0), its best layer, and
    the first neurons of the best layer's linear probe by weight mass (all of them in the JSON).
    """
    lines = [
        f"probes of {report.run_id} ({report.model}, {report.strategy}; {report.n_rows} rows)",
    ]
    for label in report.label_fields:
        lines.append(f"  {label}: {report.schemes.get(label, '')}")
    width = max(len(layer) for layer in report.layers) if report.layers else 5
    width = max(width, len("expected layer*"))
    summary = {(e["label"], e["method"]): e for e in report.summary}
    for method in report.methods:
        results = [r for r in report.results if r.method == method]
        labels = [label for label in report.label_fields if any(r.label == label for r in results)]
        if not labels:
            continue
        cells = {(r.layer, r.label): r for r in results}
        has_control = any(math.isfinite(r.selectivity) for r in results)
        has_mdl = any(math.isfinite(r.compression) for r in results)
        metric = "R^2" if all(r.metric == "r2" for r in results) else "test accuracy"
        legend = f"{metric} [95% CI]" + (" selectivity (- control task)" if has_control else "")
        legend += " MDL compression task/control (uniform / online codelength)" if has_mdl else ""
        col = max(max(len(label) for label in labels), 19 + 6 * has_control + 12 * has_mdl)
        seconds = report.seconds.get(method)
        timing = f", {seconds:.1f} s" if seconds is not None else ""
        lines.append("")
        lines.append(f"{method}{timing}: {legend}")
        lines.append(f"{'layer':<{width}}  " + "  ".join(f"{label:<{col}}" for label in labels))
        for layer in report.layers:
            row = []
            for label in labels:
                r = cells.get((layer, label))
                row.append(f"{_cell(r) if r else '-':<{col}}")
            lines.append(f"{layer:<{width}}  " + "  ".join(row))
        name = "mean (R^2)" if metric == "R^2" else "majority"
        tail: list[tuple[str, list[str]]] = [(name, []), ("expected layer*", []), ("best layer", [])]
        for label in labels:
            r = next(r for r in results if r.label == label)
            tail[0][1].append(f"{r.baseline:.3f}")
            entry = summary.get((label, method))
            expected = _layer_number(entry["expected_layer"]) if entry else "-"
            if entry and math.isfinite(entry.get("gain") or float("nan")):
                expected += f" (gain {entry['gain']:+.3f})"
            tail[1][1].append(expected)
            best = f"{entry['best_layer']} {entry['best_score']:.3f}" if entry else "-"
            if entry:
                best += f" [{entry['best_ci_low']:.2f},{entry['best_ci_high']:.2f}]"
            tail[2][1].append(best)
        neurons = report.neurons
        if any(method in neurons.get(label, {}) for label in labels):
            tail.append(("top neurons", []))
            for label in labels:
                entry = summary.get((label, method))
                top = neurons.get(label, {}).get(method, {}).get(entry["best_layer"] if entry else "", [])
                tail[-1][1].append(", ".join(str(int(j)) for j, _ in top[:4]) + (" (best layer)" if top else "-"))
        for title, values in tail:
            lines.append(f"{title:<{width}}  " + "  ".join(f"{v:<{col}}" for v in values))
    lines.append("")
    lines.append("* centre of gravity of the gains of the best score so far (Tenney et al. 2019), layers numbered "
                 "as hidden_states: embeddings 0, blocks.i = i + 1")
    if report.missing:
        lines.append("rows without a value, left out: " + ", ".join(f"{k} {v}" for k, v in report.missing.items()))
    if "mdl" in report.seconds:
        lines.append(f"MDL codelengths: {report.seconds['mdl']:.1f} s")
    return "\n".join(line.rstrip() for line in lines)
