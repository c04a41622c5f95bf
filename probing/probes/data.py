"""What a probe is trained on: features per layer, integer-coded labels and train/dev/test folds from a run.

Rows are whatever the run stores (sentences, or words of a word-level run); a *group* field (e.g.
``sentence_id``) ties rows together so that no group is ever on both sides of a split. Every
fold also carries a dev part carved out of its training rows, on which the regularization strength
is chosen, so that the test rows are never looked at before the final prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from probing.errors import ConfigError, ProbingError, close_matches
from probing.probes.rows import Rows

RunReader = Rows  # what probes read: a run's examples, or a token-level run's rows

#: values of a split field, by role (anything else is refused)
TRAIN_VALUES = ("train",)
DEV_VALUES = ("dev", "validation", "valid", "val")
TEST_VALUES = ("test",)
#: fields never proposed as labels when ``label_fields`` is not given
NON_LABEL_FIELDS = (
    "token_counts",
    "row_counts",
    "text",
    "split",
    "example_id",
    "id",
    "sentence_id",
    "sent_id",
    "word_index",
    "position",
    "words",
    "word",
    "token_id",
    "head",
    "lemma",
)
#: a field with more distinct values than this is not taken as a label automatically
MAX_AUTO_CLASSES = 50
#: per-row type fields tried, in order, for the control task when none is given
CONTROL_FIELD_CANDIDATES = ("word", "form", "token", "text")


#: a float label field is a regression target, probed with ridge regression (`probing.probes.ridge`)
REGRESSION = "regression"
CLASSIFICATION = "classification"
#: quantile bins of a regression target used to stratify folds and samples
REGRESSION_STRATA = 5


@dataclass(frozen=True)
class Labels:
    """A label field coded for a probe.

    Classification: ``classes[y[i]]`` is the stored value of row ``i`` (``y[i] == -1``: no value).
    Regression (``kind == "regression"``, a float field): ``y`` holds the values (NaN: no value) and
    ``classes`` is empty. ``present`` marks the rows that have a value: a row without one is left out
    of this label's folds, scores and baselines, and of no other label's.
    """

    field: str
    y: np.ndarray
    classes: list[Any]
    present: np.ndarray | None = None
    kind: str = CLASSIFICATION

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def regression(self) -> bool:
        return self.kind == REGRESSION

    @property
    def rows(self) -> np.ndarray:
        """Indices of the rows with a value."""
        return np.arange(len(self.y)) if self.present is None else np.flatnonzero(self.present)

    @property
    def n_missing(self) -> int:
        return 0 if self.present is None else int(len(self.present) - self.present.sum())

    @property
    def strata(self) -> np.ndarray:
        """Integer codes to stratify folds by: the classes, or quantile bins of a regression target
        (-1 where there is no value)."""
        if not self.regression:
            return self.y
        out = np.full(len(self.y), -1, dtype=np.int64)
        values = self.y[self.rows]
        edges: np.ndarray = np.unique(np.quantile(values, np.linspace(0, 1, REGRESSION_STRATA + 1)[1:-1])) if len(
            values) else np.zeros(0)
        out[self.rows] = np.searchsorted(edges, values, side="right")
        return out

    def subset(self, rows: np.ndarray) -> Labels:
        """These labels at ``rows`` only (a sample of the run's rows)."""
        present = None if self.present is None else self.present[rows]
        return Labels(self.field, self.y[rows], self.classes, present, self.kind)


@dataclass(frozen=True)
class Fold:
    """Row indices of one train/test split.

    ``fit`` and ``dev`` choose the regularization strength (fit on ``fit``, score on ``dev``);
    the final probe is fit on ``train`` and scored on ``test``. ``dev`` is usually carved out of
    ``train`` (then ``fit`` + ``dev`` = ``train``); with an explicit dev split it is disjoint.
    """

    fit: np.ndarray
    dev: np.ndarray
    train: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class Folds:
    """The folds of one label field and a short description of how they were made."""

    folds: list[Fold]
    scheme: str

    @property
    def test_rows(self) -> np.ndarray:
        """All test rows, in the order in which pooled predictions are concatenated."""
        return np.concatenate([f.test for f in self.folds])

    @property
    def mean_train_size(self) -> int:
        return int(round(float(np.mean([len(f.train) for f in self.folds]))))


def _plain(values: np.ndarray) -> np.ndarray:
    """Values as a sortable numpy array: whole numbers stay numbers, anything else becomes str."""
    arr = np.asarray(values)
    if arr.dtype.kind in "biu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ProbingError(
                "Values are real numbers, not classes or groups. Store str or int values for the field."
            )
        return arr.astype(np.int64)
    return np.asarray([str(v) for v in arr.tolist()], dtype=object)


