"""What a reviewer asks of probe results, each against an independent computation: MDL online codelengths
on planted data, the expected layer in closed form, ridge regression against scikit-learn, rows without
a value, top neurons on planted neurons, MLP probes on a task no linear probe can do, the random-weights
model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_probes import MemoryReader, planted

from probing.probes import probe_run
from probing.probes.layer_summary import expected_layer
from probing.probes.mdl import VOITA_FRACTIONS, block_boundaries, online_codelength


def layered(n: int, strengths: list[float], seed: int = 0, dim: int = 8, n_classes: int = 2) -> MemoryReader:
    """Layer ``blocks.i`` carries the class in dimension 0 with signal strength ``strengths[i]``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    layers = {}
    for i, s in enumerate(strengths):
        x = rng.normal(size=(n, dim)).astype(np.float32)
        x[:, 0] += s * (y - (n_classes - 1) / 2)
        layers[f"blocks.{i}"] = x
    fields = {"label": [f"c{v}" for v in y], "split": np.where(np.arange(n) % 4 == 3, "test", "train"),
              "text": [f"type {i % (n // 4)}" for i in range(n)]}  # 4 rows per type: the control task's types
    reader = MemoryReader(layers, fields)
    reader.metadata["num_blocks"] = len(strengths)
    return reader


# --- MDL -----------------------------------------------------------------------------------------------
def test_block_boundaries_are_voita_and_titovs_fractions():
    assert block_boundaries(10_000) == [10, 20, 40, 80, 160, 320, 625, 1250, 2500, 5000, 10_000]
    assert VOITA_FRACTIONS[0] == 0.001 and VOITA_FRACTIONS[-2:] == (0.5, 1.0)
    assert block_boundaries(50) == [1, 2, 3, 6, 12, 25, 50]  # tiny sets: at least one row, no empty block


def test_codelength_falls_as_the_planted_signal_grows_and_noise_compresses_about_one():
    report = probe_run(layered(4000, [0.0, 0.5, 1.0, 2.0, 4.0]), label_fields=["label"], control_field="none",
                       write=False, progress=False)
    rows = sorted((r for r in report.results), key=lambda r: r.layer)
    bits = [r.codelength_bits for r in rows]
    assert all(a > b for a, b in zip(bits, bits[1:], strict=False)), bits  # stronger signal, fewer bits
    uniform = rows[0].uniform_bits
    assert uniform == pytest.approx(3000 * math.log2(2))  # the training rows, one bit each: closed form
    assert 0.93 < rows[0].compression < 1.02  # pure noise: about the uniform code
    assert rows[-1].compression > 3  # signal of strength 4: most labels are almost free
    # the control task (random labels per type) compresses far less than the task
    with_control = probe_run(layered(2000, [0.0, 4.0]), label_fields=["label"], write=False, progress=False)
    sig = with_control.result("blocks.1", "label")
    assert sig.compression > 2 and sig.control_compression < 1.2


def test_online_codelength_matches_sklearn_fits_block_by_block():
    """The same code, computed independently: a scikit-learn logistic regression per block, with the same
    objective (C) and the same row order and standardization."""
    from sklearn.linear_model import LogisticRegression

    reader = layered(800, [1.5], dim=4, n_classes=3)
    x = reader.activations("blocks.0")
    y = np.unique(reader.example_metadata("label"), return_inverse=True)[1]
    rows = np.arange(800)
    fractions = (0.02, 0.05, 0.1, 0.25, 0.5, 1.0)  # first block: 16 rows, every class seen (asserted below)
    ours = online_codelength([x], y, 3, rows, [1.0], seed=5, max_iter=200, fractions=fractions)
    order = np.random.default_rng([5, 0x3D1]).permutation(rows)
    z = (x[order] - x[order].mean(0)) / x[order].std(0)
    ends = block_boundaries(800, fractions)
    bits = ends[0] * math.log2(3)
    for start, stop in zip(ends[:-1], ends[1:], strict=True):
        seen = y[order[:start]]
        assert len(np.unique(seen)) == 3
        model = LogisticRegression(C=1.0, tol=1e-8, max_iter=5000).fit(z[:start], seen)
        logp = model.predict_log_proba(z[start:stop])
        bits += float(-logp[np.arange(stop - start), y[order[start:stop]]].sum() / math.log(2))
    assert ours.online_bits[0] == pytest.approx(bits, rel=0.03)


