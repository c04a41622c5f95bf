"""Probes per layer: planted signal is found, baselines/control/CI are right, splits never leak groups, reports.

Most tests use small in-memory runs (a `RunReader` subclass) with a signal planted in one layer;
one builds a real Zarr run through the storage API, and one runs the built-in dataset through the
CLI and probes it with `probe_main`.
"""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cli_helpers import cli, run_path

from probing import ZarrStorage, open_run
from probing.errors import ConfigError, ProbingError
from probing.probes import (
    ProbeReport,
    bootstrap_ci,
    control_labels,
    format_table,
    load_report,
    macro_f1,
    majority_baseline,
    make_folds,
    plot_reports,
    probe_main,
    probe_run,
)


class MemoryReader:
    """A completed run held in memory (what probes read of a `RunReader`): ``layers`` name -> [n, dim],
    ``fields`` name -> per-row values."""

    def __init__(self, layers: Mapping[str, np.ndarray], fields: Mapping[str, Sequence[Any]], path: str = "") -> None:
        self.path = path
        self._layers = dict(layers)
        self._fields = {k: np.asarray(v) for k, v in fields.items()}
        n = len(next(iter(self._layers.values())))
        self.metadata = {
            "run_id": "memory",
            "completed": True,
            "layers": list(self._layers),
            "dataset": {"n_examples": n},
            "model": {"name_or_path": "fake/model"},
            "strategy": {"name": "mean"},
        }

    run_id = "memory"

    @property
    def layers(self) -> list[str]:
        return list(self._layers)

    @property
    def n_examples(self) -> int:
        return len(next(iter(self._layers.values())))

    def layer_key(self, layer: int | str) -> str:
        if layer not in self._layers:
            raise ConfigError(f"no layer {layer!r}")
        return str(layer)

    @property
    def example_fields(self) -> list[str]:
        return list(self._fields)

    def activations(self, layer: int | str) -> np.ndarray:
        return self._layers[self.layer_key(layer)]

    def read_rows(self, layer: int | str, rows: np.ndarray) -> np.ndarray:
        return self.activations(layer)[rows]

    def example_metadata(self, field: str) -> np.ndarray:
        return self._fields[field]


def planted(n: int = 400, dim: int = 16, seed: int = 0, strength: float = 3.0) -> MemoryReader:
    """Sentence-level rows: ``label`` (str, 3 classes) and ``flag`` (int, binary) are linear in layer
    ``signal``; layer ``noise`` is independent of everything; ``split`` is 75/25; texts are unique."""
    rng = np.random.default_rng(seed)
    label = rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.3, 0.2])
    flag = rng.integers(0, 2, size=n)
    centers = rng.normal(size=(3, dim)) * strength
    signal = rng.normal(size=(n, dim)) + centers[np.searchsorted(["a", "b", "c"], label)]
    signal[:, -1] += strength * (2 * flag - 1)
    fields = {
        "text": [f"sentence {i}" for i in range(n)],
        "label": label,
        "flag": flag,
        "split": np.where(np.arange(n) % 4 == 3, "test", "train"),
    }
    layers = {"noise": rng.normal(size=(n, dim)).astype(np.float32), "signal": signal.astype(np.float32)}
    return MemoryReader(layers, fields)


def words(n_sentences: int = 120, seed: int = 0) -> MemoryReader:
    """Word-level rows: 6-14 words per sentence drawn from 60 types; ``upos`` (4 classes) is a property of
    the type that layer ``signal`` encodes linearly (type vector + context noise); ``sentence_id`` groups."""
    rng = np.random.default_rng(seed)
    n_types, dim = 60, 24
    type_vecs = rng.normal(size=(n_types, dim))
    directions = rng.normal(size=(4, dim))
    type_pos = np.argmax(type_vecs @ directions.T, axis=1)
    sentence_id, form = [], []
    for s in range(n_sentences):
        k = int(rng.integers(6, 15))
        sentence_id += [s] * k
        form += rng.integers(0, n_types, size=k).tolist()
    types = np.asarray(form)
    n = len(types)
    signal = type_vecs[types] + 0.3 * rng.normal(size=(n, dim))
    fields = {
        "sentence_id": np.asarray(sentence_id),
        "form": np.asarray([f"w{t}" for t in types]),
        "upos": np.asarray(["NOUN", "VERB", "ADJ", "DET"])[type_pos[types]],
    }
    layers = {"noise": rng.normal(size=(n, dim)).astype(np.float32), "signal": signal.astype(np.float32)}
    return MemoryReader(layers, fields)


