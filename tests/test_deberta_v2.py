"""DeBERTa-v2/v3 <-> HF DebertaV2*: import parity with torch for every head, export loads
strictly in transformers with equal outputs, export -> import is bit-identical, the config
variants (unshared position projections, c2p/p2c alone, absolute positions, token types,
factorized embeddings, both MLM layouts, no buckets, no relative attention), and refusals."""

import dataclasses
import json

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from lmtransfer import hf
from lmtransfer.hf import deberta_v2 as hf_deberta
from lmtransfer.models import ARCHS
from lmtransfer.models.deberta_v2 import DebertaV2, DebertaV2Config
from tests import encoder_models as em
from tests.helpers import perturbed_init

F = "deberta-v2"
HEADS = (None, "mlm", "classification", "token_classification", "qa")
TOL = 1e-4
# Base-model variants: each turns on code paths the default (v3-style) tiny config does not.
VARIANTS = {
    "c2p_unshared_abs_types_factorized": dict(
        share_att_key=False, pos_att_type=["c2p"], position_biased_input=True,
        type_vocab_size=2, embedding_size=16),
    "p2c_unshared": dict(share_att_key=False, pos_att_type=["p2c"]),
    "no_buckets_clipped": dict(position_buckets=-1, max_relative_positions=6,
                               norm_rel_ebd="none"),
    "no_relative_attention": dict(relative_attention=False),
    "string_pos_att_type": dict(pos_att_type="c2p|p2c", share_att_key=False),
}


def import_torch(tmp_path, head, num_labels=3, **overrides):
    torch_model = em.make_torch(F, head, num_labels=num_labels, **overrides)
    torch_model.save_pretrained(tmp_path / "hf")
    model, params = hf.load_pretrained(str(tmp_path / "hf"), head=head)
    return torch_model, model, params


def assert_params_equal(a, b):
    flat_a, flat_b = (dict(jax.tree_util.tree_flatten_with_path(p)[0]) for p in (a, b))
    assert flat_a.keys() == flat_b.keys()
    for path, x in flat_a.items():
        np.testing.assert_array_equal(np.asarray(x), np.asarray(flat_b[path]), err_msg=str(path))


@pytest.mark.parametrize("head", HEADS)
def test_import_matches_torch(tmp_path, head):
    torch_model, model, params = import_torch(tmp_path, head)
    assert isinstance(model, DebertaV2) and model.config.position_buckets == 8
    errors = em.max_errors(F, model, params, torch_model, head, *em.batch(F))
    print(head, errors)
    assert max(errors.values()) < TOL, errors


def random_model(head, num_labels=3, **overrides):
    config = hf_deberta.config_from_hf(em.hf_config(F, num_labels, **overrides).to_dict())
    model = DebertaV2(config, head=head, num_labels=2 if head == "qa" else num_labels)
    return model, perturbed_init(model)


@pytest.mark.parametrize("head", HEADS)
def test_export_loads_in_transformers_and_reimports(tmp_path, head):
    model, params = random_model(head)
    assert em.check_export(F, model, params, head, tmp_path / "export") < TOL
    cfg = json.loads((tmp_path / "export" / "config.json").read_text())
    assert cfg["architectures"] == [em.hf_class(F, head)]
    model2, params2 = hf.load_pretrained(str(tmp_path / "export"), head=head)
    assert model2.config == model.config
    assert_params_equal(params, params2)
    # A checkpoint rebuilds the model from its config's fields (JSON round trip).
    cls, config_cls = ARCHS[model.arch]
    fields = json.loads(json.dumps(dataclasses.asdict(model.config)))
    assert cls(config_cls(**fields), head=head).config == model.config


def test_regression_head(tmp_path):
    torch_model, model, params = import_torch(tmp_path, "classification", num_labels=1)
    assert model.num_labels == 1
    ids, mask, types = em.batch(F)
    errors = em.max_errors(F, model, params, torch_model, "classification", ids, mask, types)
    assert max(errors.values()) < TOL, errors


def _compare_with_types(model, params, torch_model):
    """Max |Δ| of the base model over real tokens, with sentence-pair token types."""
    ids, mask, _ = em.batch(F)
    types = ((np.arange(ids.shape[1])[None] >= 4) & (mask == 1)).astype(np.int32)
    out = model.apply({"params": params}, ids, mask, types, deterministic=True)
    with torch.no_grad():
        ref = torch_model(input_ids=torch.tensor(ids).long(),
                          attention_mask=torch.tensor(mask).long(),
                          token_type_ids=torch.tensor(types).long()).last_hidden_state.numpy()
    real = mask.astype(bool)
    return float(np.abs(np.asarray(out.last_hidden_state)[real] - ref[real]).max())


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_import_and_export(tmp_path, variant):
    kw = VARIANTS[variant]
    torch_model, model, params = import_torch(tmp_path, None, **kw)
    assert _compare_with_types(model, params, torch_model) < TOL
    ours = perturbed_init(model, seed=1)
    assert em.check_export(F, model, ours, None, tmp_path / "export") < TOL
    assert_params_equal(ours, hf.load_pretrained(str(tmp_path / "export"))[1])