def is_real_valued(values: np.ndarray) -> bool:
    """A float field with values that are not all whole numbers: a regression target."""
    arr = np.asarray(values)
    if arr.dtype.kind != "f":
        return False
    finite = arr[np.isfinite(arr)]
    return bool(len(finite)) and not np.all(finite == np.round(finite))


def field_values(reader: RunReader, field: str, role: str) -> np.ndarray:
    """The per-row values of ``field``, checked to exist; ``role`` names the option in messages."""
    fields = reader.example_fields
    if field not in fields:
        raise ConfigError(
            f"{role} {field!r} is not a per-example field of the run at {reader.path}."
            f"{close_matches(field, fields)} Available fields: {fields}."
        )
    values = np.asarray(reader.example_metadata(field))
    if len(values) != reader.n_examples:
        raise ProbingError(f"Field {field!r} has {len(values)} values for {reader.n_examples} rows; the run is broken.")
    return values


def encode_labels(values: Sequence[Any] | np.ndarray, field: str) -> Labels:
    """Code the values of a label field for a probe; rows whose value is None or NaN have no value.

    Str, bool and whole-number values are classes, coded ``0..n_classes-1`` in sorted order (a single
    class is refused); real numbers are a regression target (``kind == "regression"``).
    """
    raw = list(values.tolist()) if isinstance(values, np.ndarray) else list(values)
    present = np.asarray([not _missing(v) for v in raw], dtype=bool)
    if not present.any():
        raise ProbingError(f"Label {field!r} has no value in any of its {len(raw)} rows: there is nothing to probe.")
    kept = np.asarray([v for v, p in zip(raw, present, strict=True) if p])
    mask = None if present.all() else present
    if is_real_valued(kept):
        y = np.full(len(raw), np.nan)
        y[present] = kept.astype(np.float64)
        if np.ptp(kept.astype(np.float64)) == 0:
            raise ProbingError(f"Label {field!r} has one value in all {len(kept)} rows: there is nothing to probe.")
        return Labels(field=field, y=y, classes=[], present=mask, kind=REGRESSION)
    plain = _plain(kept)
    classes, codes = np.unique(plain, return_inverse=True)
    if len(classes) < 2:
        raise ProbingError(
            f"Label {field!r} has a single class ({classes[0]!r}) in all {len(plain)} rows with a value: there is "
            "nothing to probe. Drop it from the label fields."
        )
    y = np.full(len(raw), -1, dtype=np.int64)
    y[present] = codes.reshape(-1)
    return Labels(
        field=field, y=y, classes=[c.item() if hasattr(c, "item") else c for c in classes], present=mask
    )


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def load_labels(reader: RunReader, field: str) -> Labels:
    """The coded labels of ``field`` in ``reader`` (`encode_labels`). Rows without a value (None, NaN) are left
    out of this label only; a field of mixed value types is refused (its classes would be ``'1'`` and ``1``
    side by side)."""
    raw = reader.example_metadata(field) if field in reader.example_fields else None
    column = getattr(reader, "column", None)  # readers of stored runs know how a field is stored
    col = column(field) if column is not None else None
    if raw is not None and col is not None and (col.kind == "json" or col.nullable):
        if isinstance(raw, np.ma.MaskedArray):
            mask = np.ma.getmaskarray(raw).tolist()
            values = [None if m else v for v, m in zip(raw.data.tolist(), mask, strict=True)]
        else:
            values = list(raw.tolist())
        kinds = sorted({type(v).__name__ for v in values if not _missing(v)})
        if len(kinds) > 1 or (col.kind == "json" and any(isinstance(v, (list, dict)) for v in values)):
            raise ProbingError(
                f"Label {field!r} mixes value types ({', '.join(kinds)}): a probe would treat 1 and '1' as "
                "different classes. Store one type per label field (e.g. all str); rows without a value (None) "
                "are left out of the label."
            )
        return encode_labels(values, field)
    return encode_labels(field_values(reader, field, "Label field"), field)