# --- probes find planted signal, not noise ----------------------------------------------------------


@pytest.mark.parametrize("method", ["sklearn", "torch"])
def test_planted_signal_is_found_and_noise_stays_at_majority(method):
    report = probe_run(planted(), method=method, write=False)
    assert report.label_fields == ["label", "flag"]  # text and split are not labels
    for label in ("label", "flag"):
        sig, noise = report.result("signal", label, method), report.result("noise", label, method)
        assert sig.accuracy > 0.95 and sig.macro_f1 > 0.9
        assert noise.accuracy < noise.majority + 0.1
        assert sig.n_train == 300 and sig.n_test == 100 and sig.majority == noise.majority
    assert report.result("signal", "label").n_classes == 3 and report.result("signal", "flag").n_classes == 2


@pytest.mark.parametrize("method", ["sklearn", "torch"])
def test_layers_are_read_a_few_at_a_time_with_the_same_results(method, monkeypatch):
    """A run larger than memory is probed layer group by layer group, never all layers at once."""
    import probing.probes.run as run_module

    reader = planted(n=300)
    reader._layers.update({f"copy{i}": reader._layers["signal"] for i in range(3)})
    reader.metadata["layers"] = list(reader._layers)
    whole = probe_run(reader, method=method, write=False)
    loaded: list[list[str]] = []
    load = run_module.load_features

    def spy(r, layers, rows=None):  # type: ignore[no-untyped-def]
        loaded.append(list(layers))
        return load(r, layers, rows)

    monkeypatch.setattr(run_module, "load_features", spy)
    one_layer = 300 * 16 * 4
    bounded = probe_run(reader, method=method, write=False, feature_bytes=2 * one_layer)
    assert max(len(g) for g in loaded) == 2 and sorted(k for g in loaded for k in g) == sorted(reader.layers)
    for a, b in zip(whole.results, bounded.results, strict=True):
        assert (a.layer, a.label) == (b.layer, b.label) and a.accuracy == b.accuracy


def test_a_run_over_max_rows_is_probed_on_a_stratified_sample(capsys):
    reader = planted(n=800)
    report = probe_run(reader, label_fields=["label"], write=False, max_rows=400)
    assert "800 rows > max_rows=400" in capsys.readouterr().err
    sig = report.result("signal", "label")
    assert report.n_rows == report.settings["rows_probed"] and abs(report.n_rows - 400) <= 6
    assert abs(sig.n_test - 100) <= 6  # the split's 1 in 4 test rows is kept
    assert sig.accuracy > 0.95
    with pytest.raises(ConfigError, match="max_rows"):
        probe_run(reader, write=False, max_rows=1)


def test_sklearn_and_torch_agree_on_planted_data():
    report = probe_run(planted(strength=0.6, seed=3), method="both", write=False)
    for r in report.results:
        if r.method == "sklearn":
            other = report.result(r.layer, r.label, "torch")
            assert abs(r.accuracy - other.accuracy) <= 0.04, (r, other)


def test_no_split_field_falls_back_to_stratified_cv_over_all_rows():
    reader = planted(n=300)
    report = probe_run(reader, label_fields="label", split_field=None, k_folds=4, write=False)
    r = report.result("signal", "label")
    assert "stratified 4-fold" in report.schemes["label"]
    assert r.n_test == 300 and r.n_train == 225 and r.accuracy > 0.95


# --- splits ----------------------------------------------------------------------------------------


def test_grouped_cv_never_splits_a_group():
    reader = words()
    groups = reader.example_metadata("sentence_id")
    y = np.unique(reader.example_metadata("upos"), return_inverse=True)[1]
    folds = make_folds(y, groups=groups, k_folds=5, seed=1, group_field="sentence_id")
    tested = np.concatenate([f.test for f in folds.folds])
    assert sorted(tested.tolist()) == list(range(len(y)))  # every row tested exactly once
    for f in folds.folds:
        assert not set(groups[f.train]) & set(groups[f.test])
        assert not set(groups[f.fit]) & set(groups[f.dev])  # the dev part is carved by whole groups too
        assert sorted(np.concatenate([f.fit, f.dev]).tolist()) == sorted(f.train.tolist())


