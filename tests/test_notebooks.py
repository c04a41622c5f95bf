"""The example notebooks (examples/*.py, jupytext percent format) execute headless through nbclient on their
small data, with no error output and with their figures as image/png outputs."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = ["quickstart.py", "compare_models.py"]


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A kernelspec for this interpreter in a private folder (JUPYTER_PATH), whatever else is installed."""
    pytest.importorskip("nbclient", reason="the notebooks extra: pip install -e '.[notebooks]'")
    pytest.importorskip("jupytext", reason="the notebooks extra: pip install -e '.[notebooks]'")
    from ipykernel.kernelspec import install

    prefix = tmp_path_factory.mktemp("jupyter")
    install(kernel_name="probing-tests", display_name="probing tests", prefix=str(prefix))
    return str(prefix / "share" / "jupyter")


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes_and_draws(name, kernel, tmp_path, monkeypatch):
    import jupytext
    from nbclient import NotebookClient

    monkeypatch.setenv("JUPYTER_PATH", kernel)
    monkeypatch.setenv("PROBING_EXAMPLES_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own inline backend
    nb = jupytext.read(EXAMPLES / name)
    assert 'matplotlib.use("Agg")' not in (EXAMPLES / name).read_text()
    start = time.perf_counter()
    client = NotebookClient(nb, kernel_name="probing-tests", timeout=300,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    seconds = time.perf_counter() - start
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, errors
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= (3 if name == "quickstart.py" else 2), [o.output_type for o in outputs]
    assert all(len(o["data"]["image/png"]) > 10_000 for o in images)  # base64 of a real figure
    print(f"{name}: executed in {seconds:.1f} s")
