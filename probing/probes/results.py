"""The results of probing one run: one `ProbeResult` per layer x label field x method, in a `ProbeReport`.

Plain dataclasses with a dict form (the JSON file) so that stored reports can be loaded back and
compared, e.g. several strategies in one plot.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probing.errors import ConfigError, ProbingError


@dataclass(frozen=True)
class ProbeResult:
    """Test scores of the probe of one layer for one label field and method.

    ``metric`` is ``"accuracy"`` for class labels and ``"r2"`` for real-valued labels (ridge
    regression). ``score`` is that metric, pooled over all test rows (all folds under
    cross-validation); ``ci_low`` / ``ci_high`` its 95% bootstrap interval; ``baseline`` the score of
    the trivial predictor (the most frequent training class, or the training mean); ``control_score``
    the same probe's score on the control task and ``selectivity = score - control_score`` (NaN without
    a control field). ``codelength_bits`` is the online (MDL) codelength of the training labels,
    ``uniform_bits`` that of the uniform code and ``compression`` their ratio (``control_*`` the same for
    the control task; NaN where not computed: regression, MLP probes, ``mdl=False``). ``n_train`` the
    training rows (mean over folds); ``C`` the chosen inverse L2 strength (median over folds; ridge:
    ``1 / alpha``); ``seconds`` the fitting time of this layer's task and control probes.
    """

    run: str
    model: str
    strategy: str
    layer: str
    layer_index: int | None
    label: str
    method: str
    metric: str
    score: float
    ci_low: float
    ci_high: float
    macro_f1: float
    baseline: float
    control_score: float
    selectivity: float
    codelength_bits: float
    uniform_bits: float
    compression: float
    control_codelength_bits: float
    control_compression: float
    n_train: int
    n_test: int
    n_classes: int
    C: float
    seconds: float

    @property
    def accuracy(self) -> float:
        """Test accuracy (NaN for a regression probe)."""
        return self.score if self.metric == "accuracy" else float("nan")

    @property
    def majority(self) -> float:
        """Accuracy of the majority class (NaN for a regression probe)."""
        return self.baseline if self.metric == "accuracy" else float("nan")

    @property
    def control_accuracy(self) -> float:
        """Control-task accuracy (NaN for a regression probe)."""
        return self.control_score if self.metric == "accuracy" else float("nan")


#: CSV/JSON column order
COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ProbeResult))
#: columns of reports written before a column existed: their stored name, or their value
_RENAMED = {"score": "accuracy", "baseline": "majority", "control_score": "control_accuracy"}
_ABSENT: dict[str, Any] = {"metric": "accuracy"}
_ADDED = ("codelength_bits", "uniform_bits", "compression", "control_codelength_bits", "control_compression")


@dataclass
class ProbeReport:
    """Everything `probe_run` found for one run, plus how it was obtained.

    ``schemes`` says per label field how train and test rows were chosen, ``classes`` its class
    values (in code order); ``settings`` holds the arguments of the call; ``seconds`` the wall time
    per method (task and control probes, all layers); ``files`` the files written (``csv``,
    ``json``, ``png``). ``summary`` holds, per label and method, the expected layer and the best layer
    with its CI (`probing.probes.layer_summary.LayerSummary` as dicts); ``neurons[label][method][layer]``
    the top neurons of the linear probe as ``[index, share of weight mass]`` (`probing.probes.neurons`);
    ``missing[label]`` the rows left out of a label because they have no value for it.
    """

    run_path: str
    run_id: str
    model: str
    strategy: str
    n_rows: int
    layers: list[str]
    label_fields: list[str]
    methods: list[str]
    results: list[ProbeResult]
    settings: dict[str, Any] = field(default_factory=dict)
    schemes: dict[str, str] = field(default_factory=dict)
    classes: dict[str, list[Any]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    summary: list[dict[str, Any]] = field(default_factory=list)
    neurons: dict[str, dict[str, dict[str, list[list[float]]]]] = field(default_factory=dict)
    missing: dict[str, int] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        """The results as dicts in `COLUMNS` order (one per layer x label field x method)."""
        return [dataclasses.asdict(r) for r in self.results]

    def result(self, layer: str, label: str, method: str | None = None) -> ProbeResult:
        """The result of one layer and label field (and method, needed when the report holds several)."""
        method = method or self.methods[0]
        for r in self.results:
            if r.layer == layer and r.label == label and r.method == method:
                return r
        raise ConfigError(
            f"No result for layer {layer!r}, label {label!r}, method {method!r}; the report has layers "
            f"{self.layers}, labels {self.label_fields}, methods {self.methods}."
        )

    def layer_summary(self, label: str, method: str | None = None) -> dict[str, Any]:
        """Expected layer and best layer of one label field (and method)."""
        method = method or next((r.method for r in self.results if r.label == label), self.methods[0])
        for entry in self.summary:
            if entry["label"] == label and entry["method"] == method:
                return entry
        raise ConfigError(f"No layer summary for label {label!r}, method {method!r}; labels: {self.label_fields}.")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["results"] = self.rows()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeReport:
        try:
            rows: list[dict[str, Any]] = [
                {k: float("nan") if v is None and k != "layer_index" else v
                 for k, v in ((k, _stored(row, k)) for k in COLUMNS)}
                for row in data["results"]
            ]
            results = [ProbeResult(**row) for row in rows]
            kwargs = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data and f.name != "results"}
            if "summary" in kwargs:  # JSON has no NaN: the writer stored it as null
                kwargs["summary"] = [{k: float("nan") if v is None and k not in ("best_layer_index",) else v
                                      for k, v in entry.items()} for entry in kwargs["summary"]]
            return cls(results=results, **kwargs)
        except (KeyError, TypeError) as exc:
            raise ProbingError(f"Not a probe report (missing {exc}); expected the JSON written by probe_run.") from exc


def _stored(row: dict[str, Any], column: str) -> Any:
    """A column of a stored result row, also from reports written before it was added or renamed."""
    if column in row:
        return row[column]
    if column in _RENAMED and _RENAMED[column] in row:
        return row[_RENAMED[column]]
    if column in _ABSENT:
        return _ABSENT[column]
    if column in _ADDED:
        return None
    return row[column]


def load_report(path: str | os.PathLike[str]) -> ProbeReport:
    """Load a report from the JSON file written by `probe_run` (or a folder holding exactly one)."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("probes_*.json"))
        if len(found) != 1:
            raise ProbingError(f"{p} holds {len(found)} probe reports ({[f.name for f in found]}); pass one file.")
        p = found[0]
    return ProbeReport.from_dict(json.loads(p.read_text()))
