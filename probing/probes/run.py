"""`probe_run`: probe every layer of a stored run for every label field, with baselines, and write a report.

For each label field: leave out the rows without a value, make the folds (split field, grouped
k-fold by a group field, or stratified k-fold), then per method fit the probes of all layers
(choosing the regularization on a dev part of each fold's training rows), fit the same probes with
the same regularization on the control task, and score the pooled test predictions: accuracy (R^2
for a real-valued label, by ridge regression) with a bootstrap CI, macro-F1, the majority (mean)
baseline, control score and selectivity. Then per label: the online codelength (MDL) of the task and
of the control task, the expected and the best layer, and the top neurons of the linear probes.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from probing.config import ProbeConfig
from probing.errors import ConfigError, ProbingError
from probing.probes.base import C_GRID, ProbeFit
from probing.probes.control import control_labels, control_values
from probing.probes.data import (
    Folds,
    Labels,
    default_control_field,
    default_label_fields,
    feature_groups,
    field_values,
    group_codes,
    load_features,
    load_labels,
    make_folds,
    resolve_layers,
    sample_rows,
)
from probing.probes.layer_summary import LayerSummary, expected_layer
from probing.probes.metrics import (
    accuracy,
    bootstrap_ci,
    bootstrap_r2_ci,
    macro_f1,
    majority_baseline,
    r2_score,
)
from probing.probes.results import ProbeReport, ProbeResult
from probing.probes.rows import Rows
from probing.storage.reader import RunReader

log = logging.getLogger("probing.probes")

#: classifier probes: linear (scikit-learn, or all layers batched in torch) and one-hidden-layer MLPs
METHODS = ("sklearn", "torch", "mlp")
#: methods whose probes are linear (their codelength and neurons are reported)
LINEAR = ("sklearn", "torch")
#: the probe of real-valued labels, whatever ``method`` says
REGRESSION_METHOD = "ridge"
#: the split field looked for by default; if a run lacks it, cross-validation is used (any other
#: split field named explicitly must exist)
DEFAULT_SPLIT_FIELD = ProbeConfig.split_field
#: rows of the fit part and of the dev part used to choose C (a seeded subset of each when there are more):
#: dev accuracy on 5,000 rows is precise to about a point, and the search's fits cost a fifth of those on all
#: rows of a large word-level run. The final probe is fit on all training rows either way.
SEARCH_ROWS = ProbeConfig.search_rows
#: most rows probed: a larger run is probed on a seeded sample of this many rows, stratified by split and
#: label (whole sentences for word-level runs), and the sample is printed; None probes every row
MAX_ROWS = ProbeConfig.max_rows
#: most bytes of float32 features held at once: layers are read and probed a group at a time
FEATURE_BYTES = ProbeConfig.feature_bytes
#: spellings of "no field" accepted for split_field / control_field (from the command line or YAML)
NONE_VALUES = ("", "none", "null", "off")


def _implementation(method: str, *, mlp_hidden: int = 256, seed: int = 0) -> Callable[..., ProbeFit]:
    if method == "sklearn":
        from probing.probes.sklearn_probe import sklearn_fit_predict

        return sklearn_fit_predict
    if method == "mlp":
        from probing.probes.mlp_probe import mlp_fit_predict

        return functools.partial(mlp_fit_predict, hidden=mlp_hidden, seed=seed)
    if method == REGRESSION_METHOD:
        from probing.probes.ridge import ridge_fit_predict

        def ridge(features: Any, y: np.ndarray, n_classes: int, fold: Any, *, grid: Any, control: Any) -> ProbeFit:
            del n_classes, grid  # ridge searches its own alpha grid
            return ridge_fit_predict(features, y, fold, control=control)

        return ridge
    from probing.probes.torch_probe import torch_fit_predict

    return torch_fit_predict


def parse_methods(method: str | Sequence[str]) -> list[str]:
    """``"sklearn"``, ``"torch"``, ``"mlp"``, ``"both"`` (sklearn and torch), ``"sklearn,mlp"`` or a list ->
    validated method names."""
    items = method.split(",") if isinstance(method, str) else list(method)
    out: list[str] = []
    for item in (s.strip() for s in items):
        names = list(LINEAR) if item == "both" else [item]
        for name in names:
            if name not in METHODS:
                raise ConfigError(f"Unknown probe method {name!r}; expected one of {[*METHODS, 'both']}.")
            if name not in out:
                out.append(name)
    if not out:
        raise ConfigError(f"No probe method given; expected one of {[*METHODS, 'both']}.")
    return out


def _open(path_or_reader: str | os.PathLike[str] | RunReader) -> Rows:
    """The run as rows: pooled runs as they are, token-level runs one row per word or token."""
    from probing.probes.rows import as_rows

    if not isinstance(path_or_reader, (str, os.PathLike)):
        return as_rows(path_or_reader)  # type: ignore[arg-type]
    from probing.storage.base import open_run

    return as_rows(open_run(path_or_reader))


def _off(name: str | None) -> bool:
    return name is None or str(name).strip().lower() in NONE_VALUES


def _check_training_classes(folds: Folds, labels: Labels) -> None:
    if labels.regression:
        return
    for i, fold in enumerate(folds.folds):
        present = np.unique(labels.y[fold.train])
        if len(present) < 2:
            raise ProbingError(
                f"Label {labels.field!r}: the training rows of fold {i} hold only class "
                f"{labels.classes[int(present[0])]!r} ({folds.scheme}); a probe needs two. Use more data, "
                "another split, or fewer folds."
            )


def _check_search_rows(limit: int | None) -> None:
    if limit is not None and limit < 2:
        raise ConfigError(f"search_rows must be >= 2 (or null for every row), got {limit}.")


def cap_search_rows(folds: Folds, limit: int | None, seed: int) -> Folds:
    """``folds`` with their fit and dev parts (used only to choose C) cut to at most ``limit`` rows each.

    The subset is a seeded random one, kept in row order; ``None`` keeps every row.
    """
    _check_search_rows(limit)
    if limit is None:
        return folds
    rng = np.random.default_rng(seed)

    def cut(rows: np.ndarray) -> np.ndarray:
        return rows if len(rows) <= limit else np.sort(rng.choice(rows, size=limit, replace=False))

    capped = [dataclasses.replace(f, fit=cut(f.fit), dev=cut(f.dev)) for f in folds.folds]
    if all(len(a.fit) == len(b.fit) and len(a.dev) == len(b.dev) for a, b in zip(capped, folds.folds, strict=True)):
        return folds
    return Folds(capped, f"{folds.scheme}; C chosen on {len(capped[0].fit)} fit and {len(capped[0].dev)} dev rows")


def _pooled_baseline(folds: Folds, labels: Labels) -> float:
    """Score of the trivial predictor over all test rows: each fold's most frequent training class
    (accuracy), or each fold's training mean (R^2 of the pooled predictions)."""
    y = labels.y
    if labels.regression:
        pred = np.concatenate([np.full(len(f.test), y[f.train].mean()) for f in folds.folds])
        return r2_score(y[folds.test_rows], pred)
    hits = sum(majority_baseline(y[f.train], y[f.test]) * len(f.test) for f in folds.folds)
    return float(hits / len(folds.test_rows))


