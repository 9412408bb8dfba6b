"""GLUE and user tables: formats, pitfalls, label discovery, and errors naming file:line."""

import csv
import json
import os

import numpy as np
import pytest

from lmtransfer.data import glue, tables
from lmtransfer.tasks import make_task
from lmtransfer.train import init
from tests.configs_loader import load_config
from tests.glue_data import make_glue


@pytest.fixture(scope="module")
def glue_root(tmp_path_factory):
    return make_glue(str(tmp_path_factory.mktemp("glue")))


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return init.tokenization.load_tokenizer(minilm_path)


def task_for(tokenizer, **data):
    c = load_config("classify.py", "model=tiny")
    for k, v in data.items():
        if k == "files":
            for split, path in v.items():
                c.data.files[split] = path
        else:
            c.data[k] = v
    return make_task(c, tokenizer)


def glue_task(tokenizer, root, name):
    c = load_config("glue.py", f"task={name},model=tiny")
    c.data.dir = root
    return make_task(c, tokenizer)


@pytest.mark.parametrize("name,pair,labels", [
    ("sst2", False, ("0", "1")), ("cola", False, ("0", "1")), ("mrpc", True, ("0", "1")),
    ("stsb", True, None), ("rte", True, ("entailment", "not_entailment"))])
def test_glue_formats(glue_root, tokenizer, name, pair, labels):
    task = glue_task(tokenizer, glue_root, name)
    assert task.labels == labels and task.num_labels == (1 if labels is None else 2)
    train, dev, test = task.load("train"), task.load("dev"), task.load("test")
    assert (len(train), len(dev), len(test)) == (64, 21, 13)
    assert train.labelled and dev.labelled and not test.labelled
    assert (train.features["token_type_ids"].max() == 1) == pair
    # The lone quote is text, not a CSV quote (csv.QUOTE_NONE), and the BOM is gone.
    assert train.examples[0]["text_a"] == 'he said " hello " and left'
    assert test.examples[3]["id"] == "3"


def test_mnli_matched_and_mismatched(glue_root, tokenizer):
    task = glue_task(tokenizer, glue_root, "mnli")
    assert task.eval_splits() == ("dev_matched", "dev_mismatched")
    assert task.test_splits() == ("test_matched", "test_mismatched")
    assert task.labels == ("contradiction", "entailment", "neutral")
    dev = task.load("dev_mismatched")
    assert len(dev) == 21 and dev.features["label"].tolist()[:3] == [0, 1, 2]
    assert task.glue.submission_name("test_mismatched") == "MNLI-mm"


def test_glue_raw_reader_pitfalls(glue_root):
    rows, path = glue.read_split(glue_root, glue.get("mrpc"), "train")
    assert list(rows[0].fields)[0] == "Quality"  # BOM stripped from the header
    rows, _ = glue.read_split(glue_root, glue.get("cola"), "dev")
    assert len(rows) == 21 and rows[-1].fields["sentence"]  # header-less, no final newline
    with pytest.raises(ValueError, match="config.data.glue_task='mnlii'"):
        glue.get("mnlii")


def test_user_tables_tsv_csv_jsonl(tmp_path, tokenizer):
    rows = [("great movie", "pos"), ("terrible plot", "neg"), ("fine acting", "meh")]
    with open(tmp_path / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["review", "stars"])
        w.writerows([(t, lab) for t, lab in rows] * 3)
    with open(tmp_path / "dev.jsonl", "w") as f:
        for t, lab in rows:
            f.write(json.dumps({"review": t, "stars": lab}) + "\n")
    (tmp_path / "test.tsv").write_text("review\nnice one\n")
    task = task_for(tokenizer, source="files", text_column="review", label_column="stars",
                    files={"train": str(tmp_path / "train.csv"),
                           "dev": str(tmp_path / "dev.jsonl"), "test": str(tmp_path / "test.tsv")})
    assert task.labels == ("meh", "neg", "pos")  # discovered from train, sorted
    assert task.load("dev").features["label"].tolist() == [2, 1, 0]
    assert not task.load("test").labelled


def test_regression_table(tmp_path, tokenizer):
    (tmp_path / "train.tsv").write_text("a\tb\ty\nx y\tz\t0.5\nq\tw\t2\n")
    task = task_for(tokenizer, source="files", text_column="a", text_pair_column="b",
                    label_column="y", regression=True, files={"train": str(tmp_path / "train.tsv")})
    split = task.load("train")
    assert task.num_labels == 1 and task.main_metric == "pearson_spearman"
    np.testing.assert_allclose(split.features["label"], [0.5, 2.0])


def test_wrong_column_count_names_file_and_line(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_text("text\tlabel\nok\t1\nbroken row with\textra\tcolumn\n")
    with pytest.raises(tables.DataError, match=r"bad.tsv:3: expected 2 columns"):
        tables.read_table(str(p))


def test_label_outside_label_set(tmp_path, tokenizer):
    (tmp_path / "train.tsv").write_text("text\tlabel\na\tpos\nb\tneg\n")
    (tmp_path / "dev.tsv").write_text("text\tlabel\nc\tpos\nd\tneutral\n")
    task = task_for(tokenizer, source="files", files={"train": str(tmp_path / "train.tsv"),
                                                      "dev": str(tmp_path / "dev.tsv")})
    with pytest.raises(tables.DataError, match=r"dev.tsv:3: label 'neutral' is not in the "
                                               r"label set \['neg', 'pos'\]"):
        task.load("dev")


def test_empty_file_and_missing_column(tmp_path, tokenizer):
    (tmp_path / "empty.tsv").write_text("")
    with pytest.raises(tables.DataError, match="empty.tsv: no examples"):
        tables.read_table(str(tmp_path / "empty.tsv"))
    (tmp_path / "header_only.csv").write_text("text,label\n")
    with pytest.raises(tables.DataError, match="header_only.csv: no examples"):
        tables.read_table(str(tmp_path / "header_only.csv"))
    (tmp_path / "t.tsv").write_text("sentence\tlabel\na\t1\n")
    with pytest.raises(tables.DataError, match=r"t.tsv:2: no column 'text'"):
        task_for(tokenizer, source="files", files={"train": str(tmp_path / "t.tsv")})
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": 1}\n{"text": \n')
    with pytest.raises(tables.DataError, match=r"bad.jsonl:2: not valid JSON"):
        tables.read_table(str(tmp_path / "bad.jsonl"))


def test_tfds_glue_with_mock_data(tokenizer):
    import tensorflow_datasets as tfds

    c = load_config("glue.py", "task=mrpc,model=tiny,source=tfds")
    with tfds.testing.mock_data(num_examples=7, policy=tfds.testing.MockPolicy.USE_CODE):
        task = make_task(c, tokenizer)
        dev = task.load("dev")
    assert len(dev) == 7 and dev.labelled
    assert set(dev.features["label"].tolist()) <= {0, 1}
    assert dev.features["token_type_ids"].max() == 1
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