def test_word_level_run_probes_with_groups_and_selectivity():
    report = probe_run(words(), label_fields=["upos"], group_field="sentence_id", control_field="form", write=False)
    assert "grouped 5-fold CV by 'sentence_id'" in report.schemes["upos"]
    sig, noise = report.result("signal", "upos"), report.result("noise", "upos")
    assert sig.accuracy > 0.9 and noise.accuracy < noise.majority + 0.1
    assert sig.control_accuracy < sig.accuracy - 0.2  # the control task is harder than the task ...
    assert sig.selectivity == pytest.approx(sig.accuracy - sig.control_accuracy)  # ... by the selectivity
    assert sig.ci_low <= sig.accuracy <= sig.ci_high


def test_split_field_that_puts_a_group_on_both_sides_is_refused():
    reader = words(n_sentences=20)
    n = reader.n_examples
    reader._fields["split"] = np.where(np.arange(n) % 5 == 0, "test", "train")  # splits words, not sentences
    with pytest.raises(ConfigError, match="groups in both train and test"):
        probe_run(reader, label_fields=["upos"], group_field="sentence_id", write=False)


def test_split_values_dev_split_and_unknown_values():
    reader = planted(n=200)
    split = np.asarray(["train"] * 120 + ["dev"] * 40 + ["test"] * 40)
    folds = make_folds(np.zeros(200, dtype=int), split=split)
    (fold,) = folds.folds
    assert fold.fit.tolist() == fold.train.tolist() == list(range(120)) and fold.dev.tolist() == list(range(120, 160))
    reader._fields["split"] = np.asarray(["train", "eval"] * 100)
    with pytest.raises(ConfigError, match=r"values \['eval'\].*split_field=None"):
        probe_run(reader, write=False)


def test_c_is_chosen_on_a_capped_seeded_subset_and_the_final_fit_uses_every_training_row():
    from probing.probes.run import cap_search_rows

    y = np.arange(1000) % 3
    folds = make_folds(y, split=np.asarray(["train"] * 800 + ["test"] * 200))
    capped = cap_search_rows(folds, 100, seed=0)
    (fold,), (orig,) = capped.folds, folds.folds
    assert len(fold.fit) == len(fold.dev) == 100 and np.all(np.diff(fold.fit) > 0)
    assert set(fold.fit) <= set(orig.fit) and set(fold.dev) <= set(orig.dev)
    assert np.array_equal(fold.train, orig.train) and np.array_equal(fold.test, orig.test)
    assert np.array_equal(cap_search_rows(folds, 100, seed=0).folds[0].fit, fold.fit)  # seeded
    assert "C chosen on 100 fit and 100 dev rows" in capped.scheme
    assert cap_search_rows(folds, None, seed=0) is folds and cap_search_rows(folds, 10_000, seed=0) is folds
    with pytest.raises(ConfigError, match="search_rows"):
        cap_search_rows(folds, 1, seed=0)
    report = probe_run(planted(n=400), label_fields="label", search_rows=60, write=False)
    assert report.settings["search_rows"] == 60 and "C chosen on 60 fit" in report.schemes["label"]
    best = max(r.accuracy for r in report.results)
    assert best > 0.9  # the planted layer is still found


@pytest.mark.parametrize("method", ["sklearn", "torch"])
def test_a_class_missing_from_the_search_rows_still_gets_a_final_fit_and_control_probes(method: str):
    """The final fit starts from the chosen dev fit; a class only the training rows hold must not break it."""
    from probing.probes.data import Fold
    from probing.probes.run import _implementation

    rng = np.random.default_rng(0)
    y = np.arange(600) % 3
    y[[5, 305]] = 3  # class 3: one training row (outside fit/dev) and one test row
    x = rng.standard_normal((600, 6)).astype(np.float32)
    x[np.arange(600), y] += 4.0
    fold = Fold(fit=np.arange(10, 200), dev=np.arange(200, 300), train=np.arange(300), test=np.arange(300, 600))
    control = rng.integers(0, 4, 600)
    fit = _implementation(method)([x, x * 2], y, 4, fold, control=control)
    assert fit.control is not None and fit.control.shape == fit.predictions.shape == (2, 300)
    assert all(np.mean(p == y[fold.test]) > 0.9 for p in fit.predictions)


