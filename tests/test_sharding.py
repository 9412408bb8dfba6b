"""Sharding: mesh resolution, params split as the rules say, sharded forward == unsharded."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lmtransfer import hf, sharding
from lmtransfer.models import Bert, BertConfig
from tests.helpers import random_batch

MESH = {"data": 2, "fsdp": 2, "tensor": 2}


def test_mesh_shape_fill_and_errors():
    assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 1}, 8) == (4, 2, 1)
    assert sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="needs 4 devices but 8"):
        sharding.mesh_shape({"data": 2, "fsdp": 2}, 8)
    with pytest.raises(ValueError, match="not divisible"):
        sharding.mesh_shape({"data": -1, "fsdp": 3}, 8)
    with pytest.raises(ValueError, match="unknown axes"):
        sharding.mesh_shape({"dp": 8}, 8)
    with pytest.raises(ValueError, match="at most one may be -1"):
        sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="unknown mesh axis 'model'"):
        sharding.rules_from_config([("embed", "model")])
    mesh = sharding.make_mesh(MESH)
    assert dict(mesh.shape) == MESH
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def _forward(model, params, batch, mesh=None, rules=sharding.DEFAULT_RULES):
    fn = jax.jit(lambda p, *b: model.apply({"params": p}, *b, deterministic=True))
    if mesh is None:
        return fn(params, *batch)
    data = sharding.put_sharded(tuple(batch),
                                (jax.sharding.NamedSharding(mesh, P(("data", "fsdp"))),) * 3)
    with sharding.use_mesh(mesh, rules):
        return fn(params, *data)


def test_init_sharded_follows_rules():
    mesh = sharding.make_mesh(MESH)
    model = Bert(BertConfig.preset("tiny"), head="mlm")
    dummy = jnp.zeros((2, 8), jnp.int32)
    variables, shardings = sharding.init_sharded(model.init, mesh, sharding.DEFAULT_RULES,
                                                 jax.random.key(0), dummy)
    p = variables["params"]
    expect = {  # path -> (spec, per-device shard shape)
        ("layer_0", "attention", "query", "kernel"): (P("fsdp", "tensor", None), (32, 2, 16)),
        ("layer_0", "attention", "out", "kernel"): (P("tensor", None, "fsdp"), (2, 16, 32)),
        ("layer_1", "mlp", "wi", "kernel"): (P("fsdp", "tensor"), (32, 64)),
        ("layer_1", "mlp", "wo", "kernel"): (P("tensor", "fsdp"), (64, 32)),
        ("embeddings", "word_embeddings", "embedding"): (P("tensor", "fsdp"), (512, 32)),
        ("mlm", "bias"): (P("tensor"), (512,)),
    }
    for path, (spec, shard_shape) in expect.items():
        x, s = p, shardings["params"]
        for k in path:
            x, s = x[k], s[k]
        assert x.sharding.spec == spec and s.spec == spec, path
        assert x.addressable_shards[0].data.shape == shard_shape, path
    # Sharded init gives the same values as a plain single-device init.
    plain = nn.unbox(model.init(jax.random.key(0), dummy))["params"]
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(p), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7)


def test_minilm_forward_sharded_equals_single_device(minilm_path, capfd):
    mesh = sharding.make_mesh(MESH)
    model, params = hf.load_pretrained(minilm_path, head=None)
    _, sharded = hf.load_pretrained(minilm_path, head=None, mesh=mesh)
    kernel = sharded["layer_3"]["mlp"]["wi"]["kernel"]
    assert kernel.sharding.spec == P("fsdp", "tensor")
    assert kernel.addressable_shards[0].data.shape == (192, 768)
    assert len({s.device for s in kernel.addressable_shards}) == 8
    q = sharded["layer_0"]["attention"]["query"]["kernel"]
    assert q.addressable_shards[0].data.shape == (192, 6, 32)
    batch = random_batch(model.config.vocab_size, batch=8, length=32)
    ref = _forward(model, params, batch)
    out = _forward(model, sharded, batch, mesh)
    # XLA logs this when a sharding forces a full copy of an activation (a layout bug).
    assert "Involuntary full rematerialization" not in capfd.readouterr().err
    for field in ("last_hidden_state", "pooler_output"):
        err = np.abs(np.asarray(getattr(out, field)) - np.asarray(getattr(ref, field))).max()
        assert err <= 1e-5, (field, err)
