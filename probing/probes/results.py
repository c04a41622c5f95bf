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

    ``accuracy`` is pooled over all test rows (all folds under cross-validation); ``ci_low`` /
    ``ci_high`` its 95% bootstrap interval; ``majority`` the accuracy of predicting the most
    frequent training class; ``control_accuracy`` the same probe's accuracy on the control task and
    ``selectivity = accuracy - control_accuracy`` (NaN without a control field); ``n_train`` the
    training rows (mean over folds); ``C`` the chosen inverse L2 strength (median over folds);
    ``seconds`` the fitting time of this layer's task and control probes.
    """

    run: str
    model: str
    strategy: str
    layer: str
    layer_index: int | None
    label: str
    method: str
    accuracy: float
    ci_low: float
    ci_high: float
    macro_f1: float
    majority: float
    control_accuracy: float
    selectivity: float
    n_train: int
    n_test: int
    n_classes: int
    C: float
    seconds: float


#: CSV/JSON column order
COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ProbeResult))


@dataclass
class ProbeReport:
    """Everything `probe_run` found for one run, plus how it was obtained.

    ``schemes`` says per label field how train and test rows were chosen, ``classes`` its class
    values (in code order); ``settings`` holds the arguments of the call; ``seconds`` the wall time
    per method (task and control probes, all layers); ``files`` the files written (``csv``,
    ``json``, ``png``).
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

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["results"] = self.rows()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeReport:
        try:
            rows: list[dict[str, Any]] = [
                {k: float("nan") if row[k] is None else row[k] for k in COLUMNS} for row in data["results"]
            ]
            results = [ProbeResult(**row) for row in rows]
            kwargs = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data and f.name != "results"}
            return cls(results=results, **kwargs)
        except (KeyError, TypeError) as exc:
            raise ProbingError(f"Not a probe report (missing {exc}); expected the JSON written by probe_run.") from exc


def load_report(path: str | os.PathLike[str]) -> ProbeReport:
    """Load a report from the JSON file written by `probe_run` (or a folder holding exactly one)."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("probes_*.json"))
        if len(found) != 1:
            raise ProbingError(f"{p} holds {len(found)} probe reports ({[f.name for f in found]}); pass one file.")
        p = found[0]
    return ProbeReport.from_dict(json.loads(p.read_text()))