def default_label_fields(reader: RunReader, exclude: Sequence[str | None] = ()) -> list[str]:
    """Fields that look like labels: 2..`MAX_AUTO_CLASSES` distinct str/int values (classes), or real numbers
    (a regression target).

    Text, token counts, ids, positions and the split/group/control fields (``exclude``) are skipped.
    """
    skip = set(NON_LABEL_FIELDS) | {e for e in exclude if e}
    out = []
    for field in reader.example_fields:
        if field in skip:
            continue
        values = np.asarray(reader.example_metadata(field))
        if is_real_valued(values):
            if np.isfinite(values).sum() > 2:
                out.append(field)  # a real-valued target: ridge regression
            continue
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            continue  # whole numbers with gaps: name the field to probe it
        if values.dtype == object and len(values) and not isinstance(values[0], str):
            continue  # JSON-encoded structures (or values with gaps)
        n = len(np.unique(_plain(values)))
        if 2 <= n <= MAX_AUTO_CLASSES and n < len(values):
            out.append(field)
    if not out:
        raise ConfigError(
            f"No label field found in the run at {reader.path} (fields: {reader.example_fields}). "
            "Name the fields to probe with label_fields / --labels."
        )
    return out


def default_control_field(reader: RunReader) -> str | None:
    """The first of `CONTROL_FIELD_CANDIDATES` the run has (the word form, or the text of a sentence)."""
    return next((f for f in CONTROL_FIELD_CANDIDATES if f in reader.example_fields), None)


def resolve_layers(reader: RunReader, layers: Sequence[int | str] | None) -> list[str]:
    """Stored layer keys for ``layers`` (all stored layers when None)."""
    if not reader.layers:
        raise ProbingError(f"The run at {reader.path} stores no layers.")
    if layers is None:
        return list(reader.layers)
    keys = [reader.layer_key(layer) for layer in layers]
    return list(dict.fromkeys(keys))