@pytest.mark.parametrize("legacy,embedding_size", [(True, 16), (False, None)])
def test_mlm_layouts(tmp_path, legacy, embedding_size):
    """legacy: cls.predictions (transform to embedding_size); else lm_predictions.lm_head."""
    kw = dict(legacy=legacy, embedding_size=embedding_size or 32)
    torch_model, model, params = import_torch(tmp_path, "mlm", **kw)
    assert ("mlm" if legacy else "lm_predictions") in params
    errors = em.max_errors(F, model, params, torch_model, "mlm", *em.batch(F))
    assert max(errors.values()) < TOL, errors
    ours = perturbed_init(model, seed=2)
    assert em.check_export(F, model, ours, "mlm", tmp_path / "export") < TOL
    assert_params_equal(ours, hf.load_pretrained(str(tmp_path / "export"), head="mlm")[1])


def test_other_mlm_layout_is_dropped_and_head_made_fresh(tmp_path):
    """A legacy=False checkpoint read as legacy (HF's default) drops lm_predictions and
    creates cls.predictions fresh, as transformers does."""
    em.make_torch(F, "mlm", legacy=False).save_pretrained(tmp_path / "hf")
    model, params = hf.load_pretrained(str(tmp_path / "hf"), head="mlm", legacy=True)
    assert "mlm" in params and "lm_predictions" not in params


def test_packed_segments_equal_separate_rows():
    """Relative positions are shift-invariant, so packed documents equal separate rows."""
    model, params = random_model(None)
    ids, _, _ = em.batch(F)
    a, b = ids[0, :7], ids[1, :5]
    packed = np.concatenate([a, b])[None]
    segments = np.array([[1] * 7 + [2] * 5])
    out = model.apply({"params": params}, packed, segment_ids=segments).last_hidden_state
    alone = [model.apply({"params": params}, x[None]).last_hidden_state[0] for x in (a, b)]
    np.testing.assert_allclose(np.asarray(out[0]), np.concatenate(alone), atol=1e-5)


def test_explicit_attention_and_training_dropout():
    model, params = random_model("classification", hidden_dropout_prob=0.0)
    ids, mask, _ = em.batch(F)
    explicit = DebertaV2(model.config.replace(attention="explicit"), head="classification",
                         num_labels=3)
    np.testing.assert_allclose(
        np.asarray(model.apply({"params": params}, ids, mask).logits),
        np.asarray(explicit.apply({"params": params}, ids, mask).logits), atol=1e-5)
    rngs = {"dropout": jax.random.key(0)}
    train = [model.apply({"params": params}, ids, mask, deterministic=False,
                         rngs={"dropout": jax.random.key(s)}).logits for s in (0, 1)]
    assert not np.allclose(train[0], train[1])  # attention-probability dropout is active
    again = model.apply({"params": params}, ids, mask, deterministic=False, rngs=rngs).logits
    np.testing.assert_array_equal(np.asarray(train[0]), np.asarray(again))


# ------------------------------------------------------------------------------ bad input


def test_refuses_conv_layer(tmp_path):
    em.make_torch(F, None, conv_kernel_size=3).save_pretrained(tmp_path / "hf")
    with pytest.raises(ValueError, match=r"config\.json: conv_kernel_size=3 .*not supported"):
        hf.load_pretrained(str(tmp_path / "hf"))


@pytest.mark.parametrize("key,value,match", [
    ("pos_att_type", ["c2p", "p2p"], r"pos_att_type=\['c2p', 'p2p'\] is not supported"),
    ("norm_rel_ebd", "layer_norm|scale", "norm_rel_ebd='layer_norm|scale' is not supported"),
    ("attention_head_size", 4, "attention_head_size=4 is not supported"),
    ("tie_word_embeddings", False, "tie_word_embeddings=false is not supported"),
    ("model_type", "deberta", "model_type is 'deberta'"),
])
def test_refuses_unsupported_config(key, value, match):
    cfg = {**em.hf_config(F).to_dict(), key: value}
    with pytest.raises(ValueError, match=r"my/config\.json: " + match):
        hf_deberta.config_from_hf(cfg, "my/config.json")


def test_wrong_shapes_listed_in_one_error(tmp_path):
    em.make_torch(F, "classification").save_pretrained(tmp_path / "hf")
    file = tmp_path / "hf" / "model.safetensors"
    tensors = load_file(str(file))
    bad = ["deberta.encoder.rel_embeddings.weight",
           "deberta.encoder.layer.1.attention.self.key_proj.weight"]
    for name in bad:
        tensors[name] = np.zeros((7, 5), np.float32)
    save_file(tensors, str(file), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"wrong shapes \(2\)") as e:
        hf.load_pretrained(str(tmp_path / "hf"), head="classification")
    assert all(name in str(e.value) for name in bad), str(e.value)


def test_config_round_trip():
    """Every config field the HF side reads is written back (no silent defaults)."""
    model, _ = random_model(None, share_att_key=False, pos_att_type=["p2c"])
    cfg = hf_deberta.config_to_hf(model)
    again = transformers.DebertaV2Config(**cfg)
    assert again.share_att_key is False and again.pos_att_type == ["p2c"]
    assert hf_deberta.config_from_hf(again.to_dict()) == model.config
    assert DebertaV2Config(pos_att_type=["c2p"]).pos_att_type == ("c2p",)
