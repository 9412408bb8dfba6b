"""Decoders fine-tuned with the task plug-ins BERT uses: GLUE classification from an HF Llama
dir, CoNLL NER from an HF GPT-2 dir, SQuAD from one of our GPT workdirs; each run's HF export
predicts what the run predicted. Tokenizers without a pad token need config.model.pad_token."""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers

from lmtransfer import checkpoints, hf, main, tokenization
from lmtransfer.tasks import make_task
from lmtransfer.train import init
from lmtransfer.train.step import make_eval_step
from tests import decoder_models as dm
from tests.configs_loader import load_config
from tests.glue_data import WORDS, make_glue


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A byte-level BPE tokenizer without a pad token (like GPT-2's and Llama's)."""
    root = tmp_path_factory.mktemp("tok")
    text = [" ".join(WORDS)] * 20 + ["What follows harbour museum library forest?"] * 5
    tok = tokenization.train_tokenizer("bpe", text, 300, str(root / "with_pad"))
    tok.pad_token = None
    tok.save_pretrained(str(root / "no_pad"))
    return str(root / "no_pad")


def decoder_dir(tmp_path, preset, bpe, as_workdir=False):
    """A random decoder with the BPE tokenizer: an HF dir, or an lmtransfer workdir like
    a pretraining run leaves (checkpoint + tokenizer/)."""
    model, params = dm.random_ours(preset, "lm", vocab_size=384)
    if not as_workdir:
        return hf.save_pretrained(model, params, str(tmp_path / preset), tokenizer=bpe)
    workdir = str(tmp_path / f"{preset}-run")
    checkpoints.save_model(workdir, 0, model, params)
    tokenization.load_tokenizer(bpe).save_pretrained(os.path.join(workdir, "tokenizer"))
    return workdir


def run(config, tmp_path, name):
    config.train.batch_size, config.train.eval_batch_size, config.train.epochs = 8, 16, 2.0
    config.train.export_hf, config.optim.lr = True, 1e-3
    config.model.pad_token = "<|endoftext|>"
    workdir = str(tmp_path / name)
    return workdir, main.run(config, workdir)


def test_glue_from_hf_llama_dir_and_its_export(tmp_path, bpe):
    c = load_config("glue.py", f"task=sst2,model={decoder_dir(tmp_path, 'llama-tiny', bpe)}")
    c.data.dir = make_glue(str(tmp_path / "glue"), n_train=48, n_dev=21, n_test=13)
    workdir, results = run(c, tmp_path, "sst2")
    assert {"accuracy", "loss"} <= set(results["final"]["dev"])
    torch_model = transformers.AutoModelForSequenceClassification.from_pretrained(
        os.path.join(workdir, "hf")).eval()
    assert torch_model.config.architectures == ["LlamaForSequenceClassification"]
    tok = init.load_tokenizer(c)
    assert torch_model.config.pad_token_id == tok.pad_token_id
    dev = make_task(c, tok).load("dev")
    with torch.no_grad():
        logits = torch_model(input_ids=torch.tensor(dev.features["input_ids"]).long(),
                             attention_mask=torch.tensor(dev.features["attention_mask"])).logits
    rows = [json.loads(r) for r in open(os.path.join(workdir, "predictions/dev.jsonl"))]
    np.testing.assert_allclose(logits.numpy(), [r["logits"] for r in rows], atol=1e-4)


def test_ner_from_hf_gpt2_dir_and_its_export(tmp_path, bpe):
    from tests.test_ner import make_data

    c = load_config("ner.py", f"model={decoder_dir(tmp_path, 'gpt-tiny', bpe)}")
    c.data.dir, c.data.max_length = make_data(str(tmp_path / "conll")), 32
    workdir, results = run(c, tmp_path, "ner")
    assert {"precision", "recall", "f1"} <= set(results["final"]["dev"])
    task = make_task(c, init.load_tokenizer(c))
    assert task.prefix == [] and task.suffix == []  # GPT-2 adds no special tokens
    dev = task.load("dev")
    torch_model = transformers.AutoModelForTokenClassification.from_pretrained(
        os.path.join(workdir, "hf")).eval()
    assert torch_model.config.architectures == ["GPT2ForTokenClassification"]
    with torch.no_grad():
        logits = torch_model(input_ids=torch.tensor(dev.features["input_ids"]).long(),
                             attention_mask=torch.tensor(dev.features["attention_mask"])).logits
    rows = [json.loads(r) for r in open(os.path.join(workdir, "predictions/dev.jsonl"))]
    assert task.word_predictions(dev, logits.argmax(-1).numpy()) == [r["prediction"]
                                                                      for r in rows]


def test_squad_from_our_gpt_workdir_and_its_export(tmp_path, bpe):
    from tests.test_qa import make_squad

    source = decoder_dir(tmp_path, "gpt-tiny", bpe, as_workdir=True)
    c = load_config("squad.py", f"model={source},layout=dev_split")
    root = tmp_path / "squad"
    root.mkdir()
    make_squad(root / "squad.json", n_articles=3, per_article=6)
    c.data.dir = str(root)
    c.data.files.train = c.data.files.dev = "squad.json"
    c.data.articles.train, c.data.articles.dev = "0:2", "2:"
    c.data.max_length, c.data.doc_stride = 64, 16
    workdir, results = run(c, tmp_path, "qa")
    assert {"exact_match", "f1"} <= set(results["final"]["dev"])
    task = make_task(c, init.load_tokenizer(c))
    dev = task.load("dev")
    torch_model = transformers.AutoModelForQuestionAnswering.from_pretrained(
        os.path.join(workdir, "hf")).eval()
    assert torch_model.config.architectures == ["GPT2ForQuestionAnswering"]
    f = {k: v for k, v in dev.features.items() if k != "length"}
    with torch.no_grad():
        out = torch_model(input_ids=torch.tensor(f["input_ids"]).long(),
                          attention_mask=torch.tensor(f["attention_mask"]).long())
    model, params, _ = checkpoints.load_model(workdir)
    preds, _, _ = make_eval_step(model, task)(params, {**f, "weights": np.ones(len(dev))})
    mask = f["attention_mask"].astype(bool)
    np.testing.assert_allclose(out.start_logits.numpy()[mask], preds["start_logits"][mask],
                               atol=1e-4)


def test_tokenizer_without_pad_token_needs_config_key(tmp_path, bpe):
    c = load_config("glue.py", f"task=sst2,model={decoder_dir(tmp_path, 'gpt-tiny', bpe)}")
    with pytest.raises(ValueError, match=r"has no pad token; set config.model.pad_token to one "
                                         r"of its tokens \(e.g. its eos token '<\|endoftext\|>'"):
        init.load_tokenizer(c)
    c.model.pad_token = "<pad>"
    with pytest.raises(ValueError, match=r"config.model.pad_token='<pad>' is not a token"):
        init.load_tokenizer(c)


def test_encoder_checkpoint_has_no_lm_head(tmp_path):
    from types import SimpleNamespace

    from lmtransfer import sharding
    from tests.test_faults import _checkpoint

    c = load_config("generate.py", f"model={_checkpoint(tmp_path / 'bert', 'tiny', None)}")
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    with pytest.raises(ValueError, match=r"holds a BERT model, which has no 'lm' head"):
        init.build(c, SimpleNamespace(head="lm", num_labels=0), None, mesh,
                   sharding.DEFAULT_RULES)
