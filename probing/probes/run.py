"""`probe_run`: probe every layer of a stored run for every label field, with baselines, and write a report.

For each label field: make the folds (split field, grouped k-fold by a group field, or stratified
k-fold), then per method fit the probes of all layers (choosing C on a dev part of each fold's
training rows), fit the same probes with the same C on the control task, and score the pooled test
predictions: accuracy with a bootstrap CI, macro-F1, majority baseline, control accuracy and
selectivity.
"""

from __future__ import annotations

import dataclasses
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
from probing.probes.control import control_labels
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
from probing.probes.metrics import accuracy, bootstrap_ci, macro_f1, majority_baseline
from probing.probes.results import ProbeReport, ProbeResult
from probing.probes.rows import Rows
from probing.storage.reader import RunReader

log = logging.getLogger("probing.probes")

METHODS = ("sklearn", "torch")
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


def _implementation(method: str) -> Callable[..., ProbeFit]:
    if method == "sklearn":
        from probing.probes.sklearn_probe import sklearn_fit_predict

        return sklearn_fit_predict
    from probing.probes.torch_probe import torch_fit_predict

    return torch_fit_predict


def parse_methods(method: str | Sequence[str]) -> list[str]:
    """``"sklearn"``, ``"torch"``, ``"both"``, ``"sklearn,torch"`` or a list -> validated method names."""
    items = method.split(",") if isinstance(method, str) else list(method)
    out: list[str] = []
    for item in (s.strip() for s in items):
        names = list(METHODS) if item == "both" else [item]
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


def _pooled_majority(folds: Folds, y: np.ndarray) -> float:
    """Accuracy of predicting each fold's most frequent training class, over all test rows."""
    hits = sum(majority_baseline(y[f.train], y[f.test]) * len(f.test) for f in folds.folds)
    return float(hits / len(folds.test_rows))


