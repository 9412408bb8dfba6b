"""DistilBERT <-> HF DistilBert*: every head's logits equal torch's on import and after export,
export -> import is bit-identical, sharded == unsharded, and bad checkpoints and unsupported
configs are refused."""

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
from lmtransfer.hf import distilbert as hf_distilbert
from lmtransfer.models.distilbert import DistilBert
from tests import encoder_models as em
from tests.helpers import perturbed_init, random_batch

FAMILY = "distilbert"
HEADS = em.HF_FAMILIES[FAMILY][3]
TOL = 1e-4


def _config(**overrides):
    return hf_distilbert.config_from_hf(em.hf_config(FAMILY, **overrides).to_dict())


def _num_labels(head):
    return 2 if head == "qa" else 3


def _flat(params):
    return traverse_util.flatten_dict(jax.device_get(params), sep="/")


def _import_errors(tmp_path, head, num_labels=3):
    torch_model = em.make_torch(FAMILY, head, num_labels=num_labels)
    torch_model.save_pretrained(tmp_path)
    model, params = hf.load_pretrained(str(tmp_path), head=head)
    assert isinstance(model, DistilBert) and model.head == head
    ids, mask, types = em.batch(FAMILY)
    return em.max_errors(FAMILY, model, params, torch_model, head, ids, mask, types)


def test_config_maps_hf_names():
    c = _config(dropout=0.3, attention_dropout=0.2, seq_classif_dropout=0.4, qa_dropout=0.5)
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads,
            c.intermediate_size) == (32, 2, 4, 48)
    assert (c.hidden_dropout_prob, c.attention_probs_dropout_prob, c.seq_classif_dropout,
            c.qa_dropout) == (0.3, 0.2, 0.4, 0.5)
    back = hf_distilbert.config_to_hf(DistilBert(c))
    assert (back["dim"], back["n_layers"], back["n_heads"], back["hidden_dim"],
            back["dropout"], back["attention_dropout"]) == (32, 2, 4, 48, 0.3, 0.2)


@pytest.mark.parametrize("head", HEADS, ids=str)
def test_import_matches_torch(tmp_path, head):
    errors = _import_errors(tmp_path, head)
    assert max(errors.values()) <= TOL, errors


def test_import_regression(tmp_path):
    errors = _import_errors(tmp_path, "classification", num_labels=1)
    assert max(errors.values()) <= TOL, errors


@pytest.mark.parametrize("head", HEADS, ids=str)
def test_export_matches_torch_and_round_trips(tmp_path, head):
    model = DistilBert(_config(), head=head, num_labels=_num_labels(head))
    params = perturbed_init(model)
    assert em.check_export(FAMILY, model, params, head, tmp_path) <= TOL
    again, params2 = hf.load_pretrained(str(tmp_path), head=head)
    assert again.config == model.config
    if head in ("classification", "token_classification"):
        assert again.num_labels == model.num_labels
    a, b = _flat(params), _flat(params2)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_mlm_positions_segment_ids_and_token_types_ignored():
    model = DistilBert(_config(), head="mlm")
    params = perturbed_init(model)
    ids, mask, _ = em.batch(FAMILY)
    full = model.apply({"params": params}, ids, mask)
    pos = jnp.array([[0, 3, 5]] * 3)
    part = model.apply({"params": params}, ids, mask, mlm_positions=pos)
    np.testing.assert_allclose(part.logits, np.take_along_axis(full.logits, pos[..., None], 1),
                               atol=1e-6)
    seg = model.apply({"params": params}, ids, None, segment_ids=mask)
    np.testing.assert_allclose(seg.logits[mask == 1], full.logits[mask == 1], atol=1e-6)
    typed = model.apply({"params": params}, ids, mask, np.ones_like(ids))
    np.testing.assert_array_equal(typed.logits, full.logits)


def test_sharded_forward_equals_unsharded():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = DistilBert(_config(), head="classification")
    ids, mask, types = random_batch(em.VOCAB, batch=4, length=12)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(ids))
    shardings = sharding.param_shardings(abstract, mesh, sharding.DEFAULT_RULES)["params"]
    params = perturbed_init(model)
    sharded = sharding.put_sharded(params, shardings)
    assert sharded["layer_1"]["mlp"]["wi"]["kernel"].sharding.spec == P("fsdp", "tensor")
    assert sharded["layer_0"]["attention"]["query"]["kernel"].sharding.spec == P(
        "fsdp", "tensor", None)
    fn = jax.jit(lambda p, *b: model.apply({"params": p}, *b).logits)
    want = fn(params, ids, mask, types)
    data = sharding.put_sharded((ids, mask, types), (NamedSharding(mesh, P(("data", "fsdp"))),) * 3)
    with sharding.use_mesh(mesh):
        got = fn(sharded, *data)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_two_wrong_shapes_in_one_error(tmp_path):
    em.make_torch(FAMILY, "mlm").save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    tensors = load_file(file)
    tensors["distilbert.transformer.layer.1.ffn.lin1.bias"] = torch.zeros(40)
    tensors["vocab_projector.bias"] = torch.zeros(90)
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"wrong shapes \(2\)") as e:
        hf.load_pretrained(str(tmp_path), head="mlm")
    assert "distilbert.transformer.layer.1.ffn.lin1.bias: checkpoint (40,)" in str(e.value)
    assert "vocab_projector.bias: checkpoint (90,)" in str(e.value)


@pytest.mark.parametrize("key,value,match", [
    ("sinusoidal_pos_embds", True, "sinusoidal_pos_embds=true is not supported"),
    ("tie_word_embeddings", False, "tie_word_embeddings=false is not supported"),
    ("activation", "mish", "activation='mish' is not supported"),
    ("dim", None, "a 'distilbert' config needs dim"),
])
def test_unsupported_config_refused(tmp_path, key, value, match):
    em.make_torch(FAMILY, None).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, key: value}))
    with pytest.raises(ValueError, match=r"config\.json: " + match):
        hf.load_pretrained(str(tmp_path))
