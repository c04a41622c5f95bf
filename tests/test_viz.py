"""Pictures of stored runs, each against an independent computation: linear CKA against its closed-form
properties and a direct HSIC formula with centering matrices, PCA against scikit-learn, the two-run guard,
PNGs that are produced and not blank, and the ``plot`` command."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from test_probes import MemoryReader, _zarr_run, planted

from probing.errors import ConfigError, ProbingError
from probing.probes import probe_run
from probing.viz import cka_matrix, linear_cka, pca_2d, plot_cka, plot_curves, plot_projection, project_layer
from probing.viz.cli import plot_main


def hsic_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019), eq. 3 with linear kernels: HSIC(K, L) = tr(K H L H) / (n-1)^2, H = I - 11^T/n."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, lk = x @ x.T, y @ y.T

    def hsic(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.trace(a @ h @ b @ h)) / (n - 1) ** 2

    return hsic(k, lk) / np.sqrt(hsic(k, k) * hsic(lk, lk))


def png_pixels(data: bytes) -> np.ndarray:
    from matplotlib.image import imread

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(io.BytesIO(data), format="png")


def assert_not_blank(data: bytes) -> None:
    pixels = png_pixels(data)[..., :3]
    assert pixels.std() > 0.05, f"blank PNG (pixel std {pixels.std():.4f})"
    assert (pixels.reshape(-1, 3).std(axis=1) > 0.05).mean() > 0.001  # some coloured (non-gray) pixels


# --- CKA ---------------------------------------------------------------------------------------------
def test_linear_cka_matches_the_hsic_formula_and_its_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 10))
    y = x @ rng.normal(size=(10, 7)) + 0.5 * rng.normal(size=(120, 7))
    assert linear_cka(x, y) == pytest.approx(hsic_cka(x, y), rel=1e-10)
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))  # orthogonal transform and isotropic scaling: unchanged
    assert linear_cka(x, 3.7 * x @ q) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x @ q * 0.01, y) == pytest.approx(linear_cka(x, y), rel=1e-10)
    assert linear_cka(x + 5.0, y - 2.0) == pytest.approx(linear_cka(x, y), rel=1e-10)  # centred inside
    wide = rng.normal(size=(120, 300))  # more dimensions than rows: the Gram form still agrees
    assert linear_cka(wide, y) == pytest.approx(hsic_cka(wide, y), rel=1e-10)
    # a non-isotropic scaling changes it: the invariance test above can fail
    assert abs(linear_cka(x * np.linspace(0.1, 10, 10), y) - linear_cka(x, y)) > 0.01


def test_linear_cka_of_independent_features_is_small():
    rng = np.random.default_rng(1)
    values = [linear_cka(rng.normal(size=(2000, 8)), rng.normal(size=(2000, 8))) for _ in range(5)]
    assert max(values) < 0.02  # E[CKA] ~ d/n for independent Gaussians: 0.004 here
    with pytest.raises(ConfigError, match="same rows"):
        linear_cka(np.zeros((5, 2)), np.zeros((6, 2)))


def test_cka_matrix_of_a_stored_run_and_between_runs(tmp_path):
    a = planted(n=300)
    path = _zarr_run(tmp_path, a, "a", "mean")
    res = cka_matrix(path)
    assert res.layers_a == res.layers_b == ["noise", "signal"]
    ref = np.array([[hsic_cka(a.activations(i).astype(np.float64), a.activations(j).astype(np.float64))
                     for j in res.layers_b] for i in res.layers_a])
    np.testing.assert_allclose(res.matrix, ref, rtol=1e-5)
    assert res.matrix[0, 1] < 0.1 and res.n_rows == 300
    sample = cka_matrix(path, max_rows=100, seed=3)  # a seeded sample: the HSIC of those rows
    rows = np.sort(np.random.default_rng(3).choice(300, 100, replace=False))
    sig = a.activations("signal")[rows].astype(np.float64)
    assert sample.matrix[1, 1] == pytest.approx(1.0) and sample.n_rows == 100
    assert sample.matrix[0, 1] == pytest.approx(hsic_cka(a.activations("noise")[rows].astype(np.float64), sig),
                                                 rel=1e-5)
    # a second "model": the same examples, an orthogonally rotated signal layer
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(16, 16)))
    b = MemoryReader({"rot": (a.activations("signal") @ q).astype(np.float32)}, {"text": a.example_metadata("text")})
    other = _zarr_run(tmp_path, b, "b", "mean")
    between = cka_matrix(path, other)
    assert between.layers_b == ["rot"] and between.matrix[1, 0] == pytest.approx(1.0, abs=1e-5)
    # other examples are refused before any vector is read: fewer rows, or other texts
    fewer = _zarr_run(tmp_path, planted(n=200), "fewer", "mean")
    with pytest.raises(ConfigError, match="a has 300 rows and fewer has 200"):
        cka_matrix(path, fewer)
    texts = [f"other {i}" for i in range(300)]
    shuffled = _zarr_run(tmp_path, MemoryReader({"x": a.activations("signal")}, {"text": texts}), "other", "mean")
    with pytest.raises(ConfigError, match="row 0 has text 'sentence 0' in a and 'other 0' in other"):
        cka_matrix(path, shuffled)


# --- PCA ---------------------------------------------------------------------------------------------
def test_pca_matches_scikit_learn_up_to_sign(tmp_path):
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12))
    scores, ratio = pca_2d(x)
    ref = PCA(n_components=2, svd_solver="full").fit(x)
    ref_scores = ref.transform(x)
    signs = np.sign((scores * ref_scores).sum(axis=0))
    np.testing.assert_allclose(scores, ref_scores * signs, atol=1e-8)
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, rtol=1e-10)
    a = planted(n=500)
    path = _zarr_run(tmp_path, a, "p", "mean")
    proj = project_layer(path, "signal", "label", max_rows=150, seed=4)
    rows = np.sort(np.random.default_rng(4).choice(500, 150, replace=False))
    np.testing.assert_array_equal(proj.positions, rows)  # a bounded seeded sample, never the whole layer
    sub = a.activations("signal")[rows].astype(np.float64)
    ref_scores = PCA(n_components=2).fit_transform(sub)
    signs = np.sign((proj.coords * ref_scores).sum(axis=0))
    np.testing.assert_allclose(proj.coords, ref_scores * signs, atol=1e-4)
    assert proj.values == list(a.example_metadata("label")[rows])
    with pytest.raises(ConfigError, match="Label field 'lable'"):
        project_layer(path, "signal", "lable")


# --- figures and the command ---------------------------------------------------------------------------
def test_plots_are_pngs_with_content_and_the_plot_command(tmp_path, capsys):
    path = _zarr_run(tmp_path, planted(n=240), "r", "mean")
    buf = io.BytesIO()
    plot_projection(path, buf, label="label")
    assert_not_blank(buf.getvalue())
    buf = io.BytesIO()
    plot_cka(path, buf)
    assert_not_blank(buf.getvalue())
    report_a = probe_run(path, label_fields=["label"], write=False, progress=False, n_bootstrap=50, mdl=False)
    other = _zarr_run(tmp_path, planted(n=240, seed=1, strength=1.0), "r2", "mean")
    probe_run(other, label_fields=["label", "flag"], progress=False, n_bootstrap=50, mdl=False)
    out = plot_curves([report_a, other], tmp_path / "curves.png", labels=["label"], names=["strong", "weak"])
    assert_not_blank(out.read_bytes())
    # the command: every kind, two runs overlaid; its errors are one line, exit 2
    for kind, runs in (("pca", [path]), ("cka", [path, other]), ("curves", [other, other])):
        target = tmp_path / f"{kind}.png"
        assert plot_main([*runs, "--kind", kind, "--label", "label", "--out", str(target)]) == 0, capsys.readouterr()
        assert_not_blank(target.read_bytes())
    assert plot_main([other, "--kind", "pca", "--layers", "signal"]) == 0
    assert (Path(other) / "plots" / "pca.png").exists()
    assert plot_main([path, "--kind", "curves"]) == 2  # probed without writing: no stored report
    assert "No probe report" in capsys.readouterr().err
    assert plot_main([path, path, "--kind", "pca"]) == 2
    assert plot_main([path, "--kind", "cka", "--layers", "nosuch"]) == 2
    with pytest.raises(ProbingError, match="No probe report"):
        plot_curves([path], tmp_path / "x.png")


@pytest.mark.slow
def test_umap_projection_keeps_planted_classes_apart(tmp_path):
    pytest.importorskip("umap", reason="UMAP is the optional extra .[viz] (umap-learn)")
    a = planted(n=300, strength=4.0)
    path = _zarr_run(tmp_path, a, "u", "mean")
    proj = project_layer(path, "signal", "label", method="umap")
    labels = np.asarray(proj.values)
    d = ((proj.coords[:, None] - proj.coords[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (labels[d.argmin(axis=1)] == labels).mean() > 0.9  # each point's 2-D neighbour shares its class
    buf = io.BytesIO()
    plot_projection(path, buf, layers=["signal"], label="label", method="umap")
    assert_not_blank(buf.getvalue())
