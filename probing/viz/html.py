"""One self-contained HTML report per run: metadata, the probe table with CIs and selectivity (and MDL
compression when computed), and the figures (probe curves, PCA of the best layer, CKA between layers) embedded
as base64 PNG. No script, no external URL: it opens offline, from a mail attachment or a laptop.

Plain HTML and CSS from string templates, every value escaped; each number cell carries its exact value in
``data-value`` (the JSON's value), so the table can be checked against ``probes_*.json``.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from probing.errors import ProbingError
from probing.probes.results import ProbeReport, ProbeResult
from probing.viz.rows import RunLike, open_rows

#: name of the report file, beside the probe report's CSV/JSON/PNG (or in the run folder without probes)
REPORT_NAME = "report.html"

#: columns of the probe table: (header, ProbeResult attribute, digits); MDL columns only when computed
TABLE = [("label", "label", None), ("method", "method", None), ("layer", "layer", None), ("metric", "metric", None),
         ("score", "score", 3), ("95% CI low", "ci_low", 3), ("95% CI high", "ci_high", 3),
         ("baseline", "baseline", 3), ("control", "control_score", 3), ("selectivity", "selectivity", 3),
         ("macro-F1", "macro_f1", 3), ("n train", "n_train", None), ("n test", "n_test", None)]
MDL_COLUMNS = [("MDL compression", "compression", 2), ("control compression", "control_compression", 2)]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;
color:#1d1d1f;background:#fff;padding:0 16px}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:0}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}th{background:#f3f4f6}
td.num{text-align:right;font-variant-numeric:tabular-nums}tr.best td{background:#fff6d5}
table.meta th{width:11em;vertical-align:top}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#555;font-size:.85em}
details pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:.75em;max-height:30em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int | None) -> str:
    """A number cell: the shown text, and the exact value in ``data-value`` (empty for NaN / missing)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return '<td class="num" data-value="">-</td>'
    shown = f"{value:.{digits}f}" if digits is not None and isinstance(value, float) else str(value)
    exact = repr(round(value, 6)) if isinstance(value, float) else str(value)
    return f'<td class="num" data-value="{_e(exact)}">{_e(shown)}</td>'


def _png_tag(draw: Callable[[io.BytesIO], Any], caption: str, alt: str) -> str:
    """A figure drawn into memory and embedded as a data: URL; a failure is shown as text, not raised."""
    buf = io.BytesIO()
    try:
        draw(buf)
    except (ProbingError, ValueError, KeyError) as exc:
        return f'<p class="sub">{_e(alt)}: not drawn ({_e(exc)})</p>'
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return (f'<figure><img alt="{_e(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _meta_rows(meta: dict[str, Any], path: str) -> list[tuple[str, str]]:
    from probing.storage.identity import fingerprinted, run_identity

    model = meta.get("model") or {}
    ds = meta.get("dataset") or {}
    strategy = dict(meta.get("strategy") or {})
    name = strategy.pop("name", "?")
    versions = meta.get("versions") or {}
    rows = [
        ("run", f"{meta.get('run_id', Path(path).name)} ({'completed' if meta.get('completed') else 'incomplete'})"),
        ("path", path),
        ("model", f"{model.get('name_or_path')} ({model.get('model_type')}, {model.get('dtype')}, "
                  f"weights {model.get('weights', 'pretrained')})"),
        ("layers", ", ".join(meta.get("layers", []))),
        ("strategy", name + (f" {strategy}" if strategy else "") + f"; mode {meta.get('mode', 'pooled')}"),
        ("max length", str(meta.get("max_length"))),
        ("data", f"{ds.get('n_examples')} examples (text field {ds.get('text_field')}); fields "
                 f"{', '.join(ds.get('fields') or [])}; fingerprint {ds.get('fingerprint')}"),
        ("overrides", " ".join(map(str, meta.get("overrides") or [])) or "(none: the defaults)"),
        ("created", str(meta.get("created"))),
        ("finished", str(meta.get("finished"))),
        ("identity", run_identity(meta) if fingerprinted(meta) else "-"),
        ("weights fingerprint", str(model.get("weights_fingerprint"))),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())),
    ]
    return rows


