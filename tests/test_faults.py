"""The fault and bad-input matrix (docs/reliability.md): each case asserts its exact outcome.

Kill points, concurrent writers, a full disk, damaged chunks, NaN/inf models and bad inputs. Runs go
through the CLI (as users start them) on a tiny GPT-2 and are compared with an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import cli

from probing import ActivationExtractor, DatasetRunner, MeanStrategy, ModelBackend, ZarrStorage, open_run
from probing.errors import DamagedRunError, DatasetError, NonFiniteError, ProbingError
from probing.storage.hdf5_store import HDF5Storage
from probing.storage.lease import lease_path

N = 61
ARGS = ["data.batch_size=4", "storage.chunk_rows=6", f"data.limit={N}", "progress=false", "output_dir=out",
        "run_id=r", "probe_after_extract=false"]


@pytest.fixture(scope="module")
def gpt2(tiny_models):  # type: ignore[no-untyped-def]
    return f"model.name_or_path={tiny_models['gpt2']}"


@pytest.fixture(scope="module")
def reference(gpt2, tmp_path_factory):  # type: ignore[no-untyped-def]
    cwd = tmp_path_factory.mktemp("reference")
    proc = cli(gpt2, *ARGS, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return open_run(cwd / "out" / "r")


def assert_same(path: Path, ref) -> None:  # type: ignore[no-untyped-def]
    with open_run(path) as got:
        assert got.completed and got.n_examples == ref.n_examples
        for layer in ref.layers:
            np.testing.assert_allclose(got.activations(layer), ref.activations(layer), atol=1e-5)
        np.testing.assert_array_equal(got.example_metadata("token_counts"), ref.example_metadata("token_counts"))
        assert got.metadata["stats"]["total"]["examples"] == ref.n_examples  # stats count what is stored


# -- kill points ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fault",
    [
        "after_create:1",  # the first array's metadata is written, no chunk of it
        "after_create:4",  # some arrays exist, others not
        "before_record:2",  # rows durable, not yet recorded as done
    ],
)
def test_a_kill_at_each_write_point_resumes_to_the_same_arrays(tmp_path, gpt2, reference, fault):
    killed = cli(gpt2, *ARGS, cwd=tmp_path, env={"PROBING_FAULT": fault})
    assert killed.returncode == -9
    again = cli(gpt2, *ARGS, "resume=true", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same(tmp_path / "out" / "r", reference)


def test_a_kill_while_seams_are_stitched_resumes(tmp_path, gpt2):
    """Two ranks of a token-level run share the write unit at their row boundary (each writes its rows
    aside, as a seam); rank 0 is killed while finalize copies them into place, and a one-process resume
    finishes the run equal to an uninterrupted one."""
    tokens = [*ARGS, "+strategy=tokens", "layers=[0,-1]"]
    ref = cli(gpt2, *tokens, "output_dir=ref", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr[-3000:]
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
    killed = cli(gpt2, *tokens, *ddp, cwd=tmp_path, env={"PROBING_FAULT": "stitch", "PROBING_FAULT_RANK": "0"})
    assert killed.returncode != 0
    with pytest.raises(ProbingError, match="not completed"):
        open_run(tmp_path / "out" / "r")
    again = cli(gpt2, *tokens, "resume=true", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    with open_run(tmp_path / "ref" / "r") as want, open_run(tmp_path / "out" / "r") as got:
        for layer in want.layers:
            np.testing.assert_allclose(got.activations(layer), want.activations(layer), atol=1e-5)
        np.testing.assert_array_equal(got.row_metadata("token_id"), want.row_metadata("token_id"))


# -- one writer per run -----------------------------------------------------------------------------
def _start_stopped(gpt2: str, cwd: Path, *extra: str) -> subprocess.Popen[str]:
    """A job that stops itself (SIGSTOP) just before its first batch, holding the run's lease."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROBING_", "SLURM_"))}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PROBING_FAULT="before_first_batch:1:SIGSTOP")
    proc = subprocess.Popen([sys.executable, "-m", "probing", gpt2, *ARGS, *extra], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        state = Path(f"/proc/{proc.pid}/stat").read_text().split()[2]
        if state == "T":
            return proc
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("the first job never reached its first batch")


def test_a_second_writer_is_refused_at_once_naming_the_holder(tmp_path, gpt2):
    first = _start_stopped(gpt2, tmp_path)
    try:
        for extra in ([], ["resume=true"]):
            t0 = time.perf_counter()
            second = cli(gpt2, *ARGS, *extra, cwd=tmp_path)
            assert second.returncode == 2, second.stderr[-2000:]
            line = [ln for ln in second.stderr.splitlines() if ln.strip()]
            assert len(line) == 1 and "being written by another job" in line[0] and f"pid {first.pid}" in line[0]
            assert time.perf_counter() - t0 < 5  # before the model loads
    finally:
        first.kill()
        first.wait()


def test_a_stale_lease_is_taken_over_and_the_old_holder_stops(tmp_path, gpt2, reference):
    first = _start_stopped(gpt2, tmp_path, "lease_timeout_s=2")
    try:
        time.sleep(2.5)  # no heartbeat from a stopped process: the lease goes stale
        second = cli(gpt2, *ARGS, "resume=true", "lease_timeout_s=2", cwd=tmp_path)
        assert second.returncode == 0, second.stderr[-3000:]
        assert "took over the stale lease" in second.stdout + second.stderr
        first.send_signal(signal.SIGCONT)  # the old holder wakes up: it must not write beside the new one
        _, err = first.communicate(timeout=120)
        assert first.returncode == 2 and "taken over by another job" in err, err[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
    assert not Path(lease_path(str(tmp_path / "out" / "r"))).exists()
    assert_same(tmp_path / "out" / "r", reference)


def test_two_jobs_started_at_once_give_one_run_and_one_clear_refusal(tmp_path, gpt2, reference):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PROBING_", "SLURM_"))}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    procs = [subprocess.Popen([sys.executable, "-m", "probing", gpt2, *ARGS], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-2000:] for o in outs]
    refused = next(o[1] for p, o in zip(procs, outs, strict=True) if p.returncode == 2)
    lines = [ln for ln in refused.splitlines() if ln.startswith("probing: error:")]
    assert len(lines) == 1 and ("being written by another job" in lines[0] or "already exists" in lines[0]), refused
    assert "Traceback" not in refused
    assert_same(tmp_path / "out" / "r", reference)


# -- a full disk ------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):  # type: ignore[no-untyped-def]
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_full_disk_keeps_what_is_durable_and_resume_finishes(tmp_path, small_disk, tiny_models):
    """Long texts cut to 8 tokens: the activations fit the estimate, the stored texts fill the disk."""
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz "))
    data = tmp_path / "long.jsonl"
    with data.open("w") as f:
        for i in range(240):
            f.write(json.dumps({"text": "word " + "".join(rng.choice(letters, 20_000)), "label": i % 2}) + "\n")
    args = [f"model.name_or_path={tiny_models['gpt2']}", "data=files", f"data.path={data}", "data.max_length=8",
            "data.batch_size=8", "storage.chunk_rows=8", "progress=false", f"output_dir={small_disk}", "run_id=r",
            "probe_after_extract=false"]
    full = cli(*args, cwd=tmp_path)
    assert full.returncode == 74, full.stderr[-3000:]
    errors = [ln for ln in full.stderr.splitlines() if ln.startswith("probing: error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "resume=true" in errors[0], full.stderr
    assert "Traceback" not in full.stderr
    with pytest.warns(UserWarning, match="of 240 examples are finished"):
        partial = open_run(small_disk / "r", allow_partial=True)
    kept = partial.n_examples
    partial.close()
    assert 0 < kept < 240 and f"The {kept} examples already stored are kept" in errors[0]  # the durable rows
    moved = tmp_path / "bigger"  # "free space": the run moves to a disk with room
    shutil.copytree(small_disk / "r", moved / "r")
    resumed = cli(*[a if not a.startswith("output_dir=") else f"output_dir={moved}" for a in args], "resume=true",
                  cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with open_run(moved / "r") as r:
        assert r.completed and r.n_examples == 240 and r.metadata["attempts"] == 1
        assert r.metadata["stats"]["parts"]  # both attempts recorded


# -- values are checked -------------------------------------------------------------------------------
def _poisoned(tiny_models, tmp_path: Path, scale: float) -> Path:  # type: ignore[no-untyped-def]
    """A copy of the tiny GPT-2 whose second block's output is multiplied by ``scale`` (NaN or huge)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / f"poisoned-{scale}"
    model = AutoModel.from_pretrained(tiny_models["gpt2"])
    with torch.no_grad():
        model.h[1].mlp.c_proj.weight.mul_(scale)
        model.h[1].mlp.c_proj.bias.fill_(scale)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_models["gpt2"]).save_pretrained(out)
    return out


def _run(path: Path, out: Path, **kw):  # type: ignore[no-untyped-def]
    dtype = kw.pop("dtype", "float32")
    model = ModelBackend().load_model(str(path))
    extractor = ActivationExtractor(model, layers=[0, 1, 2], strategy=MeanStrategy())
    texts = [f"the cat sat on mat {i}" for i in range(20)]
    return DatasetRunner(texts, 4, extractor, ZarrStorage(str(out), dtype=dtype), progress=False, announce=False,
                         run_id=kw.pop("run_id", "r"), **kw).run()


def test_nan_activations_fail_the_run_naming_layer_count_and_ids_and_resume_keeps_them(tmp_path, tiny_models):
    poisoned = _poisoned(tiny_models, tmp_path, float("nan"))
    with pytest.raises(NonFiniteError, match=r"layer blocks\.1: 640 NaN/inf values in 20 examples \(first ids "
                                             r"\[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]\).*on_nonfinite=warn"):
        _run(poisoned, tmp_path / "out")
    with pytest.raises(ProbingError, match="not completed"):
        open_run(tmp_path / "out" / "r")
    result = _run(poisoned, tmp_path / "out", resume=True, on_nonfinite="warn")
    with open_run(result.path) as r:
        assert r.metadata["nonfinite"]["blocks.1"]["values"] == 640  # 20 examples x 32 dims
        assert np.isnan(r.activations("blocks.1")).all() and np.isfinite(r.activations("blocks.0")).all()
    ignored = _run(poisoned, tmp_path / "out", run_id="i", on_nonfinite="ignore")
    assert open_run(ignored.path).completed


def test_float16_overflow_is_refused_as_beyond_the_range(tmp_path, tiny_models):
    huge = _poisoned(tiny_models, tmp_path, 1e7)
    with pytest.raises(NonFiniteError, match=r"blocks\.1: .* of them finite values beyond float16's range"):
        _run(huge, tmp_path / "out", dtype="float16")
    assert open_run(_run(huge, tmp_path / "f32", dtype="float32").path).completed  # float32 holds them


# -- stored data is verified ----------------------------------------------------------------------------
@pytest.fixture
def stored(tmp_path, tiny_models):  # type: ignore[no-untyped-def]
    def make(storage):  # type: ignore[no-untyped-def]
        model = ModelBackend().load_model(tiny_models["bert"])
        extractor = ActivationExtractor(model, layers=[0, -1], strategy=MeanStrategy())
        texts = [f"the dog ran {i}" for i in range(40)]
        return DatasetRunner(texts, 4, extractor, storage, progress=False, announce=False, run_id="r").run().path

    return make


def _info(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "probing", "info", *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("compressor", ["none", "zstd"])
def test_a_deleted_chunk_is_an_error_naming_layer_and_rows(tmp_path, stored, compressor):
    path = stored(ZarrStorage(str(tmp_path / "out"), chunk_rows=8, compressor=compressor))
    os.remove(Path(path) / "layers" / "blocks.3" / "c" / "2" / "0")
    with open_run(path) as r:
        np.testing.assert_equal(r.activations("blocks.0").shape, (40, 32))  # the intact layer still reads
        with pytest.raises(DamagedRunError, match=r"layer blocks\.3, rows 16\.\.23: the chunk is missing"):
            r.activations("blocks.3")
    info = _info(path)
    assert "DAMAGED" in info.stdout and "rows 16..23" in info.stdout
    verify = _info(path, "--verify")
    assert verify.returncode == 1 and "layer blocks.3: rows 16..23: the chunk is missing" in verify.stdout


@pytest.mark.parametrize("compressor", ["none", "zstd"])
def test_changed_bytes_fail_their_checksum(tmp_path, stored, compressor):
    path = stored(ZarrStorage(str(tmp_path / "out"), chunk_rows=8, compressor=compressor))
    chunk = Path(path) / "layers" / "blocks.0" / "c" / "1" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    with open_run(path) as r, pytest.raises(DamagedRunError, match=r"layer blocks\.0, rows 8\.\.15: .*checksum"):
        r.activations("blocks.0")
    verify = _info(path, "--verify")
    assert verify.returncode == 1 and "layer blocks.0: rows 8..15: checksum mismatch" in verify.stdout
    assert _info(str(tmp_path / "out" / "nothing"), "--verify").returncode == 2


def test_an_edited_shape_is_refused_when_the_run_opens(tmp_path, stored):
    path = stored(ZarrStorage(str(tmp_path / "out"), chunk_rows=8))
    meta_file = Path(path) / "layers" / "blocks.3" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["shape"][0] = 30
    meta_file.write_text(json.dumps(meta))
    says = r"layer blocks\.3 has shape \(30, 32\), the run's layout says \(40, 32\)"
    with pytest.raises(DamagedRunError, match=says):
        open_run(path)
    assert _info(path, "--verify").returncode == 1


def test_an_intact_run_verifies(tmp_path, stored):
    path = stored(ZarrStorage(str(tmp_path / "out"), chunk_rows=8, shard_chunks=2))
    verify = _info(path, "--verify")
    assert verify.returncode == 0 and "verified" in verify.stdout


def test_hdf5_chunks_carry_checksums_too(tmp_path, stored):
    import h5py

    path = stored(HDF5Storage(str(tmp_path / "out"), chunk_rows=8))
    h5 = Path(path) / "activations.h5"
    with h5py.File(h5, "r") as f:
        offset = f["layers/blocks.0"].id.get_chunk_info(1).byte_offset
    with open(h5, "r+b") as f:
        f.seek(offset + 7)
        byte = f.read(1)
        f.seek(offset + 7)
        f.write(bytes([byte[0] ^ 0xFF]))
    with open_run(path) as r, pytest.raises(DamagedRunError, match=r"layer blocks\.0, rows 8\.\.15: .*checksum"):
        r.activations("blocks.0")


# -- bad inputs ---------------------------------------------------------------------------------------
BAD_FILES = [  # (file name, content, what the one error line says)
    ("empty.jsonl", b"", "is empty: it holds no records"),
    ("empty.csv", b"", "is empty"),
    ("header.csv", b"text,label\n", "has a header (text, label) but no rows"),
    ("bad.jsonl", b'{"text": "a", "label": 1}\n{"text": "b", "label": \n', "line 2: not a JSON record"),
    ("latin1.csv", "text,label\nh\xe9llo,1\n".encode("latin1"), "line 2: not UTF-8 (byte 0xe9"),
    ("surrogate.jsonl", b'{"text": "a \\ud800 b", "label": 1}\n', "line 1: field 'text' holds U+D800"),
]


@pytest.mark.parametrize(("name", "content", "says"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_data_files_are_one_line_naming_file_and_line(tmp_path, gpt2, name, content, says):
    (tmp_path / name).write_bytes(content)
    t0 = time.perf_counter()
    proc = cli(gpt2, "data=files", f"data.path={tmp_path / name}", "output_dir=out", cwd=tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and says in lines[0] and name in lines[0], lines
    assert time.perf_counter() - t0 < 5  # before the model loads
    assert not (tmp_path / "out").exists()


def test_a_bad_line_past_the_head_is_found_when_loading(tmp_path, gpt2):
    """The cheap check reads 1 MiB; a bad line further on is named once `datasets` fails on it."""
    path = tmp_path / "big.jsonl"
    good = json.dumps({"text": "the cat sat on the mat " * 4, "label": 1}) + "\n"
    with path.open("w") as f:
        f.write(good * 20_000)  # ~2.2 MB
        f.write('{"text": "broken", \n')
    proc = cli(gpt2, "data=files", f"data.path={path}", "output_dir=out", cwd=tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "big.jsonl: line 20001: not a JSON record" in lines[0], lines


def test_a_truncated_weights_file_is_named_before_loading(tmp_path, tiny_models, gpt2):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_models["gpt2"], broken)
    weights = broken / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    proc = cli(f"model.name_or_path={broken}", "output_dir=out", cwd=tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "model.safetensors is truncated" in lines[0], lines


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["trainer=gpu"], "torch sees no GPU"),
        (["data.limit=0"], "no examples"),
        (["on_nonfinite=sometimes"], "on_nonfinite"),
    ],
)
def test_environment_and_empty_inputs_are_one_line(tmp_path, gpt2, args, says):
    import torch

    if "trainer=gpu" in args and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = cli(gpt2, *args, "output_dir=out", cwd=tmp_path)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and says in lines[0], lines
    debug = cli(gpt2, *args, "output_dir=out", cwd=tmp_path, env={"PROBING_DEBUG": "1"})
    assert "Traceback" in debug.stderr  # the traceback is there when asked for


def test_a_read_only_output_folder_is_refused_before_compute(tmp_path, gpt2):
    if os.geteuid() != 0:
        target = tmp_path / "ro"
        target.mkdir()
        target.chmod(0o555)
    else:  # root writes anywhere but on a read-only mount
        target = tmp_path / "ro"
        target.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)],
                          capture_output=True).returncode:
            pytest.skip("cannot mount a read-only tmpfs here")
    try:
        proc = cli(gpt2, f"output_dir={target}", cwd=tmp_path)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and "is not writable" in lines[0], lines
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.mark.parametrize("texts", [["a cat", "\u200b\u200b", "a dog"], ["a cat", " \t\n", "a dog"], ["a cat", ""]])
def test_blank_and_zero_width_texts_are_refused_with_their_ids(tmp_path, tiny_models, texts):
    model = ModelBackend().load_model(tiny_models["bert"])
    extractor = ActivationExtractor(model, layers=[0], strategy=MeanStrategy())
    with pytest.raises(DatasetError, match=r"1 example\(s\) have an empty .*ids \[1\]"):
        DatasetRunner(texts, 2, extractor, ZarrStorage(str(tmp_path)), progress=False, announce=False).run()


def test_a_lone_surrogate_in_python_input_is_named(tmp_path, tiny_models):
    model = ModelBackend().load_model(tiny_models["bert"])
    extractor = ActivationExtractor(model, layers=[0], strategy=MeanStrategy())
    with pytest.raises(DatasetError, match=r"Example 1 holds U\+D800, which is not valid Unicode"):
        DatasetRunner(["fine", "bad \ud800"], 2, extractor, ZarrStorage(str(tmp_path)), progress=False,
                      announce=False).run()


def test_mixed_type_labels_are_refused_for_probing_with_the_types(tmp_path, tiny_models):
    from probing.probes.run import probe_run

    model = ModelBackend().load_model(tiny_models["bert"])
    extractor = ActivationExtractor(model, layers=[0], strategy=MeanStrategy())
    data = [{"text": f"the cat {i}", "label": [1, "1", None, True][i % 4]} for i in range(40)]
    result = DatasetRunner(data, 8, extractor, ZarrStorage(str(tmp_path)), progress=False, announce=False).run()
    expected = r"mixes value types \(bool, int, str\).*rows without a value \(None\) are left out"
    with pytest.raises(ProbingError, match=expected):
        probe_run(result.path, label_fields=["label"])
