"""Bad checkpoints fail with one clear error naming the problem; nothing loads partially."""

import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from lmtransfer import hf


def _copy(path, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(path, dst)
    return dst


def _edit_weights(dst, fn):
    file = dst / "model.safetensors"
    tensors = fn(load_file(str(file)))
    save_file(tensors, str(file), metadata={"format": "pt"})


def test_renamed_tensor(make_hf_model, tmp_path):
    _, path = make_hf_model("BertModel")
    dst = _copy(path, tmp_path)
    old = "encoder.layer.1.attention.self.key.weight"
    _edit_weights(dst, lambda t: {("encoder.layer.1.attention.self.kee.weight" if k == old
                                   else k): v for k, v in t.items()})
    with pytest.raises(ValueError) as e:
        hf.load_pretrained(str(dst))
    msg = str(e.value)
    assert "missing tensors (1): encoder.layer.1.attention.self.key.weight" in msg
    assert "unexpected tensors (1): encoder.layer.1.attention.self.kee.weight" in msg
    assert "model.safetensors" in msg


def test_wrong_shape(make_hf_model, tmp_path):
    _, path = make_hf_model("BertModel")
    dst = _copy(path, tmp_path)
    name = "encoder.layer.0.intermediate.dense.weight"
    _edit_weights(dst, lambda t: {**t, name: np.zeros((40, 32), np.float32)})
    with pytest.raises(ValueError, match=r"wrong shapes \(1\):\n  encoder.layer.0.intermediate"
                                         r".dense.weight: checkpoint \(40, 32\)"):
        hf.load_pretrained(str(dst))


def test_extra_layer_is_unexpected(make_hf_model, tmp_path):
    _, path = make_hf_model("BertModel")
    dst = _copy(path, tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["num_hidden_layers"] = 1
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"unexpected tensors \(16\): encoder\.layer\.1\."):
        hf.load_pretrained(str(dst))


def test_head_label_count_mismatch(make_hf_model):
    _, path = make_hf_model("BertForSequenceClassification", num_labels=3)
    with pytest.raises(ValueError, match=r"classifier.weight: checkpoint \(3, 32\)"):
        hf.load_pretrained(path, head="classification", num_labels=5)


def test_no_weights(make_hf_model, tmp_path):
    _, path = make_hf_model("BertModel")
    dst = _copy(path, tmp_path)
    (dst / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights found; expected one of "
                                                "model.safetensors"):
        hf.load_pretrained(str(dst))


def test_other_model_type(make_hf_model, tmp_path):
    _, path = make_hf_model("BertModel")
    dst = _copy(path, tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["model_type"] = "t5"
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="model_type 't5' is not supported; lmtransfer reads "
                                         "albert, bert, deberta-v2, distilbert, electra, gpt2"):
        hf.load_pretrained(str(dst))
    cfg["model_type"] = "gpt2"  # a BERT config labelled gpt2
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="config.json: a 'gpt2' config needs n_embd, n_layer, "
                                         "n_head; is this file from another model"):
        hf.load_pretrained(str(dst))


def test_not_a_checkpoint_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        hf.load_pretrained(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hf.load_pretrained(str(tmp_path))


def test_unknown_head():
    from lmtransfer.models import Bert, BertConfig

    with pytest.raises(ValueError, match="head='ner'"):
        Bert(BertConfig.preset("tiny"), head="ner")
    with pytest.raises(ValueError, match="hidden_act='gelu2'"):
        BertConfig.preset("tiny", hidden_act="gelu2")
    with pytest.raises(ValueError, match="dtype='bf16' is not a dtype"):
        BertConfig.preset("tiny", dtype="bf16")