def _fit_folds(
    fit: Callable[..., ProbeFit],
    features: list[np.ndarray],
    labels: Labels,
    folds: Folds,
    control: np.ndarray | None,
    grid: Sequence[float],
) -> tuple[np.ndarray, np.ndarray | None, list[float], list[float]]:
    """Pooled task predictions ``[L, n_test]``, control predictions, median C and seconds per layer."""
    preds, cpreds, regs = [], [], []
    seconds = np.zeros(len(features))
    for fold in folds.folds:
        task = fit(features, labels.y, labels.n_classes, fold, grid=grid, control=control)
        preds.append(task.predictions)
        regs.append(task.regs)
        seconds += task.seconds
        if task.control is not None:
            cpreds.append(task.control)
    median_c = np.median(np.asarray(regs), axis=0).tolist()
    return (
        np.concatenate(preds, axis=1),
        np.concatenate(cpreds, axis=1) if control is not None else None,
        [float(c) for c in median_c],
        seconds.tolist(),
    )


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
    """
    start_all = time.perf_counter()
    reader = _open(path_or_reader)
    methods = parse_methods(method)
    if not 0 < dev_fraction < 1:
        raise ConfigError(f"dev_fraction must be in (0, 1), got {dev_fraction}.")
    if not c_grid or any(c <= 0 for c in c_grid):
        raise ConfigError(f"c_grid must hold positive values, got {list(c_grid)}.")
    _check_search_rows(search_rows)  # before features are loaded
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
        strata = labels[0].y if split is None else np.char.add(np.asarray(split, dtype=str), labels[0].y.astype(str))
        rows = sample_rows(reader.n_examples, max_rows, strata, groups, seed)
        what = "whole groups" if groups is not None else f"stratified by split and {labels[0].field!r}"
        print(f"probing: {reader.n_examples:,} rows > max_rows={max_rows:,}: probing a sample of {len(rows):,} rows "
              f"({what}, seed {seed})", file=sys.stderr)
        labels = [Labels(lab.field, lab.y[rows], lab.classes) for lab in labels]
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
    # per label: folds, majority, control labels; decided once, before any feature is read
    plans = []
    for lab in labels:
        folds = make_folds(
            lab.y,
            split=split,
            groups=groups,
            k_folds=k_folds,
            dev_fraction=dev_fraction,
            seed=seed,
            split_field=str(split_name),
            group_field=group_name,
        )
        _check_training_classes(folds, lab)
        folds = cap_search_rows(folds, search_rows, seed)
        control = None if types is None else control_labels(types, lab.y, lab.n_classes, seed=seed, salt=lab.field)
        plans.append((lab, folds, control))
    schemes = {lab.field: folds.scheme for lab, folds, _ in plans}
    method_seconds = dict.fromkeys(methods, 0.0)
    fitted: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray | None, float, float]] = {}
    done_layers = 0
    for group in feature_groups(reader, layer_keys, n_rows, feature_bytes):
        features = load_features(reader, group, rows)
        feats = [features[k] for k in group]
        for j, (lab, folds, control) in enumerate(plans):
            for m in methods:
                t0 = time.perf_counter()
                preds, cpreds, regs, seconds = _fit_folds(_implementation(m), feats, lab, folds, control, c_grid)
                method_seconds[m] += time.perf_counter() - t0
                for i, layer in enumerate(group):
                    control_pred = None if cpreds is None else cpreds[i]
                    fitted[(lab.field, m, layer)] = (preds[i], control_pred, regs[i], seconds[i])
                if progress:
                    span = group[0] if len(group) == 1 else f"{group[0]}..{group[-1]}"
                    print(f"probes: {lab.field!r} ({j + 1}/{len(plans)} labels) {m} on {span} "
                          f"(layers {done_layers + len(group)}/{len(layer_keys)}): {time.perf_counter() - t0:.1f} s",
                          file=sys.stderr, flush=True)
        done_layers += len(group)
        del features, feats
    results: list[ProbeResult] = []
    for lab, folds, control in plans:
        test = folds.test_rows
        y_test = lab.y[test]
        test_groups = None if groups is None else group_codes(groups)[test]
        majority = _pooled_majority(folds, lab.y)
        for m in methods:
            for layer in layer_keys:
                pred, cpred, reg, secs = fitted[(lab.field, m, layer)]
                correct = pred == y_test
                acc = float(correct.mean())
                low, high = bootstrap_ci(correct, groups=test_groups, n_resamples=n_bootstrap, seed=seed)
                c_acc = float("nan") if control is None or cpred is None else accuracy(control[test], cpred)
                results.append(
                    ProbeResult(
                        **run_info,
                        layer=layer,
                        layer_index=model_layer_index(reader.metadata, layer),
                        label=lab.field,
                        method=m,
                        accuracy=acc,
                        ci_low=low,
                        ci_high=high,
                        macro_f1=macro_f1(y_test, pred),
                        majority=majority,
                        control_accuracy=c_acc,
                        selectivity=acc - c_acc,
                        n_train=folds.mean_train_size,
                        n_test=len(test),
                        n_classes=lab.n_classes,
                        C=reg,
                        seconds=secs,
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
        "rows_probed": n_rows,
        "total_seconds": round(time.perf_counter() - start_all, 3),
    }
    report = ProbeReport(
        run_path=str(Path(reader.path).resolve()) if reader.path else "",
        run_id=run_info["run"],
        model=run_info["model"],
        strategy=run_info["strategy"],
        n_rows=n_rows,
        layers=layer_keys,
        label_fields=fields,
        methods=methods,
        results=results,
        settings=settings,
        schemes=schemes,
        classes={lab.field: list(lab.classes) for lab in labels},
        seconds={m: round(s, 3) for m, s in method_seconds.items()},
    )
    if write:
        from probing.probes.report import new_report_dir, write_report

        if out_dir is None and not reader.path:
            raise ConfigError("The reader has no path to write probes/ into; pass out_dir, or write=False.")
        target = new_report_dir(os.path.join(reader.path, "probes"), methods) if out_dir is None else out_dir
        write_report(report, target, overwrite=overwrite)
    return report


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
