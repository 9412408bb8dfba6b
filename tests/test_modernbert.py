"""ModernBERT <-> HF ModernBert*: every head's logits equal torch's on import and after export
(also with mean pooling, with every bias on, and from a legacy config.json), export -> import
is bit-identical, padding changes nothing, sharded == unsharded, and bad checkpoints are
refused."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from safetensors.torch import load_file, save_file

from lmtransfer import hf, sharding
from lmtransfer.hf import modernbert as hf_modernbert
from lmtransfer.models.modernbert import ModernBert, ModernBertConfig
from tests import encoder_models as em
from tests.helpers import perturbed_init

FAMILY = "modernbert"
HEADS = em.HF_FAMILIES[FAMILY][3]
TOL = 1e-4
BIASES = dict(attention_bias=True, mlp_bias=True, norm_bias=True, classifier_bias=True,
              decoder_bias=False)


def _config(**overrides):
    return hf_modernbert.config_from_hf(em.hf_config(FAMILY, **overrides).to_dict())


def _num_labels(head):
    return 2 if head == "qa" else 3


def _flat(params):
    return traverse_util.flatten_dict(jax.device_get(params), sep="/")


def _import_errors(tmp_path, head, num_labels=3, edit_config=None, **overrides):
    torch_model = em.make_torch(FAMILY, head, num_labels=num_labels, **overrides)
    torch_model.save_pretrained(tmp_path)
    if edit_config:
        cfg = json.loads((tmp_path / "config.json").read_text())
        (tmp_path / "config.json").write_text(json.dumps(edit_config(cfg)))
    model, params = hf.load_pretrained(str(tmp_path), head=head)
    assert isinstance(model, ModernBert) and model.head == head
    ids, mask, types = em.batch(FAMILY)
    return em.max_errors(FAMILY, model, params, torch_model, head, ids, mask, types)


@pytest.mark.parametrize("head", HEADS, ids=str)
def test_import_matches_torch(tmp_path, head):
    errors = _import_errors(tmp_path, head)
    print(head, errors)
    assert max(errors.values()) <= TOL, errors


@pytest.mark.parametrize("head,num_labels,overrides", [
    ("classification", 1, {}),  # regression
    ("classification", 3, dict(classifier_pooling="mean")),
    ("classification", 3, dict(BIASES, classifier_pooling="mean")),
    ("mlm", 3, BIASES),
    ("qa", 2, BIASES),
], ids=["regression", "mean_pooling", "biases_mean", "biases_mlm", "biases_qa"])
def test_import_options_match_torch(tmp_path, head, num_labels, overrides):
    errors = _import_errors(tmp_path, head, num_labels, **overrides)
    print(head, overrides, errors)
    assert max(errors.values()) <= TOL, errors


def test_legacy_config_keys(tmp_path):
    """A config.json from before transformers 5: global_attn_every_n_layers and the two rope
    thetas instead of layer_types and rope_parameters."""
    def legacy(cfg):
        cfg = {k: v for k, v in cfg.items() if k not in ("layer_types", "rope_parameters")}
        return dict(cfg, global_attn_every_n_layers=2, global_rope_theta=1000.0,
                    local_rope_theta=50.0)

    rope = {"full_attention": {"rope_type": "default", "rope_theta": 1000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}}
    errors = _import_errors(tmp_path, None, edit_config=legacy, rope_parameters=rope)
    assert max(errors.values()) <= TOL, errors
    model, _ = hf.load_pretrained(str(tmp_path))
    c = model.config
    assert c.layer_types == ("full_attention", "sliding_attention", "full_attention")
    assert (c.global_rope_theta, c.local_rope_theta) == (1000.0, 50.0)


def test_window_and_thetas_matter(tmp_path):
    """The parity tests would catch an off-by-one window or swapped thetas."""
    torch_model = em.make_torch(FAMILY, None)
    torch_model.save_pretrained(tmp_path)
    model, params = hf.load_pretrained(str(tmp_path))
    ids, mask, types = em.batch(FAMILY)
    c = model.config
    for wrong in (dict(local_attention=c.local_attention + 2),
                  dict(local_attention=c.local_attention - 2),
                  dict(global_rope_theta=c.local_rope_theta, local_rope_theta=1e5)):
        other = model.clone(config=c.replace(**wrong))
        err = em.max_errors(FAMILY, other, params, torch_model, None, ids, mask, types)
        assert err["last_hidden_state"] > 1e-3, wrong


EXPORTS = [(h, {}) for h in HEADS] + [("mlm", BIASES),
                                       ("classification", dict(BIASES, classifier_pooling="mean"))]


@pytest.mark.parametrize("head,overrides", EXPORTS,
                         ids=[str(h) for h in HEADS] + ["biases_mlm", "biases_mean"])
def test_export_matches_torch_and_round_trips(tmp_path, head, overrides):
    model = ModernBert(_config(**overrides), head=head, num_labels=_num_labels(head))
    params = perturbed_init(model)
    err = em.check_export(FAMILY, model, params, head, tmp_path)
    print(head, overrides, err)
    assert err <= TOL
    again, params2 = hf.load_pretrained(str(tmp_path), head=head)
    assert again.config == model.config
    if head in ("classification", "token_classification"):
        assert again.num_labels == model.num_labels
    a, b = _flat(params), _flat(params2)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_config_rebuilds_from_json():
    """Checkpoints rebuild the config from its JSON (lists where it has tuples)."""
    c = _config(**BIASES)
    assert ModernBertConfig(**json.loads(json.dumps(dataclasses.asdict(c)))) == c


def test_padding_positions_segments_remat_and_dropout():
    model = ModernBert(_config(), head="mlm")
    params = perturbed_init(model)
    ids, mask, _ = em.batch(FAMILY)
    full = model.apply({"params": params}, ids, mask)
    # Row 2 alone, unpadded, computes what it does padded (the window spans the padding).
    alone = model.apply({"params": params}, ids[2:, :5], mask[2:, :5])
    np.testing.assert_allclose(alone.logits[0], full.logits[2, :5], atol=1e-5)
    pos = jnp.array([[0, 3, 5]] * 3)
    part = model.apply({"params": params}, ids, mask, mlm_positions=pos)
    np.testing.assert_allclose(part.logits, np.take_along_axis(full.logits, pos[..., None], 1),
                               atol=1e-6)
    seg = model.apply({"params": params}, ids, None, segment_ids=mask)
    np.testing.assert_allclose(seg.logits[mask == 1], full.logits[mask == 1], atol=1e-6)
    remat = model.clone(config=model.config.replace(remat=True))
    np.testing.assert_allclose(remat.apply({"params": params}, ids, mask).logits, full.logits,
                               atol=1e-6)
    drop = model.clone(config=model.config.replace(hidden_dropout_prob=0.1,
                                                   attention_probs_dropout_prob=0.1))
    out = drop.apply({"params": params}, ids, mask, deterministic=False,
                     rngs={"dropout": jax.random.key(0)})
    assert np.isfinite(out.logits).all() and not np.allclose(out.logits, full.logits)


def test_sharded_forward_equals_unsharded():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = ModernBert(_config(**BIASES), head="classification", num_labels=3)
    ids, mask, _ = em.batch(FAMILY)
    ids, mask = np.concatenate([ids, ids[:1]]), np.concatenate([mask, mask[:1]])  # batch 4
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(ids))
    shardings = sharding.param_shardings(abstract, mesh, sharding.DEFAULT_RULES)["params"]
    params = perturbed_init(model)
    sharded = sharding.put_sharded(params, shardings)
    layer = sharded["layer_1"]
    assert layer["attention"]["query"]["kernel"].sharding.spec == P("fsdp", "tensor", None)
    assert layer["attention"]["out"]["kernel"].sharding.spec == P("tensor", None, "fsdp")
    assert layer["mlp"]["gate"]["kernel"].sharding.spec == P("fsdp", "tensor")
    fn = jax.jit(lambda p, *b: model.apply({"params": p}, *b).logits)
    want = fn(params, ids, mask)
    data = sharding.put_sharded((ids, mask), (NamedSharding(mesh, P(("data", "fsdp"))),) * 2)
    with sharding.use_mesh(mesh):
        got = fn(sharded, *data)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_wrong_shaped_fused_wqkv_refused(tmp_path):
    em.make_torch(FAMILY, "classification").save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    tensors = load_file(file)
    tensors["model.layers.1.attn.Wqkv.weight"] = torch.zeros(90, 32)
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"wrong shapes \(1\)") as e:
        hf.load_pretrained(str(tmp_path), head="classification")
    assert "model.layers.1.attn.Wqkv.weight: checkpoint (90, 32), model expects (96, 32)" in \
        str(e.value)


@pytest.mark.parametrize("key,value,match", [
    ("rope_parameters", {"full_attention": {"rope_type": "linear", "factor": 2.0,
                                            "rope_theta": 1e4}},
     r"config\.json: rope_parameters\.full_attention\.rope_type='linear' is not supported"),
    ("rope_scaling", {"rope_type": "dynamic", "factor": 2.0},
     r"config\.json: rope_scaling\.rope_type='dynamic' is not supported"),
    ("tie_word_embeddings", False, r"config\.json: tie_word_embeddings=false is not supported"),
    ("classifier_pooling", "max", r"config\.json: classifier_pooling='max' is not supported"),
    ("hidden_activation", "mish", r"config\.json: hidden_activation='mish' is not supported"),
    ("layer_types", ["full_attention", "chunked_attention", "full_attention"],
     r"config\.json: layer_types=.* must give one of"),
], ids=["rope_type", "rope_scaling", "untied", "pooling", "activation", "layer_types"])
def test_unsupported_options_refused(tmp_path, key, value, match):
    em.make_torch(FAMILY, None).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, key: value}))
    with pytest.raises(ValueError, match=match):
        hf.load_pretrained(str(tmp_path))