# --- baselines, control task, CI, metrics ------------------------------------------------------------


def test_control_labels_are_a_fixed_random_function_of_the_type():
    types = np.asarray(["the", "cat", "the", "sat", "cat", "the"] * 50)
    y = np.asarray([0, 1, 0, 2, 1, 0] * 50)
    c = control_labels(types, y, 3, seed=0, salt="upos")
    for t in np.unique(types):
        assert len(set(c[types == t])) == 1
    assert np.array_equal(c, control_labels(types, y, 3, seed=0, salt="upos"))  # seeded
    many = control_labels(np.arange(20000), np.asarray([0] * 3 + [1]), 2, seed=1)
    assert abs(many.mean() - 0.25) < 0.02  # drawn from the task's label distribution


def test_sentence_level_control_uses_the_text_and_gives_selectivity():
    report = probe_run(planted(), label_fields=["label"], write=False)
    assert report.settings["control_field"] == "text"
    r = report.result("signal", "label")
    assert r.control_accuracy < r.accuracy - 0.3 and r.selectivity == pytest.approx(r.accuracy - r.control_accuracy)
    off = probe_run(planted(), label_fields=["label"], control_field="none", write=False)
    assert np.isnan(off.result("signal", "label").selectivity)


def test_bootstrap_ci_contains_accuracy_is_seeded_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = rng.random(100) < 0.8
    big = rng.random(10000) < 0.8
    lo, hi = bootstrap_ci(small, seed=0)
    assert lo <= small.mean() <= hi and (lo, hi) == bootstrap_ci(small, seed=0)
    blo, bhi = bootstrap_ci(big, seed=0)
    assert bhi - blo < (hi - lo) / 5
    # rows of one group are not independent: resampling whole groups gives a wider interval
    groups = np.repeat(np.arange(50), 20)
    clustered = np.repeat(rng.random(50) < 0.8, 20)
    row_lo, row_hi = bootstrap_ci(clustered, seed=0)
    grp_lo, grp_hi = bootstrap_ci(clustered, groups=groups, seed=0)
    assert grp_hi - grp_lo > 2 * (row_hi - row_lo) and grp_lo <= clustered.mean() <= grp_hi


def test_every_report_row_has_its_accuracy_inside_its_ci():
    report = probe_run(planted(strength=0.8), method="both", write=False)
    for r in report.results:
        assert r.ci_low <= r.accuracy <= r.ci_high and r.ci_low >= 0 and r.ci_high <= 1


def test_metrics():
    y = np.asarray([0, 0, 0, 1, 1, 2])
    assert majority_baseline(np.asarray([1, 0, 0]), y) == pytest.approx(0.5)
    assert macro_f1(y, y) == 1.0
    assert macro_f1(y, np.zeros(6, dtype=int)) == pytest.approx((2 * 3 / (2 * 3 + 3)) / 3)


# --- errors ----------------------------------------------------------------------------------------


def test_clear_errors_for_bad_labels_and_options():
    reader = planted(n=100)
    with pytest.raises(ConfigError, match=r"'lable'.*Did you mean: 'label'.*Available fields"):
        probe_run(reader, label_fields=["lable"], write=False)
    reader._fields["const"] = np.asarray(["x"] * 100)
    with pytest.raises(ProbingError, match="single class"):
        probe_run(reader, label_fields=["const"], write=False)
    with pytest.raises(ConfigError, match="Unknown probe method 'svm'"):
        probe_run(reader, method="svm", write=False)
    with pytest.raises(ConfigError, match="Group field 'sent'"):
        probe_run(reader, group_field="sent", write=False)
    with pytest.raises(ConfigError, match=r"Split field 'spilt'.*Did you mean: 'split'"):
        probe_run(reader, split_field="spilt", write=False)  # only the default "split" may be absent
    with pytest.raises(ConfigError, match="no path"):
        probe_run(reader, label_fields=["label"])