def load_features(reader: RunReader, layers: Sequence[str], rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """``{layer: float32 [n_rows, dim]}`` of the given layers (only ``rows``, sorted, when given);
    float16 storage is widened so that sums stay exact enough."""
    out = {}
    expected = reader.n_examples if rows is None else len(rows)
    for layer in layers:
        x = np.asarray(reader.activations(layer) if rows is None else reader.read_rows(layer, rows))
        if x.ndim != 2 or x.shape[0] != expected:
            raise ProbingError(f"Layer {layer!r} has shape {x.shape}; expected ({expected}, dim).")
        out[layer] = x.astype(np.float32, copy=False)
    return out


def sample_rows(n_rows: int, limit: int, strata: np.ndarray | None, groups: np.ndarray | None, seed: int) -> np.ndarray:
    """A seeded sample of about ``limit`` of ``n_rows`` rows, sorted, that keeps the proportions of ``strata``
    (e.g. split x label); with ``groups``, whole groups (sentences) are taken, so none is cut in two."""
    rng = np.random.default_rng(seed)
    if groups is not None:
        codes = group_codes(groups)
        sizes = np.bincount(codes)
        order = rng.permutation(len(sizes))
        take = order[: int(np.searchsorted(np.cumsum(sizes[order]), limit, side="right"))]
        return np.flatnonzero(np.isin(codes, take))
    if strata is None:
        return np.sort(rng.choice(n_rows, size=limit, replace=False))
    codes = group_codes(strata)
    picked = []
    for c in range(int(codes.max()) + 1 if len(codes) else 0):
        members = np.flatnonzero(codes == c)
        k = int(round(limit * len(members) / n_rows))
        if k:
            picked.append(rng.choice(members, size=min(k, len(members)), replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


def feature_groups(reader: RunReader, layers: Sequence[str], rows: int, max_bytes: int) -> list[list[str]]:
    """Layers in groups whose float32 features (``rows`` rows each) fit ``max_bytes`` together (at least one
    layer per group): probing reads a few layers at a time, never the whole run."""
    dims = {k: _layer_width(reader, k) for k in layers}
    groups: list[list[str]] = []
    used = 0
    for k in layers:
        size = rows * dims[k] * 4
        if groups and used + size <= max_bytes:
            groups[-1].append(k)
            used += size
        else:
            groups.append([k])
            used = size
    return groups


def _layer_width(reader: RunReader, layer: str) -> int:
    shape = reader.metadata.get("layout", {}).get("layers", {}).get(layer)
    if shape:
        return int(np.prod(shape))
    if reader.n_examples:
        return int(np.prod(reader.read_rows(layer, np.zeros(1, dtype=np.int64)).shape[1:]))
    return 1


def standardize(
    x: np.ndarray, ref: np.ndarray, parts: Sequence[np.ndarray], out: Sequence[np.ndarray] | None = None
) -> list[np.ndarray]:
    """Rows ``x[part]`` of each part, centered and scaled by the mean and std of the ``ref`` rows.

    Constant features are only centered. The statistics are summed in float64; the result is float32,
    computed in place (no float64 copy of the features), into ``out`` (one float32 array per part)
    when given.
    """
    r = x[ref]
    mean = r.mean(axis=0, dtype=np.float64)
    std = r.std(axis=0, dtype=np.float64)
    std[std < 1e-8] = 1.0
    m, s = mean.astype(np.float32), std.astype(np.float32)
    result = []
    for k, rows in enumerate(parts):
        z = np.empty((len(rows), x.shape[1]), dtype=np.float32) if out is None else out[k]
        if x.dtype == np.float32:
            np.take(x, rows, axis=0, out=z)
        else:
            z[...] = x[rows]
        z -= m
        z /= s
        result.append(z)
    return result


def group_codes(groups: np.ndarray) -> np.ndarray:
    """Integer codes 0..n_groups-1 of per-row group values (str or int)."""
    return np.unique(_plain(groups), return_inverse=True)[1].reshape(-1)


def carve_dev(
    rows: np.ndarray, y: np.ndarray, groups: np.ndarray | None, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split training ``rows`` into (fit, dev): whole groups when ``groups`` is given, else per class."""
    rows = np.asarray(rows)
    if groups is not None:
        uniq, inv = np.unique(groups[rows], return_inverse=True)
        if len(uniq) < 2:
            raise ProbingError(
                f"The training rows hold {len(uniq)} group(s); at least two are needed to carve a dev part."
            )
        order = rng.permutation(len(uniq))
        cumulative = np.cumsum(np.bincount(inv.reshape(-1))[order])
        take = min(int(np.searchsorted(cumulative, fraction * len(rows))) + 1, len(uniq) - 1)
        dev_mask = np.isin(inv.reshape(-1), order[:take])
    else:
        dev_mask = np.zeros(len(rows), dtype=bool)
        for c in np.unique(y[rows]):
            idx = np.flatnonzero(y[rows] == c)
            n_dev = min(int(round(fraction * len(idx))), len(idx) - 1)
            dev_mask[rng.permutation(idx)[:n_dev]] = True
    fit, dev = rows[~dev_mask], rows[dev_mask]
    if len(dev) == 0 or len(fit) == 0:
        raise ProbingError(f"Too few training rows ({len(rows)}) to carve out a dev part for choosing regularization.")
    return fit, dev


def split_folds(
    split: np.ndarray, y: np.ndarray, groups: np.ndarray | None, *, dev_fraction: float, seed: int, field: str
) -> Folds:
    """One fold from a split field (``train``/``test`` and optionally ``dev``/``validation``)."""
    values = np.asarray([str(v) for v in np.asarray(split).tolist()], dtype=object)
    known = set(TRAIN_VALUES) | set(DEV_VALUES) | set(TEST_VALUES)
    unknown = sorted(set(values.tolist()) - known)
    if unknown:
        raise ConfigError(
            f"Split field {field!r} has values {unknown}; expected train, test and optionally dev/validation. "
            "Pass split_field=None (--split-field none) to use k-fold cross-validation instead."
        )
    train = np.flatnonzero(np.isin(values, TRAIN_VALUES))
    dev = np.flatnonzero(np.isin(values, DEV_VALUES))
    test = np.flatnonzero(np.isin(values, TEST_VALUES))
    if len(train) == 0 or len(test) == 0:
        raise ConfigError(
            f"Split field {field!r} has {len(train)} train and {len(test)} test rows; both are needed. "
            "Pass split_field=None to use k-fold cross-validation instead."
        )
    if groups is not None:
        codes = group_codes(groups)
        for name, other in (("test", test), ("dev", dev)):
            shared = np.intersect1d(codes[train], codes[other])
            if len(shared):
                raise ConfigError(
                    f"Split field {field!r} puts rows of {len(shared)} groups in both train and {name} (e.g. group "
                    f"{groups[train][np.isin(codes[train], shared)][0]!r}). Fix the split, or pass split_field=None "
                    "for grouped cross-validation."
                )
    rng = np.random.default_rng(seed)
    if len(dev):
        fold = Fold(fit=train, dev=dev, train=train, test=test)
        scheme = f"split field {field!r}: {len(train)} train, {len(dev)} dev, {len(test)} test"
    else:
        fit, carved = carve_dev(train, y, None if groups is None else group_codes(groups), dev_fraction, rng)
        fold = Fold(fit=fit, dev=carved, train=train, test=test)
        scheme = f"split field {field!r}: {len(train)} train ({len(carved)} of them dev), {len(test)} test"
    return Folds([fold], scheme)


def cv_folds(
    y: np.ndarray, groups: np.ndarray | None, *, k_folds: int, dev_fraction: float, seed: int, group_field: str | None
) -> Folds:
    """k folds: `GroupKFold` when ``groups`` is given (no group on both sides), else stratified k-fold."""
    from sklearn.model_selection import GroupKFold, StratifiedKFold

    if k_folds < 2:
        raise ConfigError(f"k_folds must be >= 2 for cross-validation, got {k_folds}.")
    rng = np.random.default_rng(seed)
    idx = np.arange(len(y))
    codes = None if groups is None else group_codes(groups)
    if codes is not None:
        n_groups = int(codes.max()) + 1 if len(codes) else 0
        if n_groups < k_folds:
            raise ConfigError(
                f"Group field {group_field!r} has {n_groups} groups, fewer than k_folds={k_folds}; lower k_folds."
            )
        splits = GroupKFold(n_splits=k_folds, shuffle=True, random_state=seed).split(idx, y, codes)
        scheme = f"grouped {k_folds}-fold CV by {group_field!r} ({n_groups} groups)"
    else:
        counts = np.bincount(y)
        if counts.max() < k_folds:
            raise ConfigError(
                f"Every class has fewer than k_folds={k_folds} rows (largest: {counts.max()}); lower k_folds."
            )
        splits = StratifiedKFold(n_splits=k_folds, shuffle=True, random_state=seed).split(idx, y)
        scheme = f"stratified {k_folds}-fold CV"
    folds = []
    for train, test in splits:
        if codes is not None and len(np.intersect1d(codes[train], codes[test])):
            raise ProbingError("Grouped CV put one group on both sides of a fold (a bug); please report it.")
        fit, dev = carve_dev(train, y, codes, dev_fraction, rng)
        folds.append(Fold(fit=fit, dev=dev, train=train, test=test))
    return Folds(folds, scheme)


def make_folds(
    y: np.ndarray,
    *,
    split: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    k_folds: int = 5,
    dev_fraction: float = 0.2,
    seed: int = 0,
    split_field: str = "split",
    group_field: str | None = None,
) -> Folds:
    """The folds for labels ``y``: from ``split`` values if given, else grouped or stratified k-fold CV."""
    if split is not None:
        return split_folds(split, y, groups, dev_fraction=dev_fraction, seed=seed, field=split_field)
    return cv_folds(y, groups, k_folds=k_folds, dev_fraction=dev_fraction, seed=seed, group_field=group_field)
