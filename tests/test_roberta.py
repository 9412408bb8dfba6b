"""RoBERTa / XLM-R <-> HF (XLM)Roberta*: every head's logits equal torch's on import and
after export (padding on either side: positions skip it), export -> import is bit-identical,
sharded == unsharded, and bad checkpoints are refused."""

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
from lmtransfer.hf import roberta as hf_roberta
from lmtransfer.models.roberta import Roberta
from tests import encoder_models as em
from tests.helpers import perturbed_init

HEADS = em.HF_FAMILIES["roberta"][3]
TOL = 1e-4


def _config(family="roberta", **overrides):
    return hf_roberta.config_from_hf(em.hf_config(family, **overrides).to_dict())


def _flat(params):
    return traverse_util.flatten_dict(jax.device_get(params), sep="/")


def _left_padded(family):
    """The test batch with its padding moved to the front of each row."""
    ids, mask, types = em.batch(family)
    order = np.argsort(mask, axis=1, kind="stable")
    return tuple(np.take_along_axis(x, order, 1) for x in (ids, mask, types))


# XLM-R is RoBERTa's code under another model_type: two heads show the mapping.
@pytest.mark.parametrize("family,head", [("roberta", h) for h in HEADS]
                         + [("xlm-roberta", None), ("xlm-roberta", "mlm")], ids=str)
def test_import_matches_torch(tmp_path, family, head):
    torch_model = em.make_torch(family, head)
    torch_model.save_pretrained(tmp_path)
    model, params = hf.load_pretrained(str(tmp_path), head=head)
    assert isinstance(model, Roberta) and model.config.model_type == family
    for ids, mask, types in (em.batch(family), _left_padded(family)):
        errors = em.max_errors(family, model, params, torch_model, head, ids, mask, types)
        assert max(errors.values()) <= TOL, errors


def test_import_regression(tmp_path):
    torch_model = em.make_torch("roberta", "classification", num_labels=1)
    torch_model.save_pretrained(tmp_path)
    model, params = hf.load_pretrained(str(tmp_path), head="classification")
    assert model.num_labels == 1
    errors = em.max_errors("roberta", model, params, torch_model, "classification",
                           *em.batch("roberta"))
    assert max(errors.values()) <= TOL, errors


@pytest.mark.parametrize("head", HEADS, ids=str)
def test_export_matches_torch_and_round_trips(tmp_path, head):
    model = Roberta(_config(), head=head, num_labels=2 if head == "qa" else 3)
    params = perturbed_init(model)
    assert em.check_export("roberta", model, params, head, tmp_path) <= TOL
    again, params2 = hf.load_pretrained(str(tmp_path), head=head)
    assert again.config == model.config
    a, b = _flat(params), _flat(params2)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_xlm_roberta_exports_as_xlm_roberta(tmp_path):
    model = Roberta(_config("xlm-roberta"), head="token_classification", num_labels=3)
    params = perturbed_init(model)
    assert em.check_export("xlm-roberta", model, params, "token_classification", tmp_path) <= TOL
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["model_type"] == "xlm-roberta"
    assert written["architectures"] == ["XLMRobertaForTokenClassification"]


def test_base_checkpoint_feeds_every_head(tmp_path):
    """A RobertaModel checkpoint (with its pooler) loads under a head: the pooler is dropped,
    the head is fresh, the encoder equals torch's."""
    torch_model = em.make_torch("roberta", None)
    torch_model.save_pretrained(tmp_path)
    model, params = hf.load_pretrained(str(tmp_path), head="classification", num_labels=4)
    assert "pooler" not in params and params["classifier"]["out_proj"]["kernel"].shape == (32, 4)
    base, base_params = hf.load_pretrained(str(tmp_path))
    ids, mask, types = em.batch("roberta")
    ours = model.apply({"params": params}, ids, mask).last_hidden_state
    want = base.apply({"params": base_params}, ids, mask).last_hidden_state
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(want))


def test_given_positions_are_zero_based_and_packing_restarts_them():
    """Packed rows: 0-based positions per document (the offset is the model's) give each
    document the outputs it has alone."""
    model = Roberta(_config(), head="mlm")
    params = perturbed_init(model)
    ids, mask, _ = em.batch("roberta")
    a, b = ids[0, :5], ids[1, :4]
    packed = np.concatenate([a, b, [1, 1, 1]])[None]
    seg = np.array([[1] * 5 + [2] * 4 + [0] * 3])
    pos = np.array([list(range(5)) + list(range(4)) + [0] * 3])
    out = model.apply({"params": params}, packed, position_ids=pos, segment_ids=seg).logits
    alone_a = model.apply({"params": params}, a[None]).logits
    alone_b = model.apply({"params": params}, b[None]).logits
    np.testing.assert_allclose(out[0, :5], alone_a[0], atol=1e-5)
    np.testing.assert_allclose(out[0, 5:9], alone_b[0], atol=1e-5)


def test_sharded_forward_equals_unsharded():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = Roberta(_config(), head="classification")
    ids, mask, types = em.batch("roberta", length=12)
    ids, mask = np.tile(ids, (2, 1))[:4], np.tile(mask, (2, 1))[:4]
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(ids))
    shardings = sharding.param_shardings(abstract, mesh, sharding.DEFAULT_RULES)["params"]
    params = perturbed_init(model)
    sharded = sharding.put_sharded(params, shardings)
    assert sharded["layer_1"]["mlp"]["wi"]["kernel"].sharding.spec == P("fsdp", "tensor")
    fn = jax.jit(lambda p, *b: model.apply({"params": p}, *b).logits)
    want = fn(params, ids, mask)
    data = sharding.put_sharded((ids, mask), (NamedSharding(mesh, P(("data", "fsdp"))),) * 2)
    with sharding.use_mesh(mesh):
        got = fn(sharded, *data)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


@pytest.mark.parametrize("key,value,match", [
    ("position_embedding_type", "relative_key", "position_embedding_type='relative_key'"),
    ("is_decoder", True, "is_decoder=true"),
    ("tie_word_embeddings", False, "tie_word_embeddings=false"),
    ("max_position_embeddings", 2, "max_position_embeddings=2 leaves no positions"),
])
def test_unsupported_config_refused(tmp_path, key, value, match):
    em.make_torch("roberta", None).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, key: value}))
    with pytest.raises(ValueError, match=r"config\.json: " + match):
        hf.load_pretrained(str(tmp_path))


def test_wrong_shapes_listed_in_one_error(tmp_path):
    em.make_torch("roberta", "mlm").save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    tensors = load_file(file)
    tensors["roberta.encoder.layer.1.output.dense.bias"] = \
        tensors["roberta.encoder.layer.1.output.dense.bias"][:30]
    tensors["lm_head.bias"] = tensors["lm_head.bias"][:90]
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"wrong shapes \(2\)") as e:
        hf.load_pretrained(str(tmp_path), head="mlm")
    msg = str(e.value)
    assert "layer.1.output.dense.bias: checkpoint (30,)" in msg
    assert "lm_head.bias: checkpoint (90,)" in msg
