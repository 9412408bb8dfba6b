"""Tasks on other families, end to end through `main.run`: a tiny random RoBERTa with its
byte-level BPE tokenizer and a DeBERTa-v3 with its SentencePiece (Unigram) one, in one HF dir
each as a hub checkpoint is. CoNLL NER from it (the HF export predicts the same tags in
transformers), then SQuAD from that lmtransfer workdir (`init_from` restores the family)."""

import json
import os

import pytest
import torch
import transformers

from lmtransfer import checkpoints, main
from lmtransfer.tasks import make_task
from lmtransfer.train import init
from tests import encoder_models as em
from tests.configs_loader import load_config
from tests.test_family_tokenizers import _deberta_v3, _roberta
from tests.test_ner import make_data
from tests.test_qa import make_squad

FAMILIES = {"roberta": (_roberta, "Roberta"), "deberta-v2": (_deberta_v3, "DebertaV2")}


def _checkpoint(tmp_path, family):
    build, _ = FAMILIES[family]
    tok = build()
    path = str(tmp_path / family)
    em.make_torch(family, None, vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                  max_position_embeddings=72).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_ner_then_squad_from_its_workdir(family, tmp_path):
    source = _checkpoint(tmp_path, family)
    ner = load_config("ner.py", "model=tiny")
    ner.init_from = source
    ner.data.dir, ner.data.max_length = make_data(str(tmp_path / "conll"), 24, 8), 32
    ner.train.batch_size, ner.train.eval_batch_size, ner.train.epochs = 8, 16, 1.0
    ner.train.export_hf, ner.optim.lr = True, 1e-3
    results = main.run(ner, str(tmp_path / "ner"))
    assert 0 <= results["final"]["dev"]["f1"] <= 100

    # The HF export is the family's token-classification class and predicts the same tags.
    task = make_task(ner, init.load_tokenizer(ner))
    dev = task.load("dev")
    hf_model = transformers.AutoModelForTokenClassification.from_pretrained(
        str(tmp_path / "ner" / "hf")).eval()
    assert hf_model.config.architectures == [FAMILIES[family][1] + "ForTokenClassification"]
    with torch.no_grad():
        logits = hf_model(input_ids=torch.tensor(dev.features["input_ids"]).long(),
                          attention_mask=torch.tensor(dev.features["attention_mask"]).long()
                          ).logits
    rows = [json.loads(r) for r in open(tmp_path / "ner" / "predictions" / "dev.jsonl")]
    assert task.word_predictions(dev, logits.argmax(-1).numpy()) == [r["prediction"]
                                                                    for r in rows]

    # SQuAD from the NER workdir: the same family, the encoder carried over, a fresh QA head.
    root = tmp_path / "squad"
    root.mkdir()
    make_squad(root / "squad.json", n_articles=2, per_article=4, context_words=30)
    qa = load_config("squad.py", "model=tiny,layout=dev_split")
    qa.init_from = str(tmp_path / "ner")
    qa.data.dir = str(root)
    qa.data.files.train = qa.data.files.dev = "squad.json"
    qa.data.articles.train, qa.data.articles.dev = "0:1", "1:"
    qa.data.max_length, qa.data.doc_stride = 64, 16
    qa.train.batch_size, qa.train.eval_batch_size, qa.train.epochs = 8, 16, 1.0
    results = main.run(qa, str(tmp_path / "qa"))
    assert {"exact_match", "f1"} <= set(results["final"]["dev"])
    model, _, meta = checkpoints.load_model(str(tmp_path / "qa"))
    assert meta["arch"] == family.replace("-", "_") and model.head == "qa"
    assert model.config == checkpoints.load_model(str(tmp_path / "ner"))[0].config
    assert os.path.exists(tmp_path / "qa" / "predictions" / "dev.predictions.json")


@pytest.mark.parametrize("family", ["albert", "modernbert"])
def test_convert_mode_round_trips_other_families(family, tmp_path):
    """HF dir -> lmtransfer checkpoint -> HF dir (the convert mode) is the identity."""
    import numpy as np

    from lmtransfer import convert

    torch_model = em.make_torch(family, "classification")
    torch_model.save_pretrained(tmp_path / "src")
    c = load_config("convert.py", f"head=classification,source={tmp_path / 'src'}")  # 8-device mesh
    result = convert.run(c, str(tmp_path / "wd"))
    again = type(torch_model).from_pretrained(result["hf"])
    want, got = torch_model.state_dict(), again.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(want[k].numpy(), got[k].numpy(), err_msg=k)
