"""SQuAD: the official EM/F1 rules, windows over long contexts, span decoding across windows,
v2.0 null answers, a whole run and its HF export as BertForQuestionAnswering."""

import json
import os

import numpy as np
import pytest
import torch
import transformers

from lmtransfer import main, metrics
from lmtransfer.data import squad
from lmtransfer.data.tables import DataError
from lmtransfer.tasks import make_task
from lmtransfer.train import init
from tests.configs_loader import load_config

WORDS = ("river city bridge market north old stone tower music garden station winter "
         "harbour museum library forest").split()


def make_squad(path, n_articles=3, per_article=4, seed=0, version="1.1", impossible=0,
               context_words=60):
    """A SQuAD JSON file whose answers are named in the question ("Where is X?" -> X...)."""
    rng = np.random.default_rng(seed)
    data = []
    for a in range(n_articles):
        paragraphs = []
        for p in range(2):
            words = [str(w) for w in rng.choice(WORDS, context_words)]
            qas = []
            for q in range(per_article):
                k = int(rng.integers(0, context_words - 3))
                answer = " ".join(words[k:k + 2])
                start = len(" ".join(words[:k])) + (1 if k else 0)
                qa = {"id": f"a{a}p{p}q{q}", "question": f"What follows {words[k - 1]}?",
                      "answers": [{"text": answer, "answer_start": start}]}
                if version == "2.0":
                    qa["is_impossible"] = q < impossible
                    if qa["is_impossible"]:
                        qa["answers"] = []
                qas.append(qa)
            paragraphs.append({"context": " ".join(words), "qas": qas})
        data.append({"title": f"t{a}", "paragraphs": paragraphs})
    with open(path, "w") as f:
        json.dump({"version": version, "data": data}, f)
    return str(path)


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return init.tokenization.load_tokenizer(minilm_path)


def qa_task(tokenizer, root, **data):
    c = load_config("squad.py", "model=tiny,layout=dev_split")
    c.data.dir = str(root)
    c.data.files.train = c.data.files.dev = "squad.json"
    c.data.articles.train, c.data.articles.dev = "0:2", "2:"
    for k, v in data.items():
        c.data[k] = v
    return make_task(c, tokenizer)


# ---------------------------------------------------------------------------------- metrics

