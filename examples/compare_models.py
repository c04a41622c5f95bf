# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Two models, layer by layer: all-MiniLM-L6-v2 against its random-weights copy
#
# The random-weights baseline (Belinkov 2021) is the same architecture, initialised from its config under a fixed
# seed: what a probe reads off a random network comes from the token identities, not from training. Both models
# are extracted over the same sentences, so their layers can be compared directly: linear CKA between the two runs'
# layers, and the probe curves of both on one plot.
#
# Open it as a notebook with `jupytext --to notebook examples/compare_models.py`. Output: `runs/examples/`
# (or `$PROBING_EXAMPLES_OUT`).

# %%
import os
from pathlib import Path

import numpy as np
from IPython.display import Image, display

from probing import ActivationExtractor, DatasetRunner, MeanStrategy, ModelBackend, ZarrStorage, probe_run
from probing.baseline_model import random_weights
from probing.data import ud_ewt
from probing.viz import cka_matrix, plot_cka, plot_curves

OUT = Path(os.environ.get("PROBING_EXAMPLES_OUT", "runs/examples"))
N_SENTENCES = 120

# %%
dataset = [{k: s[k] for k in ("text", "split", "tense", "length")} for s in ud_ewt.load(N_SENTENCES)]
trained = ModelBackend().load_model("sentence-transformers/all-MiniLM-L6-v2", device="cpu")
untrained = random_weights(trained)  # same config, tokenizer and dtype; fresh weights (seed 1234)


def extract(model, run_id):
    extractor = ActivationExtractor(model, layers="all", strategy=MeanStrategy())
    return DatasetRunner(dataset, batch_size=32, extractor=extractor, storage=ZarrStorage(str(OUT)), run_id=run_id,
                         progress=False, reuse=True).run()


run_a, run_b = extract(trained, "compare-trained"), extract(untrained, "compare-random")
print(run_a.path, run_b.path)

# %% [markdown]
# ## Linear CKA between the two models' layers
# Row `i`, column `j`: how similar layer `i` of the trained model is to layer `j` of the random copy, on the same
# sentences (mean-pooled: sentence length and shared tokens make even random layers alike); where the diagonal
# falls is where training made the model its own.

# %%
cka = cka_matrix(run_a.path, run_b.path)
print("same-layer CKA:", {k: round(float(v), 3) for k, v in zip(cka.layers_a, np.diag(cka.matrix), strict=True)})
display(Image(filename=plot_cka(cka, OUT / "cka_trained_vs_random.png", names=["trained", "random weights"])))

# %% [markdown]
# ## Probe curves of both models on one plot

# %%
probes = {"trained": None, "random weights": None}
for name, run in zip(probes, (run_a, run_b), strict=True):
    probes[name] = probe_run(run.path, label_fields=["tense", "length"], n_bootstrap=200, mdl=False, progress=False)
for label in ("tense", "length"):
    a, b = (probes[n].layer_summary(label) for n in probes)
    print(f"{label}: trained best {a['best_layer']} {a['best_score']:.3f}, random best {b['best_layer']} "
          f"{b['best_score']:.3f}")
curves = plot_curves(list(probes.values()), OUT / "curves_trained_vs_random.png", names=list(probes),
                     title="Probe score by layer: all-MiniLM-L6-v2, trained vs random weights")
display(Image(filename=curves))

# %% [markdown]
# The same from the command line:
# `python -m probing plot <run a> <run b> --kind cka` and `python -m probing plot <run a> <run b> --kind curves`.
