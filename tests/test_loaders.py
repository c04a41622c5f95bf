"""Data loading for real use: files, CoNLL-U (on UD English EWT when ../shared is there), HF by name."""

from __future__ import annotations

import json

import pytest
from conftest import SHARED

from probing.data.loaders import load_conllu, load_files, load_hf, read_conllu, select_fields
from probing.errors import ConfigError, DatasetError

UD = SHARED / "data" / "ud-english-ewt"


def test_csv_jsonl_parquet(tmp_path):
    rows = [{"text": f"sentence {i} é", "label": i % 2} for i in range(5)]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.csv").write_text("text,label\n" + "\n".join(f"{r['text']},{r['label']}" for r in rows))
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    for name in ("d.jsonl", "d.csv", "d.parquet"):
        ds = load_files(str(tmp_path / name))
        assert ds["text"] == [r["text"] for r in rows] and ds["label"] == [r["label"] for r in rows]
    with pytest.raises(ConfigError, match="data.format"):
        load_files(
            str(tmp_path / "d.jsonl").replace(".jsonl", ".txt")
            if False
            else [str(tmp_path / "d.jsonl"), str(tmp_path / "d.csv")]
        )
    with pytest.raises(DatasetError, match="not found"):
        load_files(str(tmp_path / "missing.csv"))


def test_select_fields_keeps_inputs_and_names_missing():
    data = [{"text": "a", "label": 1, "noise": 2}]
    assert select_fields(data, ["label"], ["text"]) == [{"text": "a", "label": 1}]
    with pytest.raises(DatasetError, match="nope"):
        select_fields(data, ["nope"], ["text"])


def test_conllu_parser_skips_multiword_tokens(tmp_path):
    f = tmp_path / "x-ud-test.conllu"
    f.write_text(
        "# sent_id = s1\n# text = Don't go.\n"
        "1-2\tDon't\t_\t_\t_\t_\t_\t_\t_\t_\n1\tDo\tdo\tAUX\tVBP\t_\t3\taux\t_\t_\n"
        "2\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\t_\n3\tgo\tgo\tVERB\tVB\t_\t0\troot\t_\t_\n"
        "4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_\n\n"
    )
    [s] = list(read_conllu(f))
    assert s["words"] == ["Do", "n't", "go", "."] and s["upos"] == ["AUX", "PART", "VERB", "PUNCT"]
    assert s["head"] == [3, 3, 0, 3] and s["text"] == "Don't go." and s["sent_id"] == "s1"
    assert load_conllu(str(f))[0]["split"] == "test"


@pytest.mark.skipif(not UD.is_dir(), reason="../shared/data/ud-english-ewt is absent")
def test_ud_english_ewt_dev_and_test():
    data = load_conllu([str(UD / "en_ewt-ud-dev.conllu"), str(UD / "en_ewt-ud-test.conllu")])
    splits = [d["split"] for d in data]
    assert splits.count("dev") == 2001 and splits.count("test") == 2077
    assert all(len(d["words"]) == len(d["upos"]) for d in data)
    assert (
        sum(len(d["words"]) for d in data if d["split"] == "dev") == 25147
    )  # syntactic words: awk -F"\t" 'NF==10 && $1 !~ /[-.]/' | wc -l


def test_hf_dataset_by_name_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DatasetError, match="hub or a local cache"):
        load_hf("no-such-user/no-such-dataset-xyz")
