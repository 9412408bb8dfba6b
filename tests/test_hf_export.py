"""lmtransfer -> HF: transformers loads the export with no missing/unexpected keys and equal
outputs; export -> import gives back identical params."""

import json

import jax
import numpy as np
import pytest
import transformers

from lmtransfer import hf
from lmtransfer.models import Bert, BertConfig
from tests.helpers import perturbed_init
from tests.test_hf_import import HEADS, assert_matches_torch


def random_model(head, num_labels=2, seed=0):
    config = BertConfig.preset("tiny", hidden_act="gelu")
    model = Bert(config, head=head, num_labels=num_labels)
    return model, perturbed_init(model, seed)


@pytest.mark.parametrize("cls,head,kw,fields", HEADS, ids=lambda x: str(x))
def test_export_loads_in_transformers(tmp_path, minilm_path, cls, head, kw, fields):
    model, params = random_model(head, kw.get("num_labels", 2))
    id2label = ({i: f"tag{i}" for i in range(model.num_labels)}
                if head in ("classification", "token_classification") else None)
    out = hf.save_pretrained(model, params, str(tmp_path / "export"), tokenizer=minilm_path,
                             id2label=id2label)
    torch_model, info = getattr(transformers, cls).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and \
        not info["mismatched_keys"], info
    assert_matches_torch(model, params, torch_model.eval(), fields)
    cfg = json.loads((tmp_path / "export" / "config.json").read_text())
    assert cfg["architectures"] == [cls]
    if id2label:
        assert torch_model.config.id2label == id2label
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok("hello world")["input_ids"] == [101, 7592, 2088, 102]


@pytest.mark.parametrize("head", [None, "mlm", "pretraining", "classification", "qa"])
def test_export_import_identical_params(tmp_path, head):
    model, params = random_model(head)
    out = hf.save_pretrained(model, params, str(tmp_path / "export"))
    model2, params2 = hf.load_pretrained(out, head=head)
    assert model2.config == model.config
    flat1 = jax.tree_util.tree_flatten_with_path(params)[0]
    flat2 = dict(jax.tree_util.tree_flatten_with_path(params2)[0])
    assert len(flat1) == len(flat2)
    for path, x in flat1:
        np.testing.assert_array_equal(np.asarray(x), np.asarray(flat2[path]), err_msg=str(path))


def test_export_is_atomic(tmp_path, monkeypatch):
    """A failure mid-export leaves neither a partial directory nor temp files behind."""
    model, params = random_model(None)
    target = tmp_path / "export"

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(hf, "hf_config", boom)
    with pytest.raises(RuntimeError):
        hf.save_pretrained(model, params, str(target))
    assert list(tmp_path.iterdir()) == []
