"""Generative fine-tuning: rows and response masks, the response-only loss and likelihood
scoring against a by-hand computation with the model, packing, few-shot prompts, a run and
zero-shot eval through the CLI entry point, and bad input."""

import json
import os

import jax
import numpy as np
import pytest

from lmtransfer import hf, main, tokenization
from lmtransfer.data.tables import DataError
from lmtransfer.tasks import make_task
from tests import decoder_models as dm
from tests.configs_loader import load_config
from tests.glue_data import WORDS, make_glue


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    text = [" ".join(WORDS)] * 20 + ["Review: Sentiment: negative positive"] * 5
    tok = tokenization.train_tokenizer("bpe", text, 300, str(root / "tok"))
    model, params = dm.random_ours("gpt-tiny", "lm", vocab_size=384)
    src = hf.save_pretrained(model, params, str(root / "gpt"), tokenizer=tok)
    glue = make_glue(str(root / "glue"), n_train=48, n_dev=21, n_test=13)
    return dict(root=root, tok=tok, model=model, params=params, src=src, glue=glue)


def sst2_config(setup, **data):
    c = load_config("sft.py", f"model={setup['src']},task=sst2")
    c.data.dir, c.data.max_length = setup["glue"], 64
    for k, v in data.items():
        c.data[k] = v
    return c


def log_likelihood(model, params, prompt_ids, response_ids):
    """sum log P(response | prompt), by hand from one forward pass."""
    ids = np.array([prompt_ids + response_ids])
    logp = jax.nn.log_softmax(model.apply({"params": params}, ids).logits[0], -1)
    n = len(prompt_ids)
    return float(sum(logp[n + i - 1, t] for i, t in enumerate(response_ids)))


