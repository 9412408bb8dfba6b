"""ELECTRA <-> HF Electra*: every head's logits equal torch's on import and after export,
export -> import is bit-identical, sharded == unsharded, and bad checkpoints are refused."""

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
from lmtransfer.hf import electra as hf_electra
from lmtransfer.models.electra import Electra
from tests import encoder_models as em
from tests.helpers import perturbed_init, random_batch

FAMILY = "electra"
HEADS = em.HF_FAMILIES[FAMILY][3]
TOL = 1e-4


def _config(**overrides):
    return hf_electra.config_from_hf(em.hf_config(FAMILY, **overrides).to_dict())


def _num_labels(head):
    return 2 if head == "qa" else 3


def _flat(params):
    return traverse_util.flatten_dict(jax.device_get(params), sep="/")


def _import_errors(tmp_path, head, num_labels=3, **overrides):
    torch_model = em.make_torch(FAMILY, head, num_labels=num_labels, **overrides)
    torch_model.save_pretrained(tmp_path)
    model, params = hf.load_pretrained(str(tmp_path), head=head)
    assert isinstance(model, Electra) and model.head == head
    ids, mask, types = em.batch(FAMILY)
    return em.max_errors(FAMILY, model, params, torch_model, head, ids, mask, types)


@pytest.mark.parametrize("head", HEADS, ids=str)
def test_import_matches_torch(tmp_path, head):
    errors = _import_errors(tmp_path, head)
    assert max(errors.values()) <= TOL, errors


def test_import_regression_and_unprojected_embeddings(tmp_path):
    """num_labels=1 (regression), and embedding_size == hidden_size (no embeddings_project)."""
    errors = _import_errors(tmp_path / "reg", "classification", num_labels=1)
    assert max(errors.values()) <= TOL, errors
    errors = _import_errors(tmp_path / "same", None, embedding_size=32)
    assert max(errors.values()) <= TOL, errors
    _, params = hf.load_pretrained(str(tmp_path / "same"))
    assert "embeddings_project" not in params


@pytest.mark.parametrize("head", HEADS, ids=str)
def test_export_matches_torch_and_round_trips(tmp_path, head):
    model = Electra(_config(), head=head, num_labels=_num_labels(head))
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


def test_mlm_positions_and_segment_ids():
    model = Electra(_config(), head="mlm")
    params = perturbed_init(model)
    ids, mask, types = em.batch(FAMILY)
    full = model.apply({"params": params}, ids, mask, types)
    pos = jnp.array([[0, 3, 5]] * 3)
    part = model.apply({"params": params}, ids, mask, types, mlm_positions=pos)
    np.testing.assert_allclose(part.logits, np.take_along_axis(full.logits, pos[..., None], 1),
                               atol=1e-6)
    seg = model.apply({"params": params}, ids, None, types, segment_ids=mask)
    np.testing.assert_allclose(seg.logits[mask == 1], full.logits[mask == 1], atol=1e-6)


def test_sharded_forward_equals_unsharded():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = Electra(_config(), head="pretraining")
    ids, mask, types = random_batch(em.VOCAB, batch=4, length=12)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(ids))
    shardings = sharding.param_shardings(abstract, mesh, sharding.DEFAULT_RULES)["params"]
    params = perturbed_init(model)
    sharded = sharding.put_sharded(params, shardings)
    spec = sharded["layer_0"]["attention"]["query"]["kernel"].sharding.spec
    assert spec == P("fsdp", "tensor", None)
    fn = jax.jit(lambda p, *b: model.apply({"params": p}, *b).logits)
    want = fn(params, ids, mask, types)
    data = sharding.put_sharded((ids, mask, types), (NamedSharding(mesh, P(("data", "fsdp"))),) * 3)
    with sharding.use_mesh(mesh):
        got = fn(sharded, *data)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_two_wrong_shapes_in_one_error(tmp_path):
    em.make_torch(FAMILY, "classification").save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    tensors = load_file(file)
    tensors["electra.embeddings_project.weight"] = torch.zeros(32, 8)
    tensors["electra.encoder.layer.1.intermediate.dense.bias"] = torch.zeros(40)
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"wrong shapes \(2\)") as e:
        hf.load_pretrained(str(tmp_path), head="classification")
    assert "electra.embeddings_project.weight: checkpoint (32, 8)" in str(e.value)
    assert "electra.encoder.layer.1.intermediate.dense.bias: checkpoint (40,)" in str(e.value)


def test_relative_positions_refused(tmp_path):
    em.make_torch(FAMILY, None).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg,
                                                      "position_embedding_type": "relative_key"}))
    with pytest.raises(ValueError, match=r"config\.json: position_embedding_type='relative_key'"):
        hf.load_pretrained(str(tmp_path))