def _label_folds(
    lab: Labels,
    split: np.ndarray | None,
    groups: np.ndarray | None,
    *,
    k_folds: int,
    dev_fraction: float,
    seed: int,
    split_name: str | None,
    group_name: str | None,
) -> Folds:
    """The folds of one label over the rows that have a value for it (indices into all rows)."""
    keep = lab.rows
    sub = make_folds(
        lab.strata[keep],
        split=None if split is None else split[keep],
        groups=None if groups is None else groups[keep],
        k_folds=k_folds,
        dev_fraction=dev_fraction,
        seed=seed,
        split_field=str(split_name),
        group_field=group_name,
    )
    if len(keep) == len(lab.y):
        return sub
    mapped = [dataclasses.replace(f, fit=keep[f.fit], dev=keep[f.dev], train=keep[f.train], test=keep[f.test])
              for f in sub.folds]
    return Folds(mapped, f"{sub.scheme}; {lab.n_missing} rows without a value left out")


def _control_targets(types: np.ndarray, lab: Labels, seed: int) -> np.ndarray:
    """Control-task targets of every row (only rows with a value are used): a class per type drawn from the
    label's class distribution, or for a regression label a value per type drawn from its values."""
    keep = lab.rows
    if lab.regression:
        out = np.full(len(lab.y), np.nan)
        out[keep] = control_values(types[keep], lab.y[keep], seed=seed, salt=lab.field)
        return out
    codes = np.full(len(lab.y), -1, dtype=np.int64)
    codes[keep] = control_labels(types[keep], lab.y[keep], lab.n_classes, seed=seed, salt=lab.field)
    return codes


