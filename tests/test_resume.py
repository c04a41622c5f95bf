"""Resume: a run killed at any point and restarted with resume=true ends equal to an uninterrupted run."""

from __future__ import annotations

import numpy as np
import pytest
from cli_helpers import cli

from probing import (
    ActivationExtractor,
    DatasetRunner,
    LastTokenStrategy,
    MeanStrategy,
    ModelBackend,
    ZarrStorage,
    open_run,
)
from probing.engine.preemption import EXIT_PREEMPTED
from probing.errors import ResumeMismatchError, RunIncompleteError

N = 101
ARGS = [
    "data.batch_size=4",
    "storage.chunk_rows=6",
    f"data.limit={N}",
    "progress=false",
    "output_dir=out",
    "run_id=r",
    "data.bucketing=true",
]


@pytest.fixture(scope="module")
def uninterrupted(tiny_models, tmp_path_factory):  # type: ignore[no-untyped-def]
    cwd = tmp_path_factory.mktemp("uninterrupted")
    proc = cli(f"model.name_or_path={tiny_models['gpt2']}", *ARGS, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return open_run(cwd / "out" / "r")


def assert_same(got, ref) -> None:  # type: ignore[no-untyped-def]
    assert got.layers == ref.layers and got.n_examples == ref.n_examples
    for layer in ref.layers:
        np.testing.assert_allclose(got.activations(layer), ref.activations(layer), atol=1e-5)
    np.testing.assert_array_equal(got.example_metadata("token_counts"), ref.example_metadata("token_counts"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "rc"),
    [
        ("before_first_batch", -9),
        ("after_flush:3", -9),
        ("finalize", -9),
        ("after_flush:2:SIGTERM", EXIT_PREEMPTED),
        ("after_flush:4:SIGUSR1", EXIT_PREEMPTED),
        ("after_flush:1:SIGUSR2", EXIT_PREEMPTED),
    ],
)
def test_killed_run_resumes_to_the_same_result(tmp_path, tiny_models, uninterrupted, fault, rc):
    model = f"model.name_or_path={tiny_models['gpt2']}"
    killed = cli(model, *ARGS, cwd=tmp_path, env={"PROBING_FAULT": fault})
    assert killed.returncode == rc, killed.stderr[-3000:]
    with pytest.raises(RunIncompleteError):
        open_run(tmp_path / "out" / "r")
    if rc == EXIT_PREEMPTED:
        assert "resume=true" in killed.stderr
    with pytest.warns(UserWarning, match="partial run"):
        kept = open_run(tmp_path / "out" / "r", allow_partial=True).n_examples  # what the stop left on disk
    again = cli(model, *ARGS, cwd=tmp_path)
    assert again.returncode == 2 and "resume=true" in again.stderr  # no silent restart over it
    resumed = cli(model, *ARGS, "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = open_run(tmp_path / "out" / "r")
    assert_same(got, uninterrupted)
    resumed_part = got.metadata["stats"]["parts"]["a001-r00000"]
    skipped = resumed_part["skipped_as_done"]
    assert skipped + resumed_part["examples"] == N  # only what was missing was computed, nothing twice
    point, _, rest = fault.partition(":")
    flushes = int(rest.split(":")[0] or 1) if rest else 0
    # each progress record follows at least one more whole chunk of 6 rows on disk
    expected_min = {"before_first_batch": 0, "finalize": N}.get(point, 6 * flushes)
    assert skipped >= expected_min
    assert skipped == kept  # the resume keeps exactly what was recorded as stored, and computes the rest
    if rc == -9:
        assert skipped % 6 == 0 or skipped == N  # SIGKILL keeps whole chunks: the rows held in memory are lost
    else:  # a clean stop writes the partial chunks it holds and records why it stopped
        assert got.metadata["stats"]["parts"]["a000-r00000"]["status"] == "stopped: Preempted"


@pytest.mark.slow
def test_ddp_preempted_then_resumed_on_one_rank(tmp_path, tiny_models, uninterrupted):
    model = f"model.name_or_path={tiny_models['gpt2']}"
    ddp = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
    killed = cli(
        model, *ARGS, *ddp, cwd=tmp_path, env={"PROBING_FAULT": "after_flush:2:SIGUSR1", "PROBING_FAULT_RANK": "0"}
    )
    assert killed.returncode != 0
    resumed = cli(model, *ARGS, "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same(open_run(tmp_path / "out" / "r"), uninterrupted)


def test_resume_with_other_settings_is_refused(tmp_path, tiny_models):
    model = ModelBackend().load_model(tiny_models["bert"])
    data = [f"the cat sat {i}" for i in range(10)]

    def start(layers, strategy, max_length=32, texts=data, resume=False):  # type: ignore[no-untyped-def]
        extractor = ActivationExtractor(model, layers=layers, strategy=strategy)
        runner = DatasetRunner(
            texts,
            4,
            extractor,
            ZarrStorage(str(tmp_path)),
            run_id="r",
            max_length=max_length,
            resume=resume,
            progress=False,
        )
        return runner

    first = start([0], MeanStrategy())
    writer = first.storage.open_run("r", metadata=first.metadata())
    writer.close()  # an interrupted run: created, nothing finalized...
    writer.release()  # ...and its job gone
    for kwargs, what in [
        ({"layers": [1], "strategy": MeanStrategy()}, "layers"),
        ({"layers": [0], "strategy": LastTokenStrategy()}, "strategy"),
        ({"layers": [0], "strategy": MeanStrategy(), "max_length": 16}, "max_length"),
        ({"layers": [0], "strategy": MeanStrategy(), "texts": data[:-1] + ["changed"]}, "dataset.fingerprint"),
    ]:
        with pytest.raises(ResumeMismatchError, match=what):
            start(resume=True, **kwargs).run()
    result = start([0], MeanStrategy(), resume=True).run()
    assert open_run(result.path).n_examples == 10


@pytest.mark.slow
def test_token_level_run_killed_and_resumed(tmp_path, tiny_models):
    args = [
        f"model.name_or_path={tiny_models['llama']}",
        "+strategy=tokens",
        "data.batch_size=4",
        "storage.chunk_rows=16",
        "data.limit=41",
        "data.bucketing=false",  # batches in dataset order: chunks of rows complete one after the other
        "progress=false",
        "output_dir=out",
    ]
    ref = cli(*args, "run_id=ref", cwd=tmp_path)
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = cli(*args, "run_id=k", cwd=tmp_path, env={"PROBING_FAULT": "after_flush:3"})
    assert killed.returncode == -9
    resumed = cli(*args, "run_id=k", "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = open_run(tmp_path / "out" / "ref"), open_run(tmp_path / "out" / "k")
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(a.row_metadata("token_id"), b.row_metadata("token_id"))
    for layer in a.layers:
        np.testing.assert_allclose(a.activations(layer), b.activations(layer), atol=1e-5)