# --- where it is found -------------------------------------------------------------------------------
def test_expected_layer_is_the_centre_of_gravity_of_the_gains():
    assert expected_layer([0, 1, 2, 3], [0.5, 0.7, 0.8, 0.8]) == pytest.approx((1 * 0.2 + 2 * 0.1) / 0.3)
    assert expected_layer([3, 0, 1], [0.9, 0.5, 0.5]) == pytest.approx(3.0)  # model order, not list order
    assert math.isnan(expected_layer([0, 1, 2], [0.8, 0.7, 0.6]))  # no gain: no centre of gravity
    # a score that falls again counts as the best so far (Tenney's cumulative scores never fall)
    assert expected_layer([0, 1, 2, 3], [0.5, 0.9, 0.7, 0.95]) == pytest.approx((1 * 0.4 + 3 * 0.05) / 0.45)
    assert math.isnan(expected_layer([1], [0.9]))


def test_probe_run_reports_the_expected_and_best_layer_of_a_planted_curve():
    report = probe_run(layered(1200, [0.0, 0.0, 3.0, 3.0]), label_fields=["label"], control_field="none",
                       write=False, progress=False, mdl=False)
    summary = report.layer_summary("label")
    assert summary["best_layer"] in ("blocks.2", "blocks.3")
    assert 2.7 < summary["expected_layer"] < 3.3  # the gain is at blocks.2 = hidden_states[3]
    best = report.result(summary["best_layer"], "label")
    assert summary["best_ci_low"] == best.ci_low and summary["best_ci_high"] == best.ci_high
    assert summary["gain"] == pytest.approx(best.score - report.result("blocks.0", "label").score)
    from probing.probes.report import format_table

    text = format_table(report)
    assert "expected layer*" in text and "best layer" in text


