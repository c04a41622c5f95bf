"""The self-contained HTML report: its probe table equals the report's JSON (parsed with the standard library's
html.parser), nothing is fetched from outside, it renders in headless Chromium (a screenshot that is not blank,
a DOM that holds the table), and it is written by ``probing report``, ``probing probe`` and after a labelled job."""

from __future__ import annotations

import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_probes import _zarr_run, planted
from test_viz import assert_not_blank

from probing.probes import probe_run
from probing.viz import write_html_report
from probing.viz.cli import report_main


class Page(HTMLParser):
    """Every tag's attributes, and the cells of ``table#probe-table`` (header, then rows of (text, data-value))."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.header: list[str] = []
        self.rows: list[list[tuple[str, str | None]]] = []
        self._in_table = False
        self._cell: list[str] | None = None
        self._value: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "table" and a.get("id") == "probe-table":
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag in ("td", "th"):
            self._cell, self._value = [], a.get("data-value")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        elif self._in_table and tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(("".join(self._cell).strip(), self._value))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A stored run with two labels, probed (MDL included): the run and its report.html."""
    root = tmp_path_factory.mktemp("html")
    path = _zarr_run(root, planted(n=300), "html", "mean")
    report = probe_run(path, label_fields=["label", "flag"], progress=False, n_bootstrap=100)
    return path, write_html_report(path, report)


def test_the_table_equals_the_json_and_nothing_is_external(probed):
    path, html_file = probed
    assert html_file.name == "report.html" and html_file.parent.parent == Path(path) / "probes"
    [json_file] = html_file.parent.glob("probes_*.json")
    stored = json.loads(json_file.read_text())["results"]
    page = Page()
    page.feed(html_file.read_text(encoding="utf-8"))
    header, *rows = page.rows
    names = [h for h, _ in header]
    assert names[:3] == ["label", "method", "layer"] and "selectivity" in names and "MDL compression" in names
    assert len(rows) == len(stored) == 4
    attrs = {"score": "score", "95% CI low": "ci_low", "95% CI high": "ci_high", "baseline": "baseline",
             "control": "control_score", "selectivity": "selectivity", "MDL compression": "compression",
             "control compression": "control_compression", "n test": "n_test"}
    for row, want in zip(rows, stored, strict=True):
        cells = dict(zip(names, row, strict=True))
        assert (cells["label"][0], cells["method"][0], cells["layer"][0]) == (want["label"], want["method"],
                                                                              want["layer"])
        for col, key in attrs.items():
            text, value = cells[col]
            assert value is not None and float(value) == pytest.approx(want[key], abs=1e-6), (col, value, want[key])
            assert float(text) == pytest.approx(want[key], abs=0.006)  # shown rounded
    best = [r for r in rows if r[2][0] == "signal"]
    assert all(float(dict(zip(names, r, strict=True))["score"][1]) > 0.9 for r in best)  # the planted signal
    # self-contained: no script, no link, every image a data: URL; three figures (curves, PCA, CKA)
    tags = page.tags
    assert not [t for t, _ in tags if t in ("script", "link", "iframe")]
    assert all(a.get("href") in (None, "") or str(a["href"]).startswith("#") for _, a in tags)
    images = [a for t, a in tags if t == "img"]
    assert len(images) == 3 and all(str(a["src"]).startswith("data:image/png;base64,") for a in images)
    assert "http://" not in html_file.read_text() and "https://" not in html_file.read_text()


def test_it_renders_in_headless_chromium(probed, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium (Debian: apt-get install -y chromium; .ci/run installs it)")
    _, html_file = probed
    url = html_file.resolve().as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]
    shot = tmp_path / "shot.png"
    proc = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,1600", url], capture_output=True,
                          text=True, timeout=120)
    assert shot.exists(), proc.stderr[-2000:]
    assert_not_blank(shot.read_bytes())
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    assert pixels.shape[:2] == (1600, 1200)
    assert (pixels.mean(axis=2) < 0.5).mean() > 0.01  # text and figures drawn, not a white page
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    page = Page()
    page.feed(dom)
    assert len(page.rows) == 5 and page.rows[1][0][0] == "label"  # header + 4 rows, as Chromium parsed them
    assert "probing report: html" in dom


def test_report_command_probe_command_and_the_job_write_it(probed, tmp_path, capsys):
    path, _ = probed
    out = tmp_path / "r.html"
    assert report_main([path, "--out", str(out), "--label", "flag"]) == 0
    assert "flag" in out.read_text() and f"report: {out}" in capsys.readouterr().out
    assert report_main([str(tmp_path / "nothing")]) == 2
    assert "No probing run at" in capsys.readouterr().err
    # a run with no probe report: metadata and figures, and a line that says how to probe it
    bare = _zarr_run(tmp_path, planted(n=120), "bare", "mean")
    page = write_html_report(bare).read_text()
    assert "No probe report" in page and "data:image/png;base64," in page
    # `probing probe` and the end of a labelled job write report.html beside CSV/JSON/PNG
    from probing.cli import _probe_after
    from probing.probes.cli import probe_main

    assert probe_main([bare, "--labels", "flag", "--n-bootstrap", "20", "--no-mdl"]) == 0
    assert len(list((Path(bare) / "probes").glob("*/report.html"))) == 1
    report = _probe_after(bare, {"label_fields": ["label"], "n_bootstrap": 20, "mdl": False, "progress": False},
                          explicit=True)
    html_file = Path(report.files["html"])
    assert html_file.exists() and html_file.parent == Path(report.files["json"]).parent
    assert len(list((Path(bare) / "probes").glob("*/report.html"))) == 2
    assert report.result("signal", "label").score > 0.9
