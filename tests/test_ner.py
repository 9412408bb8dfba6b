"""NER: CoNLL reading, word -> sub-word alignment, windows, seqeval metrics, a whole run and
its HF export as BertForTokenClassification."""

import json
import os

import numpy as np
import pytest
import torch
import transformers

from lmtransfer import main, metrics
from lmtransfer.data import conll
from lmtransfer.data.tables import DataError
from lmtransfer.tasks import make_task
from lmtransfer.train import init
from tests.configs_loader import load_config

SENTENCES = [
    (["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"]),
    (["Peter", "Johanson", "visited", "Saarbruecken", "."], ["B-PER", "I-PER", "O", "B-LOC", "O"]),
    (["John", "\u200b", "Smith", "said"], ["B-PER", "I-PER", "I-PER", "O"]),
]


def write_conll(path, sentences):
    lines = ["-DOCSTART- -X- -X- O", ""]
    for words, tags in sentences:
        lines += [f"{w} NNP I-NP {t}" for w, t in zip(words, tags, strict=True)] + [""]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def make_data(root, n_train=40, n_dev=12, seed=0):
    """Random CoNLL-2003-like files (IOB2) with long sentences that need windows."""
    rng = np.random.default_rng(seed)
    names = {"PER": ["Peter", "Johanson", "Maria"], "LOC": ["Berlin", "Saarbruecken"],
             "ORG": ["Reuters", "EU"]}
    filler = ["the", "said", "on", "visited", "today", "talks", "with"]

    def sentence():
        words, tags = [], []
        for _ in range(rng.integers(3, 30)):
            if rng.random() < 0.3:
                kind = rng.choice(sorted(names))
                for j in range(rng.integers(1, 3)):
                    words.append(str(rng.choice(names[kind])))
                    tags.append(("B-" if j == 0 else "I-") + kind)
            else:
                words.append(str(rng.choice(filler)))
                tags.append("O")
        return words, tags

    os.makedirs(root, exist_ok=True)
    for name, n in (("train.txt", n_train), ("dev.txt", n_dev), ("test.txt", n_dev)):
        write_conll(os.path.join(root, name), [sentence() for _ in range(n)])
    return root


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return init.tokenization.load_tokenizer(minilm_path)


def ner_task(tokenizer, root, **data):
    c = load_config("ner.py", "model=tiny")
    c.data.dir = str(root)
    for k, v in data.items():
        c.data[k] = v
    return make_task(c, tokenizer)


# ---------------------------------------------------------------------------------- reading

def test_read_conll_documents_sentences_and_tag_column(tmp_path):
    path = write_conll(tmp_path / "a.txt", SENTENCES)
    got = conll.read_conll(path)
    assert [s.words for s in got] == [w for w, _ in SENTENCES]
    assert [s.tags for s in got] == [t for _, t in SENTENCES]
    assert got[0].where == f"{path}:3"
    assert conll.read_conll(path, tag_column=2)[0].tags == ["I-NP"] * 4
    (tmp_path / "crlf.txt").write_bytes(b"EU NNP B-ORG\r\n  \r\nPeter NNP B-PER\r\n")
    crlf = conll.read_conll(str(tmp_path / "crlf.txt"))
    assert [s.tags for s in crlf] == [["B-ORG"], ["B-PER"]]  # whitespace-only line = boundary
    (tmp_path / "words.txt").write_text("EU\nrejects\n\nPeter\n")
    assert [s.tags for s in conll.read_conll(str(tmp_path / "words.txt"))] == [[None] * 2, [None]]


@pytest.mark.parametrize("content, match", [
    (b"EU NNP B-ORG\nrejects VBZ\n", r"bad.txt:2: 2 columns, expected 3"),
    (b"EU NNP B-ORG\nM\xfcller NNP B-PER\n", r"bad.txt:2: not UTF-8"),
    (b"-DOCSTART- -X- -X- O\n\n", r"bad.txt: no sentences"),
    (b"", r"bad.txt: no sentences"),
])
def test_bad_conll_files_name_file_and_line(tmp_path, content, match):
    (tmp_path / "bad.txt").write_bytes(content)
    with pytest.raises(DataError, match=match):
        conll.read_conll(str(tmp_path / "bad.txt"))


def test_iob1_to_iob2():
    assert conll.iob1_to_iob2(["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-ORG", "I-MISC"]) == \
        ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG", "B-MISC"]