# --- reports ---------------------------------------------------------------------------------------


def _zarr_run(root: Path, reader: MemoryReader, run_id: str, strategy: str) -> str:
    n = reader.n_examples
    meta = {"layers": reader.layers, "dataset": {"n_examples": n}, "strategy": {"name": strategy}}
    writer = ZarrStorage(str(root)).open_run(run_id, metadata=meta)
    for start in range(0, n, 64):
        ids = np.arange(start, min(n, start + 64))
        writer.append(start // 64, {k: reader.activations(k)[ids] for k in reader.layers}, {"example_ids": ids})
    writer.finalize({f: reader.example_metadata(f).tolist() for f in reader.example_fields})
    return writer.path


def test_report_files_are_written_into_the_run_and_load_back(tmp_path):
    path = _zarr_run(tmp_path, planted(n=200), "planted", "mean")
    report = probe_run(path, method="both")
    again = probe_run(path, method="both")  # a second invocation writes its own report, beside the first
    out = Path(path) / "probes"
    assert set(report.files) == {"csv", "json", "png"}
    names = {Path(p).name for p in report.files.values()}
    assert names == {f"probes_sklearn+torch.{ext}" for ext in ("csv", "json", "png")}
    for p in report.files.values():
        assert Path(p).parent.parent == out and Path(p).stat().st_size > 0
    assert Path(again.files["csv"]).parent != Path(report.files["csv"]).parent
    assert Path(report.files["csv"]).exists() and len(list(out.iterdir())) == 2
    png = Path(report.files["png"]).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    lines = Path(report.files["csv"]).read_text().splitlines()
    assert lines[0].startswith("run,model,strategy,layer,layer_index,label,method,metric,score,ci_low,ci_high,macro_f1")
    assert {row.split(",")[4] for row in lines[1:]} == {""}  # modules of no block: no model layer index
    assert len(lines) == 1 + 2 * 2 * 2  # layers x labels x methods
    loaded = load_report(report.files["json"])
    assert len(loaded.rows()) == 8 and loaded.settings == report.settings
    assert loaded.result("signal", "label", "torch").accuracy == pytest.approx(
        report.result("signal", "label", "torch").accuracy
    )
    data = json.loads(Path(report.files["json"]).read_text())
    assert data["schemes"]["label"].startswith("split field 'split'") and data["settings"]["control_field"] == "text"
    assert open_run(path).completed  # the run is still readable
    with pytest.raises(ProbingError, match="not replaced"):  # an explicit folder holding a report is refused
        probe_run(path, method="both", out_dir=Path(report.files["csv"]).parent)
    probe_run(path, method="both", out_dir=Path(report.files["csv"]).parent, overwrite=True)


def _figure_of(monkeypatch):  # type: ignore[no-untyped-def]
    """Capture the matplotlib figure plot_reports saves."""
    from matplotlib.figure import Figure

    figures = []
    save = Figure.savefig

    def keep(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        figures.append(self)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


@pytest.mark.parametrize("n_layers", [1, 2])
def test_plots_fit_their_title_and_legend_and_list_only_what_they_draw(tmp_path, monkeypatch, n_layers):
    figures = _figure_of(monkeypatch)
    reader = planted()
    if n_layers == 1:  # a multirun job with layers=1: one point per line
        reader._layers.pop("noise")
        reader.metadata["layers"] = ["signal"]
    report = probe_run(reader, label_fields=["label"], write=False)
    plot_reports([report], tmp_path / "one.png")
    fig = figures[-1]
    fig.canvas.draw()
    box = fig.bbox
    title = fig._suptitle.get_window_extent()
    assert box.x0 <= title.x0 and title.x1 <= box.x1  # the title is not clipped
    legend = fig.legends[0]
    ext = legend.get_window_extent()
    assert box.x0 <= ext.x0 and ext.x1 <= box.x1 and box.y0 <= ext.y0
    entries = [t.get_text() for t in legend.get_texts()]
    ax = fig.axes[0]
    if n_layers == 1:
        assert "95% CI (bar)" in entries and ax.containers  # drawn as an error bar
        control = [ln for ln in ax.lines if ln.get_linestyle() == ":" or ln.get_marker() == "x"]
        assert control and control[0].get_marker() == "x"  # the control task is a visible marker
    else:
        assert "95% CI" in entries and ax.collections  # a band
    assert "control task" in entries and "majority baseline" in entries


def test_format_table_and_comparison_plot(tmp_path):
    mean = probe_run(planted(), write=False)
    last = probe_run(planted(seed=1), write=False)
    last.strategy = "last"
    text = format_table(mean)
    assert "signal" in text and "noise" in text and "majority" in text and "selectivity" in text
    assert text.count("\n") < 20
    path = plot_reports([mean, last], tmp_path / "compare.png")
    assert path.stat().st_size > 20_000


def test_probe_defaults_are_defined_once_for_the_api_the_config_and_the_command():
    from dataclasses import asdict

    from probing.config import ProbeConfig
    from probing.probes.cli import _parser

    defaults = asdict(ProbeConfig())
    defaults.pop("baseline_model")  # a job option: the job extracts the random-weights model, then probes it
    params = inspect.signature(probe_run).parameters
    assert set(defaults) <= set(params) - {"path_or_reader"}
    for key, value in defaults.items():
        default = params[key].default
        assert value == (list(default) if isinstance(default, tuple) else default), key
    args = vars(_parser().parse_args(["run"]))
    for key in ("method", "split_field", "k_folds", "seed", "n_bootstrap", "search_rows", "max_rows", "mdl", "mdl_rows",
                "top_neurons", "mlp_hidden"):
        assert args[key] == defaults[key], key


def test_import_probing_probes_loads_no_heavy_library():
    code = "import probing.probes, sys; print([m for m in ('sklearn', 'torch', 'matplotlib') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- end to end on the built-in dataset --------------------------------------------------------------


@pytest.fixture(scope="module")
def builtin_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run of the embedded model over the first 300 built-in sentences (~15 s)."""
    cwd = tmp_path_factory.mktemp("builtin")
    proc = cli("data.limit=300", "progress=false", "output_dir=runs", "run_id=builtin300", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd / run_path(proc.stdout)


def test_probe_main_end_to_end_on_the_builtin_dataset(builtin_run, capsys):
    assert probe_main([str(builtin_run), "--labels", "tense,number", "--method", "both"]) == 0
    out = capsys.readouterr().out
    assert "sklearn" in out and "torch" in out and "blocks.5" in out and "majority" in out
    assert "probes: wrote" in out
    [report_file] = (builtin_run / "probes").glob("*/probes_sklearn+torch.json")
    report = load_report(report_file)
    # layer_index is the model's layer, as transformers counts hidden_states: embeddings 0, block i is i + 1
    assert [r.layer_index for r in report.results if r.label == "tense" and r.method == "torch"] == list(range(7))
    assert report.layers == ["embeddings", *(f"blocks.{i}" for i in range(6))]
    for method in ("sklearn", "torch"):
        # tense is marked by the verb form and an adverb: every layer finds it well above the majority
        assert all(report.result(layer, "tense", method).accuracy > 0.9 for layer in report.layers)
    # sklearn and torch agree on the real run
    diffs = [
        abs(r.accuracy - report.result(r.layer, r.label, "torch").accuracy)
        for r in report.results
        if r.method == "sklearn"
    ]
    assert max(diffs) <= 0.05 and float(np.mean(diffs)) <= 0.02


def test_probe_main_errors_and_help(builtin_run, capsys):
    assert probe_main([str(builtin_run), "--labels", "tence", "--no-write"]) == 2
    err = capsys.readouterr().err
    assert "probing: error:" in err and "Did you mean: 'tense'" in err
    assert probe_main(["/nonexistent/run"]) == 2
    assert probe_main(["--help"]) == 0
    assert "--method" in capsys.readouterr().out


def test_probe_run_agrees_on_sentiment_of_the_real_run(builtin_run):
    report: ProbeReport = probe_run(builtin_run, label_fields=["sentiment"], method="both", write=False)
    for layer in report.layers:
        sk, tr = report.result(layer, "sentiment", "sklearn"), report.result(layer, "sentiment", "torch")
        assert abs(sk.accuracy - tr.accuracy) <= 0.07