def test_official_squad_rules_by_hand():
    assert metrics.normalize_answer("The  Eiffel-Tower, in Paris!") == "eiffeltower in paris"
    assert metrics.normalize_answer("an apple a day") == "apple day"
    assert metrics.squad_exact("the Eiffel Tower", "Eiffel Tower.") == 1
    # F1: pred "Eiffel" vs gold "Eiffel Tower": P = 1, R = 1/2 -> 2/3.
    assert metrics.squad_f1("Eiffel", "Eiffel Tower") == pytest.approx(2 / 3)
    # tokens count as a multiset: pred "b b", gold "b c" have 1 in common: P = R = 1/2.
    assert metrics.squad_f1("b b", "b c") == pytest.approx(0.5)
    assert metrics.squad_f1("", "Eiffel") == 0.0
    assert metrics.squad_f1("", "", version="2.0") == 1.0
    golds = {"q1": ["Eiffel Tower", "the tower"], "q2": ["1889"], "q3": ["Paris"]}
    preds = {"q1": "tower", "q2": "in 1889"}  # q3 missing: scores 0
    got = metrics.squad_scores(golds, preds)
    # q1 equals "the tower" once normalised (EM 1, F1 1); q2: EM 0, F1 2/3; q3: 0.
    assert got["exact_match"] == pytest.approx(100 / 3)
    assert got["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)


def test_v2_no_answer_and_best_threshold_by_hand():
    golds = {"a": ["x y"], "b": [], "c": ["z"], "d": []}
    spans = {"a": "x y", "b": "w", "c": "q", "d": "v"}
    odds = {"a": -3.0, "b": 1.0, "c": -1.0, "d": 2.0}
    # v2 gold of an unanswerable question is "": "" scores 1, any text 0.
    assert metrics.squad_scores(golds, {"a": "x y", "b": "", "c": "", "d": "v"}, "2.0") == {
        "exact_match": 50.0, "f1": 50.0}
    # Threshold scan: start all "" (2 right); turning on a (+1) -> 3; c (+0); b (-1); d (-1).
    best = metrics.best_null_threshold(golds, spans, odds)
    assert best["best_exact_match"] == pytest.approx(75.0)
    assert best["best_exact_match_thresh"] == -3.0
    assert best["best_f1"] == pytest.approx(75.0)


# ---------------------------------------------------------------------------------- reading

def test_read_squad_article_ranges_and_errors(tmp_path):
    path = make_squad(tmp_path / "s.json", n_articles=5)
    qs, version = squad.read_squad(path, "1:3")
    assert version == "1.1" and {q["id"][:2] for q in qs} == {"a1", "a2"}
    assert all(q["context"][q["starts"][0]:].startswith(q["answers"][0]) for q in qs)
    assert len(squad.read_squad(path, "-1:")[0]) == 8
    with pytest.raises(ValueError, match=r"config.data.articles='x': use 'start:stop'"):
        squad.read_squad(path, "x", key="config.data.articles")
    with pytest.raises(DataError, match=r"no questions in articles 9:"):
        squad.read_squad(path, "9:")
    (tmp_path / "bad.json").write_text('{"data": [')
    with pytest.raises(DataError, match=r"bad.json: not a UTF-8 SQuAD JSON"):
        squad.read_squad(str(tmp_path / "bad.json"))


def test_training_question_without_answer_is_an_error(tokenizer, tmp_path):
    path = make_squad(tmp_path / "squad.json")
    doc = json.load(open(path))
    doc["data"][1]["paragraphs"][0]["qas"][2]["answers"] = []
    json.dump(doc, open(path, "w"))
    with pytest.raises(DataError, match=r"data\[1\].paragraphs\[0\].qas\[2\]: a training "):
        qa_task(tokenizer, tmp_path).load("train")


# ---------------------------------------------------------------------------------- windows

@pytest.fixture(scope="module")
def long_task(tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    make_squad(root / "squad.json", context_words=150, per_article=6)
    return qa_task(tokenizer, root, max_length=48, doc_stride=16)


def test_windows_cover_long_contexts_and_targets_match_answers(long_task):
    split = long_task.load("train")
    assert len(split) > 3 * len(split.records)  # several windows per question
    f = split.features
    seen = set()
    for row, e in enumerate(split.examples):
        q = split.records[e["record"]]
        s, t = f["start_positions"][row], f["end_positions"][row]
        if s:
            text = q["context"][e["offsets"][s][0]:e["offsets"][t][1]]
            assert text == q["answers"][0]
            seen.add(e["record"])
        else:  # the window does not hold the whole answer
            lo, hi = e["offsets"][e["offsets"][:, 0] >= 0][[0, -1]]
            start = q["starts"][0]
            assert not (lo[0] <= start and start + len(q["answers"][0]) <= hi[1])
    assert seen == set(range(len(split.records)))  # every answer is inside some window
    assert (f["length"] <= 48).all()


def test_span_decoding_across_windows(long_task):
    split = long_task.load("train")
    f, T = split.features, split.features["input_ids"].shape[1]
    start = np.full((len(split), T), -5.0, np.float32)
    end = np.full((len(split), T), -5.0, np.float32)
    decoys, too_long = set(), 0
    for row, e in enumerate(split.examples):
        s, t = f["start_positions"][row], f["end_positions"][row]
        ctx = np.flatnonzero(e["offsets"][:, 0] >= 0)
        if s:
            start[row, s], end[row, t] = 4.0, 4.0  # the gold span: 8
        elif e["record"] not in decoys:  # a weaker wrong span in another window: 6
            start[row, ctx[0]], end[row, ctx[1]] = 3.0, 3.0
            decoys.add(e["record"])
        elif len(ctx) > 30:  # the best sum (18) but longer than max_answer_length=30
            start[row, ctx[0]], end[row, ctx[-1]] = 9.0, 9.0
            too_long += 1
    assert decoys and too_long
    decoded = long_task.decode(split, {"start_logits": start, "end_logits": end})
    assert {q["id"]: decoded[q["id"]]["text"] for q in split.records} == {
        q["id"]: q["answers"][0] for q in split.records}
    assert long_task.evaluate(split, {"start_logits": start, "end_logits": end}) == {
        "exact_match": 100.0, "f1": 100.0, "questions": len(split.records)}


def test_v2_null_answers(tokenizer, tmp_path):
    make_squad(tmp_path / "squad.json", version="2.0", impossible=2)
    task = qa_task(tokenizer, tmp_path)
    split = task.load("dev")
    assert task.versions["dev"] == "2.0"
    f = split.features
    impossible = np.array([split.records[e["record"]]["impossible"] for e in split.examples])
    assert not f["start_positions"][impossible].any() and not f["end_positions"][impossible].any()
    T = f["input_ids"].shape[1]
    start, end = np.zeros((len(split), T), np.float32), np.zeros((len(split), T), np.float32)
    for row in range(len(split)):
        s, t = f["start_positions"][row], f["end_positions"][row]
        if impossible[row]:
            start[row, 0] = end[row, 0] = 3.0  # null wins
            ctx = np.flatnonzero(split.examples[row]["offsets"][:, 0] >= 0)
            start[row, ctx[0]], end[row, ctx[0]] = 2.0, 2.0
        else:
            start[row, s], end[row, t] = 5.0, 5.0
    preds = {"start_logits": start, "end_logits": end}
    decoded = task.decode(split, preds)
    for q in split.records:
        assert decoded[q["id"]]["text"] == ("" if q["impossible"] else q["answers"][0])
    m = task.evaluate(split, preds)
    assert m["exact_match"] == 100.0 and m["f1"] == 100.0 and m["best_f1"] == 100.0
    task.data.null_threshold = 5.0  # a high threshold answers every question
    assert task.evaluate(split, preds)["exact_match"] < 100.0


def test_tfds_squad_with_mock_data(tokenizer):
    import tensorflow_datasets as tfds

    c = load_config("squad.py", "model=tiny,source=tfds")
    c.data.max_length = 64
    c.data.doc_stride = 16
    with tfds.testing.mock_data(num_examples=4, policy=tfds.testing.MockPolicy.USE_CODE):
        task = make_task(c, tokenizer)
        dev = task.load("dev")
    assert len(dev.records) == 4 and len(dev) >= 4


# ---------------------------------------------------------------------------------- a run

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("squad")
    make_squad(root / "squad.json", n_articles=3, per_article=6)
    workdir = str(tmp_path_factory.mktemp("qa"))
    c = load_config("squad.py", "model=tiny,layout=dev_split")
    c.data.dir = str(root)
    c.data.files.train = c.data.files.dev = "squad.json"
    c.data.articles.train, c.data.articles.dev = "0:2", "2:"
    c.data.max_length, c.data.doc_stride = 64, 16
    c.train.batch_size, c.train.eval_batch_size, c.train.epochs = 8, 16, 2.0
    c.train.export_hf = True
    c.optim.lr = 1e-3
    return c, workdir, main.run(c, workdir)


def test_qa_run_outputs(trained):
    _, workdir, results = trained
    dev = results["final"]["dev"]
    assert {"exact_match", "f1", "loss"} <= set(dev)
    preds = json.load(open(os.path.join(workdir, "predictions/dev.predictions.json")))
    assert len(preds) == 12 and all(isinstance(v, str) for v in preds.values())
    rows = [json.loads(r) for r in open(os.path.join(workdir, "predictions/dev.jsonl"))]
    golds = {r["id"]: r["gold"] for r in rows}
    assert metrics.squad_scores(golds, preds)["f1"] == pytest.approx(
        results["best"]["results"]["dev"]["f1"])


def test_qa_hf_export_gives_the_same_logits(trained):
    c, workdir, _ = trained
    from lmtransfer import checkpoints
    from lmtransfer.train.step import make_eval_step

    task = make_task(c, init.load_tokenizer(c))
    dev = task.load("dev")
    model = transformers.AutoModelForQuestionAnswering.from_pretrained(
        os.path.join(workdir, "hf")).eval()
    assert model.config.architectures == ["BertForQuestionAnswering"]
    f = {k: v for k, v in dev.features.items() if k != "length"}
    with torch.no_grad():
        out = model(**{k: torch.tensor(f[k]).long()
                       for k in ("input_ids", "attention_mask", "token_type_ids")})
    ours_model, params, _ = checkpoints.load_model(workdir)
    preds, _, _ = make_eval_step(ours_model, task)(params, {**f, "weights": np.ones(len(dev))})
    np.testing.assert_allclose(out.start_logits.numpy(), preds["start_logits"], atol=1e-4)
    np.testing.assert_allclose(out.end_logits.numpy(), preds["end_logits"], atol=1e-4)
    hf_decoded = task.decode(dev, {"start_logits": out.start_logits.numpy(),
                                   "end_logits": out.end_logits.numpy()})
    ours = json.load(open(os.path.join(workdir, "predictions/dev.predictions.json")))
    assert {k: v["text"] for k, v in hf_decoded.items()} == ours