def test_unknown_tag_at_eval_names_the_word(tokenizer, tmp_path):
    write_conll(tmp_path / "train.txt", SENTENCES[:2])
    write_conll(tmp_path / "dev.txt", [(["Paris"], ["B-CITY"])])
    task = ner_task(tokenizer, tmp_path)
    assert task.labels == ("O", "B-LOC", "B-MISC", "B-ORG", "B-PER", "I-PER")
    with pytest.raises(DataError, match=r"dev.txt:3 \(word 1, 'Paris'\): tag 'B-CITY'"):
        task.load("dev")


# ---------------------------------------------------------------------------------- alignment

def test_first_subword_alignment(tokenizer, tmp_path):
    write_conll(tmp_path / "train.txt", SENTENCES)
    task = ner_task(tokenizer, tmp_path)
    split = task.load("train")
    f = split.features
    ids, labels, mask = f["input_ids"][1], f["labels"][1], f["label_mask"][1]
    pieces = tokenizer.convert_ids_to_tokens(ids[:f["length"][1]].tolist())
    assert pieces == ["[CLS]", "peter", "johan", "##son", "visited", "sa", "##ar", "##br", "##ue",
                      "##cken", ".", "[SEP]"]
    assert mask[:12].tolist() == [0, 1, 1, 0, 1, 1, 0, 0, 0, 0, 1, 0]
    names = [task.labels[i] for i, m in zip(labels, mask, strict=False) if m]
    assert names == SENTENCES[1][1]
    assert split.examples[1]["first"] == [1, 2, 4, 5, 10]
    # A word that tokenizes to nothing keeps the other words aligned and is predicted "O".
    e = split.examples[2]
    assert e["first"][1] == -1
    assert [task.labels[labels_] for labels_ in f["labels"][2][[1, 2]]] == ["B-PER", "I-PER"]


def test_all_subword_alignment_continues_b_as_i(tokenizer, tmp_path):
    write_conll(tmp_path / "train.txt", SENTENCES)
    task = ner_task(tokenizer, tmp_path, label_all_subwords=True)
    f = task.load("train").features
    assert f["label_mask"][1][:12].tolist() == [0] + [1] * 10 + [0]
    got = [task.labels[i] for i in f["labels"][1][1:11]]
    assert got[:4] == ["B-PER", "I-PER", "I-PER", "O"]
    assert got[4:9] == ["B-LOC"] * 5  # no I-LOC in the training labels, so B-LOC continues


def test_long_sentences_are_split_into_windows_never_truncated(tokenizer, tmp_path):
    words = [f"w{i}" if i % 3 else "Saarbruecken" for i in range(40)]
    tags = ["B-LOC" if i % 3 == 0 else "O" for i in range(40)]
    write_conll(tmp_path / "train.txt", [(words, tags), SENTENCES[0]])
    task = ner_task(tokenizer, tmp_path, max_length=16)
    split = task.load("train")
    windows = [e for e in split.examples if e["record"] == 0]
    assert len(windows) > 1
    covered = [w for e in windows for w in range(*e["words"])]
    assert covered == list(range(40))  # each word exactly once, in order
    assert (split.features["length"] <= 16).all()
    # Gold labels fed back as predictions reproduce every word's tag, across windows.
    pred = np.where(split.features["label_mask"] > 0, split.features["labels"], 0)
    assert task.word_predictions(split, pred)[0] == tags
    assert task.evaluate(split, {"pred": pred})["f1"] == pytest.approx(100.0)


# ---------------------------------------------------------------------------------- metrics

