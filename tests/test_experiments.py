"""The experiment registry (`probing.experiments`): one JSON line per run and per probe report, appended safely
by concurrent processes, torn lines skipped, and `probing runs` listing and filtering it."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import subprocess

import pytest

from probing import ActivationExtractor, DatasetRunner, MeanStrategy, ModelBackend, ZarrStorage, probe_run
from probing.experiments import append_entry, git_commit, read_entries, registry_path
from probing.runs import filter_rows, format_rows, registry_rows, runs_main

WRITERS, LINES = 6, 60


def _writer(root: str, w: int) -> None:
    pad = "x" * (200 + 37 * w)  # lines of different lengths, some larger than a pipe buffer together
    for i in range(LINES):
        append_entry(root, {"kind": "test", "writer": w, "i": i, "pad": pad})


def test_concurrent_appends_lose_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    lines = (tmp_path / "registry.jsonl").read_text().splitlines()
    assert len(lines) == WRITERS * LINES
    got = sorted((e["writer"], e["i"]) for e in map(json.loads, lines))  # every line parses: none interleaved
    assert got == sorted((w, i) for w in range(WRITERS) for i in range(LINES))


def test_a_torn_last_line_is_skipped_and_the_next_append_starts_afresh(tmp_path, caplog):
    append_entry(tmp_path, {"kind": "test", "i": 0})
    with open(registry_path(tmp_path), "ab") as f:
        f.write(b'{"kind": "test", "i": 1, "pa')  # a writer killed mid-line
    with caplog.at_level(logging.WARNING, logger="probing.experiments"):
        assert [e["i"] for e in read_entries(tmp_path)] == [0]
    assert "line 2 is not a whole JSON entry" in caplog.text
    append_entry(tmp_path, {"kind": "test", "i": 2})
    assert [e["i"] for e in read_entries(tmp_path)] == [0, 2]


def test_git_commit_of_the_working_directory(tmp_path):
    assert git_commit(str(tmp_path)) is None  # not a checkout: quietly none
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert git_commit(str(tmp_path)) == head.strip()


@pytest.fixture(scope="module")
def probed(tiny_models, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Two runs in one folder (bert probed for `label`, gpt2 not probed) and one older run with no registry."""
    root = tmp_path_factory.mktemp("registry")
    ds = [{"text": f"w{i} and {'more ' * (i % 4)}", "label": i % 2} for i in range(24)]
    runs = {}
    for family in ("bert", "gpt2"):
        model = ModelBackend().load_model(str(tiny_models[family]))
        ex = ActivationExtractor(model, layers=[0, -1], strategy=MeanStrategy())
        runs[family] = DatasetRunner(ds, 8, ex, ZarrStorage(str(root)), run_id=family, announce=False,
                                     progress=False).run()
    old = (root / "registry.jsonl").read_text()
    (root / "registry.jsonl").write_text(old.splitlines()[0] + "\n")  # as if gpt2 ran before the registry existed
    report = probe_run(runs["bert"].path, label_fields=["label"], split_field=None, k_folds=2, n_bootstrap=50)
    return root, runs, report


def test_runs_and_reports_are_recorded(probed):
    import torch
    import transformers

    root, runs, report = probed
    entries = read_entries(root)
    assert [(e["kind"], e["run_id"]) for e in entries] == [("run", "bert"), ("probe", "bert")]
    run, probe = entries
    assert run["path"] == runs["bert"].path and run["layers"] == ["blocks.0", "blocks.3"]
    assert run["model"]["weights_fingerprint"] and run["dataset"]["fingerprint"] and run["identity"]
    assert run["strategy"] == {"name": "mean"} and run["completed"] is True
    assert run["versions"]["torch"] == torch.__version__ and run["versions"]["transformers"] == transformers.__version__
    assert "git_commit" in run and run["stats"]["examples"] == 24
    # the figures are the report's own: the best layer per label, its score and CI, its selectivity
    best = max(report.results, key=lambda r: r.score)
    (fig,) = probe["figures"]
    assert fig["label"] == "label" and fig["best_layer"] == best.layer
    assert fig["score"] == pytest.approx(best.score) and fig["ci_low"] == pytest.approx(best.ci_low)
    assert fig["ci_high"] == pytest.approx(best.ci_high) and fig["selectivity"] == pytest.approx(best.selectivity)
    assert probe["report"]["files"] == report.files


def test_runs_lists_scanned_and_registered_runs_and_filters(probed, capsys):
    root, runs, _ = probed
    rows = registry_rows(str(root))
    assert sorted(r["run"] for r in rows) == ["bert", "gpt2"]  # gpt2 is not in the registry: found by the scan
    assert [r["run"] for r in filter_rows(rows, model="GPT2")] == ["gpt2"]
    assert [r["run"] for r in filter_rows(rows, label="label")] == ["bert"]
    assert filter_rows(rows, label="tense") == []
    assert [r["run"] for r in filter_rows(rows, since="2000-01-01")] == ["bert"]  # gpt2 has no registry time
    assert filter_rows(rows, since="2999-01-01") == []
    assert runs_main([str(root), "--label", "label"]) == 0
    out = capsys.readouterr().out
    table = format_rows(filter_rows(rows, label="label"))
    assert table in out and "label " in out and "@blocks" in out and "gpt2" not in table
    assert runs_main([str(root), "--since", "yesterday"]) == 2
    assert "--since 'yesterday'" in capsys.readouterr().out
