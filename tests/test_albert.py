"""ALBERT <-> HF Albert*: every head's logits equal torch's on import and after export,
export -> import is bit-identical, layer groups share one set of weights, sharded ==
unsharded, and unsupported configs are refused."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from safetensors.torch import load_file, save_file

from lmtransfer import hf, sharding
from lmtransfer.hf import albert as hf_albert
from lmtransfer.models.albert import Albert
from tests import encoder_models as em
from tests.helpers import perturbed_init, random_batch

FAMILY = "albert"
HEADS = em.HF_FAMILIES[FAMILY][3]
TOL = 1e-4
GROUPS = dict(num_hidden_groups=2, inner_group_num=2)


def _config(**overrides):
    return hf_albert.config_from_hf(em.hf_config(FAMILY, **overrides).to_dict())


def _flat(params):
    return traverse_util.flatten_dict(jax.device_get(params), sep="/")


def _import_errors(tmp_path, head, num_labels=3, **overrides):
    torch_model = em.make_torch(FAMILY, head, num_labels=num_labels, **overrides)
    torch_model.save_pretrained(tmp_path)
    model, params = hf.load_pretrained(str(tmp_path), head=head)
    assert isinstance(model, Albert) and model.head == head
    ids, mask, types = em.batch(FAMILY)
    return em.max_errors(FAMILY, model, params, torch_model, head, ids, mask, types)


def _shared_layers(params):
    """{shared layer name: its number of weight tensors}."""
    return {k: len(jax.tree.leaves(v)) for k, v in params.items() if k.startswith("shared")}


@pytest.mark.parametrize("head", HEADS, ids=str)
def test_import_matches_torch(tmp_path, head):
    errors = _import_errors(tmp_path, head)
    assert max(errors.values()) <= TOL, errors


def test_import_regression(tmp_path):
    errors = _import_errors(tmp_path, "classification", num_labels=1)
    assert max(errors.values()) <= TOL, errors


def test_layer_groups_import_and_share_weights(tmp_path):
    """3 layers over 2 groups of 2 inner layers: HF runs group 0, 0, 1 (4 distinct layers)."""
    errors = _import_errors(tmp_path, None, **GROUPS)
    assert max(errors.values()) <= TOL, errors
    _, params = hf.load_pretrained(str(tmp_path))
    # One set per (group, inner layer); each set is BertLayer's 16 tensors.
    assert _shared_layers(params) == {f"shared_layer_{k}": 16 for k in range(4)}
    plain = perturbed_init(Albert(_config()))  # the tiny config: 3 layers share one
    assert _shared_layers(plain) == {"shared_layer_0": 16}


@pytest.mark.parametrize("head", HEADS, ids=str)
def test_export_matches_torch_and_round_trips(tmp_path, head):
    model = Albert(_config(), head=head, num_labels=2 if head == "qa" else 3)
    params = perturbed_init(model)
    assert em.check_export(FAMILY, model, params, head, tmp_path) <= TOL
    again, params2 = hf.load_pretrained(str(tmp_path), head=head)
    assert again.config == model.config
    if head in ("pretraining", "classification", "token_classification"):
        assert again.num_labels == model.num_labels  # pretraining: the sentence-order head
    a, b = _flat(params), _flat(params2)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_layer_groups_export(tmp_path):
    model = Albert(_config(**GROUPS))
    params = perturbed_init(model)
    assert em.check_export(FAMILY, model, params, None, tmp_path) <= TOL
    names = load_file(tmp_path / "model.safetensors")
    assert "encoder.albert_layer_groups.1.albert_layers.1.ffn.weight" in names


def test_mlm_positions_and_segment_ids():
    model = Albert(_config(), head="pretraining")
    params = perturbed_init(model)
    ids, mask, types = em.batch(FAMILY)
    full = model.apply({"params": params}, ids, mask, types)
    pos = jnp.array([[0, 3, 5]] * 3)
    part = model.apply({"params": params}, ids, mask, types, mlm_positions=pos)
    np.testing.assert_allclose(part.logits, np.take_along_axis(full.logits, pos[..., None], 1),
                               atol=1e-6)
    np.testing.assert_allclose(part.seq_relationship_logits, full.seq_relationship_logits)
    seg = model.apply({"params": params}, ids, None, types, segment_ids=mask)
    np.testing.assert_allclose(seg.logits[mask == 1], full.logits[mask == 1], atol=1e-6)


def test_sharded_forward_equals_unsharded():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = Albert(_config(**GROUPS), head="classification")
    ids, mask, types = random_batch(em.VOCAB, batch=4, length=12)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(ids))
    shardings = sharding.param_shardings(abstract, mesh, sharding.DEFAULT_RULES)["params"]
    params = perturbed_init(model)
    sharded = sharding.put_sharded(params, shardings)
    assert sharded["shared_layer_3"]["mlp"]["wi"]["kernel"].sharding.spec == P("fsdp", "tensor")
    fn = jax.jit(lambda p, *b: model.apply({"params": p}, *b).logits)
    want = fn(params, ids, mask, types)
    data = sharding.put_sharded((ids, mask, types), (NamedSharding(mesh, P(("data", "fsdp"))),) * 3)
    with sharding.use_mesh(mesh):
        got = fn(sharded, *data)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


@pytest.mark.parametrize("key,value,match", [
    ("position_embedding_type", "relative_key", "position_embedding_type='relative_key'"),
    ("num_hidden_groups", 4, "num_hidden_groups=4 is not supported"),
    ("tie_word_embeddings", False, "tie_word_embeddings=false"),
    ("hidden_act", "mish", "hidden_act='mish'"),
])
def test_unsupported_config_refused(tmp_path, key, value, match):
    em.make_torch(FAMILY, None).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, key: value}))
    with pytest.raises(ValueError, match=r"config\.json: " + match):
        hf.load_pretrained(str(tmp_path))


def test_wrong_shapes_and_extra_group_in_one_error(tmp_path):
    em.make_torch(FAMILY, "mlm").save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    tensors = load_file(file)
    layer = "albert.encoder.albert_layer_groups.0.albert_layers.0"
    tensors[f"{layer}.ffn.bias"] = tensors[f"{layer}.ffn.bias"][:40]
    tensors["predictions.bias"] = tensors["predictions.bias"][:90]
    extra = layer.replace("layers.0", "layers.1")  # inner layer 1 of a 1-inner-layer group
    tensors[f"{extra}.ffn.bias"] = tensors[f"{layer}.ffn.bias"].clone()
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"wrong shapes \(2\)") as e:
        hf.load_pretrained(str(tmp_path), head="mlm")
    msg = str(e.value)
    assert "ffn.bias: checkpoint (40,)" in msg and "predictions.bias: checkpoint (90,)" in msg
    assert "unexpected tensors (1): albert.encoder.albert_layer_groups.0.albert_layers.1." in msg