def test_rows_mask_the_response_and_scores_equal_by_hand(setup):
    tok = setup["tok"]
    task = make_task(sst2_config(setup), tok)
    dev = task.load("dev")
    assert len(dev) == 2 * len(dev.records)  # one row per (example, verbalizer)
    record = dev.records[3]
    f = {k: v[6:8] for k, v in dev.features.items()}  # record 3's two candidate rows
    prompt = tok(record["prompt"], add_special_tokens=False)["input_ids"]
    for j, word in enumerate(("negative", "positive")):
        response = tok(" " + word, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = len(prompt) + len(response)
        assert f["input_ids"][j, :n].tolist() == prompt + response
        assert f["response_mask"][j].tolist() == [0] * len(prompt) + [1] * len(response) + \
            [0] * (64 - n)
    from lmtransfer.train.step import make_eval_step

    batch = {**{k: v for k, v in dev.features.items() if k != "length"},
             "weights": np.ones(len(dev), np.float32)}
    preds, loss_sum, weight = make_eval_step(setup["model"], task)(setup["params"], batch)
    scores = task._scores(dev, jax.tree.map(np.asarray, preds))
    for j, word in enumerate(("negative", "positive")):
        response = tok(" " + word, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert scores[3, j] == pytest.approx(
            log_likelihood(setup["model"], setup["params"], prompt, response), abs=1e-4)
    gold_rows = dev.features["gold"].astype(bool)
    assert float(loss_sum) == pytest.approx(-float(scores[np.arange(len(dev.records)),
                                                          [r["gold"] for r in dev.records]].sum()),
                                            rel=1e-5)
    assert float(weight) == preds["tokens"][gold_rows].sum()


def test_train_rows_are_packed_with_restarting_positions(setup):
    task = make_task(sst2_config(setup), setup["tok"])
    train = task.load("train")
    f = train.features
    assert len(train) < 48  # 48 examples packed into fewer rows
    row = 0
    segments = f["segment_ids"][row]
    for k in range(1, segments.max() + 1):
        where = np.flatnonzero(segments == k)
        assert f["position_ids"][row, where].tolist() == list(range(len(where)))
        assert f["input_ids"][row, where[-1]] == setup["tok"].eos_token_id
        assert f["response_mask"][row, where[-1]] == 1 and f["response_mask"][row, where[0]] == 0
    total = sum(int(f["segment_ids"][r].max()) for r in range(len(train)))
    assert total == 48


def test_few_shot_prompts_hold_k_training_examples(setup, caplog):
    task = make_task(sst2_config(setup, shots=2, max_length=256), setup["tok"])
    prompt = task.load("dev").records[0]["prompt"]
    parts = prompt.split("\n\n")
    assert len(parts) == 3 and parts[0].startswith("Review: ") and \
        parts[0].rsplit(" ", 1)[1] in ("negative", "positive")
    assert not parts[2].endswith(("negative", "positive"))


def test_sft_run_and_zero_shot_eval(setup):
    c = sst2_config(setup)
    c.train.batch_size, c.train.eval_batch_size, c.train.epochs = 8, 16, 3.0
    c.optim.lr = 1e-3
    workdir = str(setup["root"] / "run")
    results = main.run(c, workdir)
    dev = results["final"]["dev"]
    assert {"accuracy", "response_loss", "response_perplexity"} <= set(dev)
    assert results["selection"]["metric"] == "accuracy"
    rows = [json.loads(r) for r in open(os.path.join(workdir, "predictions/dev.jsonl"))]
    assert len(rows) == 21 and all(r["prediction"] in ("negative", "positive") for r in rows)
    assert 100 * np.mean([r["prediction"] == r["gold"] for r in rows]) == pytest.approx(
        dev["accuracy"])
    zero = load_config("sft.py", f"model={setup['src']},task=sst2")
    zero.mode, zero.data.dir, zero.data.max_length = "eval", setup["glue"], 64
    out = main.run(zero, str(setup["root"] / "zero"))
    assert set(out) == {"dev"} and 0 <= out["dev"]["accuracy"] <= 100
    assert os.path.exists(setup["root"] / "zero" / "eval_results.json")


def test_prompt_response_files_and_bad_rows(setup, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"q": "2 + 2 =", "a": "4"}\n{"q": "3 + 3 =", "a": "6"}\n')
    c = load_config("sft.py", f"model={setup['src']}")
    c.data.files.train, c.data.files.dev = str(train), str(train)
    c.data.prompt_column, c.data.response_column = "q", "a"
    task = make_task(c, setup["tok"])
    assert task.main_metric == "loss" and not task.greater_is_better
    assert len(task.load("dev")) == 2
    train.write_text('{"q": "2 + 2 =", "a": "4"}\n{"q": "3 + 3 =", "a": ""}\n')
    with pytest.raises(DataError, match=r"train.jsonl:2: empty 'a'"):
        make_task(c, setup["tok"]).load("train")
    c.data.max_length = 3
    train.write_text('{"q": "2 + 2 =", "a": "negative positive"}\n')
    with pytest.raises(DataError, match=r"train.jsonl:1: the response 'negative positive' is "
                                        r"\d+ tokens with eos; it does not fit"):
        make_task(c, setup["tok"]).load("train")
    bad = sst2_config(setup, verbalizers=("a", "b", "c"))
    with pytest.raises(ValueError, match="verbalizers has 3 entries but the data has labels"):
        make_task(bad, setup["tok"])


def test_chat_template_wraps_the_prompt(setup, tmp_path):
    tok = tokenization.load_tokenizer(setup["src"])
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<bot>"
    task = make_task(sst2_config(setup), tok)
    assert task.chat
    record = task.load("dev").records[0]
    ids = task.load("dev").features["input_ids"][0].tolist()
    text = tok.decode(ids)
    assert text.startswith("<user>" + record["prompt"] + "<bot>negative")
    with pytest.raises(ValueError, match="chat_template='on' but the tokenizer"):
        make_task(sst2_config(setup, chat_template="on"), setup["tok"])