@dataclasses.dataclass(frozen=True)
class _Fitted:
    """One label, method and layer: pooled test predictions, control predictions, median regularization,
    seconds, and the last fold's probe weights (linear probes)."""

    pred: np.ndarray
    control: np.ndarray | None
    reg: float
    seconds: float
    weights: np.ndarray | None


def _fit_folds(
    fit: Callable[..., ProbeFit],
    features: list[np.ndarray],
    labels: Labels,
    folds: Folds,
    control: np.ndarray | None,
    grid: Sequence[float],
) -> list[_Fitted]:
    """Per layer: pooled task predictions over the folds' test rows, control predictions, median C, seconds."""
    preds, cpreds, regs = [], [], []
    seconds = np.zeros(len(features))
    weights: list[np.ndarray] | None = None
    for fold in folds.folds:
        task = fit(features, labels.y, labels.n_classes, fold, grid=grid, control=control)
        preds.append(task.predictions)
        regs.append(task.regs)
        seconds += task.seconds
        weights = task.weights
        if task.control is not None:
            cpreds.append(task.control)
    median_c = np.median(np.asarray(regs), axis=0)
    pred = np.concatenate(preds, axis=1)
    cpred = np.concatenate(cpreds, axis=1) if control is not None and cpreds else None
    return [
        _Fitted(pred[i], None if cpred is None else cpred[i], float(median_c[i]), float(seconds[i]),
                None if weights is None else weights[i])
        for i in range(len(features))
    ]