def _table(report: ProbeReport) -> str:
    results: Sequence[ProbeResult] = report.results
    has_mdl = any(math.isfinite(r.compression) for r in results)
    columns = TABLE + (MDL_COLUMNS if has_mdl else [])
    best = {(e["label"], e["method"]): e.get("best_layer") for e in report.summary}
    head = "".join(f"<th>{_e(h)}</th>" for h, _, _ in columns)
    body = []
    for r in results:
        cells = []
        for _, attr, digits in columns:
            value = getattr(r, attr)
            cells.append(_num(value, digits) if isinstance(value, (int, float)) and not isinstance(value, bool)
                         else f"<td>{_e(value)}</td>")
        mark = ' class="best"' if best.get((r.label, r.method)) == r.layer else ""
        body.append(f"<tr{mark}>{''.join(cells)}</tr>")
    return (f'<table id="probe-table" class="probes"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _summary(report: ProbeReport) -> str:
    rows = []
    for e in report.summary:
        exp = e.get("expected_layer")
        exp_text = f"{exp:.2f}" if isinstance(exp, float) and math.isfinite(exp) else "-"
        ci = (e.get("best_ci_low"), e.get("best_ci_high"))
        ci_text = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if all(isinstance(c, float) and math.isfinite(c) for c in ci) else ""
        rows.append(f"<tr><td>{_e(e['label'])}</td><td>{_e(e['method'])}</td><td>{_e(e.get('best_layer'))}</td>"
                    f"<td class=\"num\">{float(e.get('best_score', math.nan)):.3f} {_e(ci_text)}</td>"
                    f"<td class=\"num\">{_e(exp_text)}</td></tr>")
    return ('<table id="layer-summary"><thead><tr><th>label</th><th>method</th><th>best layer</th>'
            "<th>best score [95% CI]</th><th>expected layer*</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table><p class=\"sub\">* centre of gravity of the score gains (Tenney et al. 2019), layers "
            "numbered as hidden_states: embeddings 0, blocks.i = i + 1. Best layer rows are shaded in the table.</p>")


def _best_layer(report: ProbeReport, label: str) -> str | None:
    entry = next((e for e in report.summary if e["label"] == label), None)
    return None if entry is None else entry.get("best_layer")


def render_html(run: RunLike, report: ProbeReport | None = None, *, label: str | None = None,
                extra_images: dict[str, str | os.PathLike[str]] | None = None, max_rows: int = 2000,
                cka_rows: int = 1000, seed: int = 0) -> str:
    """The report of ``run`` as one HTML string (see `write_html_report`)."""
    from probing.viz.curves import plot_curves
    from probing.viz.figures import plot_cka, plot_projection

    with open_rows(run) as rows:
        reader = rows.reader if hasattr(rows, "reader") else rows
        meta = dict(rows.metadata)
        path = str(rows.path)
        title = f"probing report: {meta.get('run_id', Path(path).name)}"
        parts = [f"<h1>{_e(title)}</h1>",
                 f'<p class="sub">{_e((meta.get("model") or {}).get("name_or_path") or "model not recorded")}, written '
                 f"{_e(dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}</p>",
                 "<h2>Run</h2>", '<table class="meta" id="run-metadata">'
                 + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in _meta_rows(meta, path))
                 + "</table>"]
        if report is not None:
            parts += ["<h2>Probes</h2>",
                      f'<p class="sub">{_e(report.n_rows)} rows; methods {_e(", ".join(report.methods))}; '
                      + "; ".join(f"{_e(k)}: {_e(v)}" for k, v in report.schemes.items()) + ". Score: test accuracy "
                      "(R<sup>2</sup> for real-valued labels) with its 95% bootstrap CI; selectivity = score - "
                      "control-task score (Hewitt &amp; Liang 2019); MDL compression = uniform / online codelength "
                      "(Voita &amp; Titov 2020).</p>",
                      _summary(report)]
            table = ["<h2>Probe table</h2>", _table(report)]
            parts += ["<h2>Figures</h2>",
                      _png_tag(lambda b: plot_curves([report], b), "Probe score by layer with 95% CIs, control task "
                               "(dotted), baseline (dashed), best layer (star), expected layer (triangle).",
                               "probe curves")]
            label = label or (report.label_fields[0] if report.label_fields else None)
        else:
            table = []
            parts += ["<h2>Probes</h2>", '<p class="sub">No probe report: run <code>python -m probing probe '
                      f"{_e(path)}</code> first for the table and the curves.</p>", "<h2>Figures</h2>"]
        best = _best_layer(report, label) if report is not None and label is not None else None
        layers = [best] if best is not None else None
        where = f"the best layer ({best}) for {label!r}" if best else "every layer"
        parts.append(_png_tag(lambda b: plot_projection(reader, b, layers=layers, label=label, max_rows=max_rows,
                                                        seed=seed),
                              f"PCA of {where}, points coloured by {label or 'nothing'} "
                              f"(a seeded sample of at most {max_rows:,} rows).", "PCA projection"))
        parts.append(_png_tag(lambda b: plot_cka(reader, b, max_rows=cka_rows, seed=seed),
                              f"Linear CKA (Kornblith et al. 2019) between the layers of this run, on at most "
                              f"{cka_rows:,} rows.", "CKA heatmap"))
        for caption, image in (extra_images or {}).items():
            data = base64.b64encode(Path(image).read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{_e(caption)}</figcaption></figure>")
        parts += table
        parts.append("<details><summary>All run metadata (JSON)</summary><pre>"
                     + _e(json.dumps({k: v for k, v in meta.items() if k not in ("layout",)}, indent=1,
                                     default=str)) + "</pre></details>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{CSS}</style></head>\n<body>\n{body}\n</body></html>\n")


def write_html_report(run: RunLike, report: ProbeReport | None = None, out: str | os.PathLike[str] | None = None,
                      **options: Any) -> Path:
    """Write the self-contained HTML report of ``run`` and return its path.

    Args:
        run: a run folder or an open `RunReader`.
        report: its probe report; default: the newest under ``<run>/probes/`` (none: metadata and figures only).
        out: the file; default ``report.html`` beside the report's JSON (or in the run folder).
        options: ``label`` (PCA colour; default the first probed label), ``extra_images`` ({caption: PNG}),
            ``max_rows``, ``cka_rows``, ``seed``.
    """
    if report is None and isinstance(run, (str, os.PathLike)):
        from probing.viz.curves import find_report

        try:
            report = find_report(run)
        except ProbingError:
            report = None
    text = render_html(run, report, **options)
    if out is None:
        json_file = (report.files or {}).get("json") if report is not None else None
        if json_file:
            target = Path(json_file).with_name(REPORT_NAME)
        else:
            with open_rows(run) as rows:
                target = Path(rows.path) / REPORT_NAME
    else:
        target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text, encoding="utf-8")
    return target
