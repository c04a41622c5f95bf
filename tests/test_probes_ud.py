"""Real data: word-level UPOS probes on UD English EWT with all-MiniLM-L6-v2, every layer, against an
independent computation with plain transformers + scikit-learn (train on the dev file, test on test)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SHARED

UD = SHARED / "data" / "ud-english-ewt"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not UD.is_dir(), reason="../shared/data/ud-english-ewt is absent")]


def independent_features(data: list[dict], model, tokenizer) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """First sub-token of every word, every hidden state, from output_hidden_states."""
    per_layer: list[list[np.ndarray]] = [[] for _ in range(7)]
    for s in range(0, len(data), 64):
        words = [d["words"] for d in data[s : s + 64]]
        enc = tokenizer(
            words, is_split_into_words=True, truncation=True, max_length=128, padding=True, return_tensors="pt"
        )
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states
        for i in range(len(words)):
            wids = enc.word_ids(i)
            first = [t for t, w in enumerate(wids) if w is not None and (t == 0 or wids[t - 1] != w)]
            for layer in range(7):
                per_layer[layer].append(hs[layer][i, first].numpy())
    return [np.concatenate(x) for x in per_layer]


def test_upos_probes_match_plain_transformers_and_sklearn(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from probing import ActivationExtractor, DatasetRunner, ModelBackend, WordsStrategy, ZarrStorage, probe_run
    from probing.data.loaders import load_conllu, rename_values
    from probing.probes.sklearn_probe import TOL

    data = rename_values(
        load_conllu([str(UD / "en_ewt-ud-dev.conllu"), str(UD / "en_ewt-ud-test.conllu")]), "split", {"dev": "train"}
    )
    backend = ModelBackend().load_model("sentence-transformers/all-MiniLM-L6-v2")
    extractor = ActivationExtractor(backend, layers="all", strategy=WordsStrategy("first"))
    run = DatasetRunner(
        data, 32, extractor, ZarrStorage(str(tmp_path)), words_field="words", max_length=128, progress=False
    ).run()
    report = probe_run(
        run.path,
        label_fields=["upos"],
        method="sklearn",
        split_field="split",
        control_field="none",
        c_grid=[1.0],
        write=False,
    )
    ours = {r.layer: r for r in report.results}

    records = data.to_list()  # the loader gives a datasets.Dataset (Arrow); the reference reads plain dicts
    feats = independent_features(records, backend.model, backend.tokenizer)
    labels = np.array([t for d in records for t in d["upos"]])
    is_train = np.array([d["split"] == "train" for d in records for _ in d["words"]])
    assert feats[0].shape[0] == len(labels) == 25147 + 25094
    majority = np.mean(labels[~is_train] == max(set(labels[is_train]), key=list(labels[is_train]).count))
    assert 0.14 < majority < 0.18
    for layer, key in enumerate(["embeddings"] + [f"blocks.{i}" for i in range(6)]):
        scaler = StandardScaler().fit(feats[layer][is_train])
        # the same solver settings as the sklearn path (C, and its lbfgs tolerance); features, labels,
        # split and scaling are computed independently here
        clf = LogisticRegression(C=1.0, tol=TOL, max_iter=500).fit(
            scaler.transform(feats[layer][is_train]), labels[is_train]
        )
        acc = float(np.mean(clf.predict(scaler.transform(feats[layer][~is_train])) == labels[~is_train]))
        assert abs(ours[key].accuracy - acc) <= 0.005, (key, ours[key].accuracy, acc)
        assert abs(ours[key].majority - majority) < 1e-9
        assert ours[key].accuracy > 0.8