def test_entity_scores_conlleval_and_strict_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O"]]
    pred = [["I-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "O"]]
    # conlleval: I-PER after O starts a PER -> PER and LOC right, ORG wrong span: P=R=2/3.
    m = metrics.entity_scores(gold, pred)
    assert m["precision"] == pytest.approx(200 / 3) and m["recall"] == pytest.approx(200 / 3)
    assert m["f1"] == pytest.approx(200 / 3)
    assert (m["f1_PER"], m["f1_LOC"], m["f1_ORG"]) == (100.0, 100.0, 0.0)
    # strict IOB2: the PER chunk starting with I- is not an entity -> 1 of 2 predicted right
    # (LOC), 1 of 3 gold found.
    s = metrics.entity_scores(gold, pred, mode="strict", scheme="IOB2")
    assert s["precision"] == pytest.approx(50.0) and s["recall"] == pytest.approx(100 / 3)
    assert s["f1_PER"] == 0.0
    # IOB1 tags (CoNLL-2003 original): B- splits a run, so gold has PER(0-1), PER(2), LOC(4);
    # the prediction has PER(0-2), LOC(4): only LOC matches -> P = 1/2, R = 1/3.
    iob1 = metrics.entity_scores([["I-PER", "I-PER", "B-PER", "O", "I-LOC"]],
                                 [["I-PER", "I-PER", "I-PER", "O", "I-LOC"]])
    assert iob1["precision"] == pytest.approx(50.0) and iob1["recall"] == pytest.approx(100 / 3)


def test_entity_scores_equal_seqeval_on_random_tags():
    from seqeval.metrics import f1_score, precision_score, recall_score

    rng = np.random.default_rng(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    gold = [[str(t) for t in rng.choice(tags, rng.integers(1, 12))] for _ in range(50)]
    pred = [[str(t) if rng.random() < 0.7 else str(rng.choice(tags)) for t in g] for g in gold]
    m = metrics.entity_scores(gold, pred)
    assert m["f1"] == pytest.approx(100 * f1_score(gold, pred))
    assert m["precision"] == pytest.approx(100 * precision_score(gold, pred))
    assert m["recall"] == pytest.approx(100 * recall_score(gold, pred))


def test_tfds_conll2003_with_mock_data(tokenizer):
    import tensorflow_datasets as tfds

    def source(n, bad=False):
        def fn(*args, **kwargs):
            return [{"tokens": [b"Peter", b"visited", b"Berlin"],
                     "ner": [1, 0, 5] + ([0] if bad and i == 2 else [])} for i in range(n)]
        return fn

    c = load_config("ner.py", "model=tiny,source=tfds")
    with tfds.testing.mock_data(as_data_source_fn=source(5)):
        task = make_task(c, tokenizer)
        dev = task.load("dev")
    assert len(dev.records) == 5 and dev.labelled
    assert dev.records[0].tags == ["B-PER", "O", "B-LOC"]  # conll2003's IOB2 tag names
    with tfds.testing.mock_data(as_data_source_fn=source(4, bad=True)):
        with pytest.raises(DataError, match=r"conll2003\[train\]\[2\]: 3 tokens but 4 ner"):
            make_task(c, tokenizer)


# ---------------------------------------------------------------------------------- a run

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = make_data(str(tmp_path_factory.mktemp("conll")))
    workdir = str(tmp_path_factory.mktemp("ner"))
    c = load_config("ner.py", "model=tiny")
    c.data.dir, c.data.max_length = root, 32
    c.train.batch_size, c.train.eval_batch_size, c.train.epochs = 8, 16, 2.0
    c.train.export_hf = True
    c.optim.lr = 1e-3
    return c, workdir, main.run(c, workdir)


def test_ner_run_outputs(trained):
    c, workdir, results = trained
    assert set(results["final"]) == {"dev", "test"}
    assert {"precision", "recall", "f1", "f1_PER", "f1_LOC", "f1_ORG"} <= set(
        results["final"]["dev"])
    lines = open(os.path.join(workdir, "predictions/dev.conll")).read().split("\n\n")
    sentences = [s for s in lines if s.strip()]
    assert len(sentences) == 12
    task = make_task(c, init.load_tokenizer(c))
    gold = [s.tags for s in task.load("dev").records]
    assert [[line.split()[1] for line in s.splitlines()] for s in sentences] == gold
    rows = [json.loads(r) for r in open(os.path.join(workdir, "predictions/dev.jsonl"))]
    pred = [[line.split()[2] for line in s.splitlines()] for s in sentences]
    assert [r["prediction"] for r in rows] == pred
    assert metrics.entity_scores(gold, pred)["f1"] == pytest.approx(
        results["best"]["results"]["dev"]["f1"])


def test_ner_hf_export_predicts_the_same_tags(trained):
    c, workdir, _ = trained
    task = make_task(c, init.load_tokenizer(c))
    dev = task.load("dev")
    model = transformers.AutoModelForTokenClassification.from_pretrained(
        os.path.join(workdir, "hf")).eval()
    assert model.config.architectures == ["BertForTokenClassification"]
    assert model.config.id2label == dict(enumerate(task.labels))
    f = dev.features
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(f["input_ids"]).long(),
                       attention_mask=torch.tensor(f["attention_mask"]).long(),
                       token_type_ids=torch.tensor(f["token_type_ids"]).long()).logits
    hf_tags = task.word_predictions(dev, logits.argmax(-1).numpy())
    rows = [json.loads(r) for r in open(os.path.join(workdir, "predictions/dev.jsonl"))]
    assert hf_tags == [r["prediction"] for r in rows]


def test_max_length_beyond_position_table_is_a_config_error(tmp_path):
    root = make_data(str(tmp_path / "data"), n_train=8, n_dev=4)
    c = load_config("ner.py", "model=tiny")
    c.data.dir, c.data.max_length = root, 256  # tiny has 128 positions
    with pytest.raises(ValueError, match=r"config.data.max_length=256 exceeds"):
        main.run(c, str(tmp_path / "wd"))
