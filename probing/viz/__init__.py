"""Pictures of a stored run: 2-D projections of a layer's vectors, layer-similarity (CKA) heatmaps, probe curves of
several runs on one plot, and one self-contained HTML report per run.

Dataflow: `rows` reads a bounded seeded sample of a run's vectors and labels; `projection` and `similarity`
compute on that sample (PCA by SVD, linear CKA); `figures` draws PNGs; `html` puts a run's metadata, probe
table and figures into one offline file; `cli` is ``python -m probing plot`` and ``python -m probing report``.
matplotlib is drawn through its Agg canvas without pyplot (a user's backend is untouched).
"""

from probing.viz.curves import find_report, plot_curves
from probing.viz.figures import plot_cka, plot_projection
from probing.viz.html import write_html_report
from probing.viz.projection import Projection, pca_2d, project_layer
from probing.viz.similarity import CKAResult, cka_matrix, linear_cka

__all__ = [
    "CKAResult",
    "Projection",
    "cka_matrix",
    "find_report",
    "linear_cka",
    "pca_2d",
    "plot_cka",
    "plot_curves",
    "plot_projection",
    "project_layer",
    "write_html_report",
]