# --- regression --------------------------------------------------------------------------------------
def regression_reader(n: int = 1000, seed: int = 0, noise: float = 1.0) -> tuple[MemoryReader, float]:
    """``target = x @ w + noise`` in layer ``signal``: R^2 = var(xw) / (var(xw) + noise^2) in closed form."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=12)
    x = rng.normal(size=(n, 12))
    target = x @ w + noise * rng.normal(size=n)
    expected_r2 = float(w @ w / (w @ w + noise**2))
    reader = MemoryReader(
        {"noise": rng.normal(size=(n, 12)).astype(np.float32), "signal": x.astype(np.float32)},
        {"target": target, "split": np.where(np.arange(n) % 4 == 3, "test", "train"),
         "text": [f"t{i}" for i in range(n)]},
    )
    return reader, expected_r2


def test_float_labels_get_ridge_regression_equal_to_sklearn_ridge():
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score

    reader, expected_r2 = regression_reader()
    report = probe_run(reader, label_fields=["target"], write=False, progress=False)
    assert report.methods == ["ridge"]
    sig, noise = report.result("signal", "target", "ridge"), report.result("noise", "target", "ridge")
    assert sig.metric == "r2" and math.isnan(sig.accuracy)
    assert sig.score == pytest.approx(expected_r2, abs=0.03) and abs(noise.score) < 0.05
    assert sig.ci_low < sig.score < sig.ci_high and sig.ci_high - sig.ci_low < 0.1
    # the same probe in scikit-learn: standardize on the training rows, Ridge with the chosen alpha
    split = reader.example_metadata("split")
    train, test = split == "train", split == "test"
    x, y = reader.activations("signal"), np.asarray(reader.example_metadata("target"))
    mean, std = x[train].mean(0), x[train].std(0)
    ref = Ridge(alpha=1 / sig.C).fit((x[train] - mean) / std, y[train]).predict((x[test] - mean) / std)
    assert sig.score == pytest.approx(r2_score(y[test], ref), abs=1e-6)
    assert sig.baseline == pytest.approx(r2_score(y[test], np.full(test.sum(), y[train].mean())), abs=1e-9)
    assert sig.baseline <= 0
    assert sig.control_score < 0.2 < sig.selectivity  # per-text random values: nothing to learn


def test_bootstrap_r2_ci_matches_a_plain_resampling_bootstrap():
    from sklearn.metrics import r2_score

    from probing.probes.metrics import bootstrap_r2_ci

    rng = np.random.default_rng(1)
    y = rng.normal(size=300)
    pred = y + rng.normal(size=300)
    low, high = bootstrap_r2_ci(y, pred, n_resamples=4000, seed=0)
    draws = rng.integers(0, 300, size=(4000, 300))
    plain = np.quantile([r2_score(y[d], pred[d]) for d in draws], [0.025, 0.975])
    assert low == pytest.approx(plain[0], abs=0.03) and high == pytest.approx(plain[1], abs=0.03)


# --- rows without a value ----------------------------------------------------------------------------
def test_rows_without_a_value_are_left_out_of_that_label_only():
    full = planted(n=400)
    labels = list(full.example_metadata("label"))
    holes = [None if i % 5 == 0 else v for i, v in enumerate(labels)]
    holed = MemoryReader(full._layers, {**full._fields, "partial": np.asarray(holes, dtype=object)})
    report = probe_run(holed, label_fields=["label", "partial"], write=False, progress=False, mdl=False)
    keep = np.asarray([v is not None for v in holes])
    reduced = MemoryReader({k: v[keep] for k, v in full._layers.items()},
                           {k: np.asarray(v)[keep] for k, v in full._fields.items()})
    ref = probe_run(reduced, label_fields=["label"], write=False, progress=False, mdl=False)
    for layer in ("noise", "signal"):
        ours, theirs = report.result(layer, "partial"), ref.result(layer, "label")
        assert ours.n_test == theirs.n_test == int(((np.arange(400) % 4 == 3) & keep).sum())
        assert ours.score == pytest.approx(theirs.score) and ours.baseline == pytest.approx(theirs.baseline)
    assert report.result("signal", "label").n_test == 100  # the complete label keeps every row
    assert report.missing == {"partial": 80}


# --- neurons -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["sklearn", "torch"])
def test_top_neurons_find_the_planted_ones(method):
    rng = np.random.default_rng(0)
    n = 1500
    y = rng.integers(0, 3, n)
    x = rng.normal(size=(n, 20)).astype(np.float32)
    x[:, 3] += 2.0 * (y == 1)
    x[:, 7] += 2.0 * (y == 2)
    reader = MemoryReader({"blocks.0": x}, {"label": [str(v) for v in y]})
    report = probe_run(reader, label_fields=["label"], method=method, split_field=None, write=False, progress=False,
                       mdl=False, top_neurons=4)
    top = report.neurons["label"][method]["blocks.0"]
    assert len(top) == 4 and {int(top[0][0]), int(top[1][0])} == {3, 7}
    assert top[0][1] >= top[1][1] >= top[2][1] and top[0][1] + top[1][1] > 0.5
    from probing.probes.report import format_table

    text = format_table(report)
    assert "top neurons" in text and ("3, 7" in text or "7, 3" in text)


# --- MLP probes --------------------------------------------------------------------------------------
def test_mlp_probe_reads_a_label_no_linear_probe_can_with_its_control_task():
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    n = 800
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] * x[:, 1] > 0).astype(int)  # XOR of two signs: not linearly separable
    split = np.where(np.arange(n) % 4 == 3, "test", "train")
    reader = MemoryReader({"blocks.0": x}, {"label": [str(v) for v in y], "split": split,
                                            "text": [f"t{i % 100}" for i in range(n)]})
    report = probe_run(reader, label_fields=["label"], method="sklearn,mlp", write=False, progress=False,
                       mdl=False, mlp_hidden=32)
    linear, mlp = report.result("blocks.0", "label", "sklearn"), report.result("blocks.0", "label", "mlp")
    reference = MLPClassifier(hidden_layer_sizes=(32,), solver="lbfgs", max_iter=2000, random_state=0)
    ref_acc = reference.fit(x[split == "train"], y[split == "train"]).score(x[split == "test"], y[split == "test"])
    assert linear.accuracy < 0.65 and ref_acc > 0.9
    assert mlp.accuracy > 0.9 and abs(mlp.accuracy - ref_acc) < 0.06
    assert math.isfinite(mlp.control_accuracy) and mlp.selectivity == pytest.approx(mlp.accuracy - mlp.control_accuracy)
    assert math.isnan(mlp.compression)  # MDL is computed for linear probes only


# --- report files ------------------------------------------------------------------------------------
def test_reports_of_older_versions_load_with_their_column_names():
    from probing.probes.results import ProbeReport

    report = probe_run(planted(n=200), label_fields=["label"], write=False, progress=False, mdl=False)
    data = report.to_dict()
    for row in data["results"]:  # as written before `metric`, `score`, `baseline` and MDL existed
        row["accuracy"], row["majority"], row["control_accuracy"] = row.pop("score"), row.pop("baseline"), row.pop(
            "control_score")
        for key in ("metric", "codelength_bits", "uniform_bits", "compression", "control_codelength_bits",
                    "control_compression"):
            row.pop(key)
    old = ProbeReport.from_dict(data)
    assert old.results[0].accuracy == report.results[0].accuracy and old.results[0].metric == "accuracy"


# --- the random-weights model ------------------------------------------------------------------------
def test_random_weights_keep_the_architecture_and_change_the_outputs(tiny_models):
    import torch

    from probing import ModelBackend
    from probing.baseline_model import random_weights

    trained = ModelBackend().load_model(str(tiny_models["bert"]))
    one, two = random_weights(trained), random_weights(trained)  # the tiny model itself is seed 0's draw
    other = random_weights(trained, seed=1)
    assert type(one.model) is type(trained.model) and one.model.config.to_dict() == trained.model.config.to_dict()
    assert one.tokenizer is trained.tokenizer and one.extra["weights"] == "random (seed 1234)"
    batch = trained.tokenizer(["a small test"], return_tensors="pt")
    with torch.no_grad():
        h_trained, h_one, h_two, h_other = (m.model(**batch).last_hidden_state for m in (trained, one, two, other))
    assert torch.equal(h_one, h_two)  # the same seed gives the same weights
    assert (h_one - h_trained).abs().max() > 1e-2 and (h_one - h_other).abs().max() > 1e-2


def test_baseline_model_random_extracts_and_probes_both_and_draws_them_together(tmp_path, tiny_models):
    from cli_helpers import cli, run_path

    from probing import open_run

    proc = cli(f"model.name_or_path={tiny_models['bert']}", "data.limit=240", "progress=false", "output_dir=out",
               "run_id=trained", "probe.baseline_model=random", "probe.n_bootstrap=100", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert run_path(proc.stdout).name == "trained"
    trained, random = open_run(tmp_path / "out" / "trained"), open_run(tmp_path / "out" / "trained-random")
    assert trained.metadata["model"]["weights"] == "pretrained"
    assert random.metadata["model"]["weights"] == "random (seed 1234)"
    assert trained.layers == random.layers and trained.n_examples == random.n_examples == 240
    assert not np.allclose(trained.activations(-1), random.activations(-1))
    assert proc.stdout.count("expected layer*") == 2  # both tables printed
    pictures = list((tmp_path / "out" / "trained" / "probes").glob("*/probes_vs_random_weights.png"))
    assert len(pictures) == 1 and pictures[0].stat().st_size > 20_000


def test_real_valued_fields_are_probed_by_default_as_regression_targets():
    reader, _ = regression_reader(n=400)
    reader._fields["kind"] = np.asarray(["a", "b"] * 200)
    report = probe_run(reader, write=False, progress=False, mdl=False)
    assert report.label_fields == ["target", "kind"] and report.methods == ["sklearn", "ridge"]
    assert report.result("signal", "target", "ridge").metric == "r2"


def test_a_written_report_loads_back_and_prints_with_nan_figures(tmp_path):
    from probing.probes import load_report
    from probing.probes.report import format_table, write_report

    report = probe_run(planted(n=200), write=False, progress=False, n_bootstrap=0)  # no CI, no placed layers
    assert math.isnan(report.results[0].ci_low)
    write_report(report, tmp_path, plot=False)
    again = load_report(tmp_path)
    assert again.results[0].layer_index is None and math.isnan(again.summary[0]["expected_layer"])
    assert format_table(again) == format_table(report)
