"""HF -> lmtransfer: every head, every weight file format, logits equal to torch's."""

import os

import numpy as np
import pytest
import torch

from lmtransfer import hf
from tests.helpers import random_batch, torch_outputs

HEADS = [  # (HF class, lmtransfer head, kwargs, [(lmtransfer field, torch field)])
    ("BertModel", None, {}, [("last_hidden_state", "last_hidden_state"),
                            ("pooler_output", "pooler_output")]),
    ("BertForMaskedLM", "mlm", {}, [("logits", "logits")]),
    ("BertForPreTraining", "pretraining", {}, [("logits", "prediction_logits"),
                                               ("seq_relationship_logits",
                                                "seq_relationship_logits")]),
    ("BertForNextSentencePrediction", "nsp", {}, [("seq_relationship_logits", "logits")]),
    ("BertForSequenceClassification", "classification", {"num_labels": 3}, [("logits", "logits")]),
    ("BertForSequenceClassification", "classification", {"num_labels": 1}, [("logits", "logits")]),
    ("BertForTokenClassification", "token_classification", {"num_labels": 5},
     [("logits", "logits")]),
    ("BertForQuestionAnswering", "qa", {}, [("start_logits", "start_logits"),
                                            ("end_logits", "end_logits")]),
]


def assert_matches_torch(model, params, torch_model, fields, tol=1e-4):
    ids, mask, types = random_batch(model.config.vocab_size)
    out = model.apply({"params": params}, ids, mask, types, deterministic=True)
    ref = torch_outputs(torch_model, ids, mask, types)
    for ours, theirs in fields:
        a, b = np.asarray(getattr(out, ours)), getattr(ref, theirs).numpy()
        if a.ndim == 3 or ours == "last_hidden_state":  # compare real tokens only
            a, b = a[mask.astype(bool)], b[mask.astype(bool)]
        assert a.shape == b.shape, ours
        err = np.abs(a - b).max()
        assert err <= tol, f"{ours}: max |diff| {err:.2e}"


@pytest.mark.parametrize("cls,head,kw,fields", HEADS, ids=lambda x: str(x))
def test_heads_match_torch(make_hf_model, cls, head, kw, fields):
    torch_model, path = make_hf_model(cls, **kw)
    model, params = hf.load_pretrained(path, head=head)
    assert model.num_labels == kw.get("num_labels", 2)
    assert_matches_torch(model, params, torch_model, fields)


def test_pytorch_bin_and_sharded_safetensors(make_hf_model, tmp_path):
    torch_model, path = make_hf_model("BertForSequenceClassification", num_labels=3)
    fields = [("logits", "logits")]
    bin_dir = tmp_path / "bin"
    torch_model.config.save_pretrained(bin_dir)
    torch.save(torch_model.state_dict(), bin_dir / "pytorch_model.bin")
    model, params = hf.load_pretrained(str(bin_dir), head="classification")
    assert_matches_torch(model, params, torch_model, fields)

    sharded = tmp_path / "sharded"
    torch_model.save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    model, params = hf.load_pretrained(str(sharded), head="classification")
    assert_matches_torch(model, params, torch_model, fields)


def test_flax_msgpack(make_hf_model, tmp_path):
    """HF's Flax layout: nested dict, Dense `kernel` [in, out], `embedding`, LayerNorm `scale`."""
    from flax import serialization, traverse_util

    torch_model, _ = make_hf_model("BertForQuestionAnswering")
    tree = {}
    for name, t in torch_model.state_dict().items():
        *mod, leaf = name.split(".")
        x = t.numpy()
        if leaf == "weight":
            leaf = ("embedding" if mod[-1].endswith("embeddings") else
                    "scale" if mod[-1] == "LayerNorm" else "kernel")
            x = x.T if leaf == "kernel" else x
        tree[tuple(mod + [leaf])] = x
    torch_model.config.save_pretrained(tmp_path)
    (tmp_path / "flax_model.msgpack").write_bytes(
        serialization.msgpack_serialize(traverse_util.unflatten_dict(tree)))
    model, params = hf.load_pretrained(str(tmp_path), head="qa")
    assert_matches_torch(model, params, torch_model, HEADS[-1][3])


def test_missing_head_is_initialised_fresh_and_unused_heads_dropped(make_hf_model, caplog):
    _, path = make_hf_model("BertForPreTraining")
    with caplog.at_level("INFO", logger="lmtransfer.hf"):
        model, params = hf.load_pretrained(path, head="token_classification", num_labels=7)
    assert params["classifier"]["kernel"].shape == (32, 7)
    text = caplog.text
    assert "initialised fresh" in text and "classifier/kernel" in text
    assert "not used" in text and "cls.seq_relationship.weight" in text
    assert "bert.pooler.dense.weight" in text  # token classification has no pooler in HF


def test_convert_cli_mode_for_heads(make_hf_model, tmp_path):
    """The `convert` mode: HF dir -> lmtransfer checkpoint -> HF dir, logits preserved."""
    import transformers

    from lmtransfer import checkpoints, main
    from tests.configs_loader import load_config

    for cls, head, kw, fields in HEADS[1:]:
        torch_model, path = make_hf_model(cls, **kw)
        workdir = str(tmp_path / f"{cls}{kw.get('num_labels', '')}")
        config = load_config("convert.py", f"head={head},source={path}")
        result = main.run(config, workdir)
        model, params, _ = checkpoints.load_model(workdir)
        assert model.head == head
        assert_matches_torch(model, params, torch_model, fields)
        reloaded, info = getattr(transformers, cls).from_pretrained(
            result["hf"], output_loading_info=True)
        assert not info["missing_keys"] and not info["unexpected_keys"], info
        assert_matches_torch(model, params, reloaded.eval(), fields)
        assert os.path.exists(os.path.join(workdir, "config.json"))