def probe_run(
    path_or_reader: str | os.PathLike[str] | RunReader,
    label_fields: Sequence[str] | str | None = ProbeConfig.label_fields,
    method: str | Sequence[str] = ProbeConfig.method,
    split_field: str | None = ProbeConfig.split_field,
    group_field: str | None = ProbeConfig.group_field,
    k_folds: int = ProbeConfig.k_folds,
    control_field: str | None = ProbeConfig.control_field,
    seed: int = ProbeConfig.seed,
    out_dir: str | os.PathLike[str] | None = ProbeConfig.out_dir,
    *,
    layers: Sequence[int | str] | None = ProbeConfig.layers,
    n_bootstrap: int = ProbeConfig.n_bootstrap,
    dev_fraction: float = ProbeConfig.dev_fraction,
    c_grid: Sequence[float] = C_GRID,
    search_rows: int | None = SEARCH_ROWS,
    max_rows: int | None = MAX_ROWS,
    feature_bytes: int = FEATURE_BYTES,
    write: bool = ProbeConfig.write,
    overwrite: bool = ProbeConfig.overwrite,
    mdl: bool = ProbeConfig.mdl,
    mdl_rows: int | None = ProbeConfig.mdl_rows,
    top_neurons: int = ProbeConfig.top_neurons,
    mlp_hidden: int = ProbeConfig.mlp_hidden,
    progress: bool = True,
) -> ProbeReport:
    """Probe each layer of a run for each label field; write CSV, JSON and PNG into ``out_dir``.

    Args:
        path_or_reader: a run folder (as printed by ``python -m probing``) or an open `RunReader`.
            Rows may be sentences or words: a word-level run is a run whose rows are words.
        label_fields: fields to probe (a list or ``"a,b"``); default: every field with 2 to 50
            distinct str/int values except text, token counts and the split/group/control fields.
        method: ``"sklearn"`` (one `LogisticRegression` per layer), ``"torch"`` (all layers as one
            batched problem; uses a GPU if present), ``"both"`` or a list.
        split_field: field with ``train``/``test`` (and optionally ``dev``) values. None/"none", or
            the default ``"split"`` absent from the run: k-fold cross-validation instead.
        group_field: field tying rows together (``sentence_id`` for words): folds and dev parts
            never split a group, and the bootstrap resamples whole groups.
        k_folds: folds of cross-validation (grouped when ``group_field`` is given, else stratified).
        control_field: per-row type for the control task (word form; the text for sentences).
            None: the first of ``word``, ``form``, ``token``, ``text`` present; ``"none"``: no control.
        seed: seeds folds, dev parts, control labels and bootstrap.
        out_dir: where files go; default ``<run path>/probes``.
        layers: layer selectors to probe (default: all stored layers).
        n_bootstrap: bootstrap resamples of the test rows for the 95% CI.
        dev_fraction: share of the training rows (of each fold) used to choose C.
        c_grid: inverse L2 strengths tried.
        search_rows: most rows of the fit part and of the dev part used to choose C (a seeded subset);
            ``None``: all. The final probe always trains on every training row.
        max_rows: most rows probed; a larger run is probed on a seeded sample stratified by split and
            the first label (whole groups when there are groups), which is printed. None: every row.
        feature_bytes: most bytes of features in memory: layers are read and probed in groups that fit.
        write: write the files (False: only return the report).
        mdl: compute the online codelength (Voita & Titov 2020) of each classification label and of its
            control task, per layer, with the linear probe (`probing.probes.mdl`).
        mdl_rows: most training rows coded by MDL (a seeded sample; None: all of them).
        top_neurons: neurons reported per layer and label, ranked by the linear probe's weight mass.
        mlp_hidden: hidden units of the MLP probes (``method="mlp"``).

    Labels with real (non-integer) values are probed by ridge regression (method ``"ridge"``, scored by
    R^2 against the mean predictor) whatever ``method`` says; rows without a value for a label (None,
    NaN) are left out of that label.
    """
    start_all = time.perf_counter()
    reader = _open(path_or_reader)
    methods = parse_methods(method)
    if not 0 < dev_fraction < 1:
        raise ConfigError(f"dev_fraction must be in (0, 1), got {dev_fraction}.")
    if not c_grid or any(c <= 0 for c in c_grid):
        raise ConfigError(f"c_grid must hold positive values, got {list(c_grid)}.")
    _check_search_rows(search_rows)  # before features are loaded
    if mdl_rows is not None and mdl_rows < 10:
        raise ConfigError(f"mdl_rows must be >= 10 (or null for every training row), got {mdl_rows}.")
    layer_keys = resolve_layers(reader, layers)
    from probing.probes.rows import RowView

    group_name = None if _off(group_field) else str(group_field)
    if group_field is None and isinstance(reader, RowView):
        group_name = "sentence_id"  # words of one sentence never straddle folds or dev parts
    groups = None if group_name is None else field_values(reader, group_name, "Group field")
    split_name = None if _off(split_field) else str(split_field)
    split = None
    if split_name in reader.example_fields or split_name not in (None, DEFAULT_SPLIT_FIELD):
        split = field_values(reader, str(split_name), "Split field")  # a field named explicitly must exist
    elif split_name is not None:
        log.info("No split field %r in the run; using %d-fold cross-validation.", split_name, k_folds)
    if control_field is None:
        ctrl_name = default_control_field(reader)
    else:
        ctrl_name = None if _off(control_field) else str(control_field)
    types = None if ctrl_name is None else field_values(reader, ctrl_name, "Control field")
    if isinstance(label_fields, str):
        label_fields = [f.strip() for f in label_fields.split(",") if f.strip()]
    if label_fields:
        fields = list(dict.fromkeys(label_fields))
    else:
        fields = default_label_fields(reader, exclude=(split_name, group_name, ctrl_name))
    labels = [load_labels(reader, f) for f in fields]  # every label is checked before any compute
    if max_rows is not None and max_rows < 2:
        raise ConfigError(f"max_rows must be >= 2 (or null for every row), got {max_rows}.")
    rows = None
    if max_rows is not None and reader.n_examples > max_rows:
        first = labels[0].strata
        strata = first if split is None else np.char.add(np.asarray(split, dtype=str), first.astype(str))
        rows = sample_rows(reader.n_examples, max_rows, strata, groups, seed)
        what = "whole groups" if groups is not None else f"stratified by split and {labels[0].field!r}"
        print(f"probing: {reader.n_examples:,} rows > max_rows={max_rows:,}: probing a sample of {len(rows):,} rows "
              f"({what}, seed {seed})", file=sys.stderr)
        labels = [lab.subset(rows) for lab in labels]
        split = None if split is None else split[rows]
        groups = None if groups is None else groups[rows]
        types = None if types is None else types[rows]
    n_rows = reader.n_examples if rows is None else len(rows)
    meta = reader.metadata
    run_info = {
        "run": reader.run_id,
        "model": str(meta.get("model", {}).get("name_or_path", "")),
        "strategy": str(meta.get("strategy", {}).get("name", "")),
    }
    # per label: folds, methods, control targets; decided once, before any feature is read
    plans: list[_Plan] = []
    for lab in labels:
        folds = _label_folds(lab, split, groups, k_folds=k_folds, dev_fraction=dev_fraction, seed=seed,
                             split_name=split_name, group_name=group_name)
        _check_training_classes(folds, lab)
        folds = cap_search_rows(folds, search_rows, seed)
        control = None if types is None else _control_targets(types, lab, seed)
        plans.append(_Plan(lab, folds, control, [REGRESSION_METHOD] if lab.regression else methods))
    used = {m for plan in plans for m in plan.methods}
    all_methods = [m for m in [*methods, REGRESSION_METHOD] if m in used]  # the classifiers first, then ridge
    schemes = {plan.labels.field: plan.folds.scheme for plan in plans}
    method_seconds = dict.fromkeys([*all_methods, *(["mdl"] if mdl else [])], 0.0)
    fitted: dict[tuple[str, str, str], _Fitted] = {}
    codes: dict[tuple[str, str], tuple[float, float, float, float]] = {}  # (label, layer) -> MDL figures
    done_layers = 0
    for group in feature_groups(reader, layer_keys, n_rows, feature_bytes):
        features = load_features(reader, group, rows)
        feats = [features[k] for k in group]
        span = group[0] if len(group) == 1 else f"{group[0]}..{group[-1]}"
        for j, plan in enumerate(plans):
            lab = plan.labels
            for m in plan.methods:
                t0 = time.perf_counter()
                impl = _implementation(m, mlp_hidden=mlp_hidden, seed=seed)
                for layer, result in zip(group, _fit_folds(impl, feats, lab, plan.folds, plan.control, c_grid),
                                         strict=True):
                    fitted[(lab.field, m, layer)] = result
                method_seconds[m] += time.perf_counter() - t0
                if progress:
                    print(f"probes: {lab.field!r} ({j + 1}/{len(plans)} labels) {m} on {span} "
                          f"(layers {done_layers + len(group)}/{len(layer_keys)}): {time.perf_counter() - t0:.1f} s",
                          file=sys.stderr, flush=True)
            linear = next((m for m in plan.methods if m in LINEAR), None)
            if mdl and linear is not None and not lab.regression:
                t0 = time.perf_counter()
                regs = [fitted[(lab.field, linear, layer)].reg for layer in group]
                for layer, figures in zip(group, _codelengths(feats, plan, regs, seed, mdl_rows), strict=True):
                    codes[(lab.field, layer)] = figures
                method_seconds["mdl"] += time.perf_counter() - t0
                if progress:
                    print(f"probes: {lab.field!r} ({j + 1}/{len(plans)} labels) MDL codelength on {span}: "
                          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        done_layers += len(group)
        del features, feats
    results: list[ProbeResult] = []
    for plan in plans:
        lab, folds, control = plan.labels, plan.folds, plan.control
        test = folds.test_rows
        y_test = lab.y[test]
        test_groups = None if groups is None else group_codes(groups)[test]
        baseline = _pooled_baseline(folds, lab)
        for m in plan.methods:
            for layer in layer_keys:
                fit = fitted[(lab.field, m, layer)]
                if lab.regression:
                    score = r2_score(y_test, fit.pred)
                    low, high = bootstrap_r2_ci(y_test, fit.pred, groups=test_groups, n_resamples=n_bootstrap,
                                                seed=seed) if n_bootstrap else (float("nan"), float("nan"))
                    c_score = float("nan") if control is None or fit.control is None else r2_score(
                        control[test], fit.control)
                    f1 = float("nan")
                else:
                    correct = fit.pred == y_test
                    score = float(correct.mean())
                    low, high = bootstrap_ci(correct, groups=test_groups, n_resamples=n_bootstrap,
                                             seed=seed) if n_bootstrap else (float("nan"), float("nan"))
                    c_score = float("nan") if control is None or fit.control is None else accuracy(
                        control[test], fit.control)
                    f1 = macro_f1(y_test, fit.pred)
                nan4 = (float("nan"),) * 4
                bits, uniform, c_bits, _ = codes.get((lab.field, layer), nan4) if m in LINEAR else nan4
                results.append(
                    ProbeResult(
                        **run_info,
                        layer=layer,
                        layer_index=model_layer_index(reader.metadata, layer),
                        label=lab.field,
                        method=m,
                        metric="r2" if lab.regression else "accuracy",
                        score=score,
                        ci_low=low,
                        ci_high=high,
                        macro_f1=f1,
                        baseline=baseline,
                        control_score=c_score,
                        selectivity=score - c_score,
                        codelength_bits=bits,
                        uniform_bits=uniform,
                        compression=uniform / bits,
                        control_codelength_bits=c_bits,
                        control_compression=uniform / c_bits,
                        n_train=folds.mean_train_size,
                        n_test=len(test),
                        n_classes=lab.n_classes,
                        C=1.0 / fit.reg if lab.regression else fit.reg,
                        seconds=fit.seconds,
                    )
                )
    settings: dict[str, Any] = {
        "label_fields": fields,
        "method": methods,
        "split_field": split_name if split is not None else None,
        "group_field": group_name,
        "k_folds": k_folds,
        "control_field": ctrl_name,
        "seed": seed,
        "layers": layer_keys,
        "n_bootstrap": n_bootstrap,
        "dev_fraction": dev_fraction,
        "c_grid": list(c_grid),
        "search_rows": search_rows,
        "max_rows": max_rows,
        "mdl": mdl,
        "mdl_rows": mdl_rows,
        "top_neurons": top_neurons,
        "mlp_hidden": mlp_hidden,
        "rows_probed": n_rows,
        "total_seconds": round(time.perf_counter() - start_all, 3),
    }
    report = ProbeReport(
        run_path=_absolute(reader.path),
        run_id=run_info["run"],
        model=run_info["model"],
        strategy=run_info["strategy"],
        n_rows=n_rows,
        layers=layer_keys,
        label_fields=fields,
        methods=all_methods,
        results=results,
        settings=settings,
        schemes=schemes,
        classes={lab.field: list(lab.classes) for lab in labels},
        seconds={m: round(s, 3) for m, s in method_seconds.items()},
        summary=[dataclasses.asdict(s) for s in layer_summaries(results)],
        neurons=_neurons(fitted, plans, layer_keys, top_neurons),
        missing={lab.field: lab.n_missing for lab in labels if lab.n_missing},
    )
    if write:
        from probing.probes.report import new_report_dir, write_report

        if out_dir is None and not reader.path:
            raise ConfigError("The reader has no path to write probes/ into; pass out_dir, or write=False.")
        from probing.storage.base import is_url

        if out_dir is None and is_url(reader.path):  # a run in a bucket: its report goes beside it, in the bucket
            from probing.probes.report import upload_report

            upload_report(report, reader.path, all_methods)
        else:
            target = new_report_dir(os.path.join(reader.path, "probes"), all_methods) if out_dir is None else out_dir
            write_report(report, target, overwrite=overwrite)
    from probing.experiments import record_probe_report

    record_probe_report(report)
    return report


def _absolute(path: str) -> str:
    """A run's location as reports keep it: an absolute folder, or a URL as it is."""
    if not path:
        return ""
    return path if "://" in path else str(Path(path).resolve())


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What is probed for one label: its labels, folds, control targets and methods."""

    labels: Labels
    folds: Folds
    control: np.ndarray | None
    methods: list[str]


def _codelengths(
    feats: list[np.ndarray], plan: _Plan, regs: list[float], seed: int, limit: int | None
) -> list[tuple[float, float, float, float]]:
    """Per layer: online codelength of the task, uniform codelength, online codelength of the control task,
    and the rows coded (`probing.probes.mdl`), on the first fold's training rows (at most ``limit``)."""
    from probing.probes.mdl import online_codelength

    rows = plan.folds.folds[0].train
    if limit is not None and len(rows) > limit:
        rows = np.sort(np.random.default_rng([seed, 0x4D4]).choice(rows, size=limit, replace=False))
    lab = plan.labels
    task = online_codelength(feats, lab.y, lab.n_classes, rows, regs, seed=seed)
    nan = np.full(len(feats), np.nan)
    ctrl = nan if plan.control is None else online_codelength(
        feats, plan.control, lab.n_classes, rows, regs, seed=seed).online_bits
    return [(float(task.online_bits[i]), task.uniform_bits, float(ctrl[i]), float(task.n_rows))
            for i in range(len(feats))]


def layer_summaries(results: Sequence[ProbeResult]) -> list[LayerSummary]:
    """Per label and method: the expected layer over the score gains and the best layer with its CI
    (`probing.probes.layer_summary`), over the layers with a place in the model."""
    out = []
    keys = list(dict.fromkeys((r.label, r.method) for r in results))
    for label, method in keys:
        rows = [r for r in results if r.label == label and r.method == method]
        placed = [r for r in rows if r.layer_index is not None]
        best = max(rows, key=lambda r: (r.score if np.isfinite(r.score) else -np.inf, -rows.index(r)))
        out.append(
            LayerSummary(
                label=label,
                method=method,
                metric=rows[0].metric,
                expected_layer=expected_layer([int(r.layer_index) for r in placed if r.layer_index is not None],
                                              [r.score for r in placed]),
                gain=_gain(placed),
                best_layer=best.layer,
                best_layer_index=best.layer_index,
                best_score=best.score,
                best_ci_low=best.ci_low,
                best_ci_high=best.ci_high,
            )
        )
    return out


def _gain(placed: Sequence[ProbeResult]) -> float:
    """The best score minus the score of the first layer in model order (what the expected layer spreads)."""
    scores = [r.score for r in sorted(placed, key=lambda r: int(r.layer_index or 0)) if np.isfinite(r.score)]
    return float(max(scores) - scores[0]) if len(scores) >= 2 else float("nan")


def _neurons(
    fitted: dict[tuple[str, str, str], _Fitted], plans: list[_Plan], layers: list[str], k: int
) -> dict[str, dict[str, dict[str, list[list[float]]]]]:
    """Top ``k`` neurons per label, linear method and layer (`probing.probes.neurons.top_neurons`)."""
    from probing.probes.neurons import top_neurons

    out: dict[str, dict[str, dict[str, list[list[float]]]]] = {}
    if k <= 0:
        return out
    for plan in plans:
        for m in plan.methods:
            if m not in (*LINEAR, REGRESSION_METHOD):
                continue
            per_layer = {}
            for layer in layers:
                w = fitted[(plan.labels.field, m, layer)].weights
                if w is not None:
                    per_layer[layer] = [[float(j), round(share, 6)] for j, share in top_neurons(w, k)]
            out.setdefault(plan.labels.field, {})[m] = per_layer
    return out


def model_layer_index(metadata: dict[str, Any], layer: str) -> int | None:
    """A stored layer's place in the model, as transformers counts ``hidden_states``: the embeddings are 0,
    block ``i`` is ``i + 1``; a module inside block ``i`` is ``i + 1``, a final norm the last; None otherwise."""
    if layer == "embeddings":
        return 0
    if layer.startswith("blocks.") and layer[7:].isdigit():
        return int(layer[7:]) + 1
    module = str(metadata.get("layer_modules", {}).get(layer, layer))
    list_name = str(metadata.get("block_list") or "")
    n = metadata.get("num_blocks")
    if list_name and module.startswith(list_name + "."):
        head = module[len(list_name) + 1 :].split(".", 1)[0]
        if head.isdigit():
            return int(head) + 1
    if module in ("ln_f", "norm", "final_layer_norm", "final_layernorm", "norm_f") and n:
        return int(n)
    return None
