"""The pure train step: sharded == single device, k microbatches == one big batch."""

import jax
import numpy as np
import pytest

from lmtransfer import peft, sharding
from lmtransfer.data import batching
from lmtransfer.tasks import make_task
from lmtransfer.train import init, loop, optim
from lmtransfer.train import state as state_lib
from lmtransfer.train.step import make_train_step, run_scalars
from tests.configs_loader import load_config
from tests.glue_data import make_glue


@pytest.fixture(scope="module")
def glue_root(tmp_path_factory):
    return make_glue(str(tmp_path_factory.mktemp("glue")), n_train=64)


def config_for(glue_root, **train):
    c = load_config("glue.py", "task=mrpc,model=tiny")
    c.data.dir = glue_root
    c.model.hidden_dropout_prob = 0.0  # dropout masks differ between microbatch layouts
    c.model.attention_probs_dropout_prob = 0.0
    c.optim.lr = 1e-3
    for k, v in train.items():
        c.train[k] = v
    return c


def run_steps(config, mesh_spec, n_steps=3):
    """(losses, params, state) after `n_steps` of the jitted train step on `mesh_spec`."""
    mesh = sharding.make_mesh(mesh_spec, devices=jax.devices()[:int(np.prod(
        list(mesh_spec.values())))])
    rules = sharding.rules_from_config(config.sharding_rules)
    tok = init.load_tokenizer(config)
    task = make_task(config, tok)
    split = task.load("train")
    batcher = loop.make_batcher(split, config.train.batch_size, mesh, (16, 32, 64))
    model, params, _ = init.build_adapted(config, task, tok, mesh, rules)
    params, frozen = peft.split(model, params)  # a LoRA run trains only its part
    frozen = peft.cast(frozen, config.peft.base_dtype)
    tx, lr = optim.make(config.optim, 10)
    sh = state_lib.shardings(model, tx, mesh, rules)
    state = state_lib.create(params, tx, sh)
    step = jax.jit(make_train_step(model, task, tx, lr, config.train.grad_accum),
                   in_shardings=(sh, batcher.sharding, state_lib.param_shardings(
                       model, mesh, rules)[1], sharding.replicated(mesh)),
                   out_shardings=(sh, sharding.replicated(mesh)), donate_argnums=(0,))
    losses = []
    with sharding.use_mesh(mesh, rules):
        for i in range(n_steps):
            state, m = step(state, batcher.train_batch(i, config.seed), frozen,
                            run_scalars(config.seed, lr))
            losses.append(float(m["loss"]))
    run_steps.last = dict(model=model, frozen=frozen, task=task, batcher=batcher)
    return losses, jax.device_get(state.params), state


def max_diff(a, b):
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_sharded_step_equals_single_device(glue_root):
    config = config_for(glue_root, batch_size=16)
    single_losses, single_params, _ = run_steps(config, {"data": 1})
    losses, params, state = run_steps(config, {"data": 2, "fsdp": 2, "tensor": 2})
    kernel = state.params["layer_0"]["mlp"]["wi"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    mu = jax.tree.leaves(state.opt_state)  # optimizer moments are sharded like their params
    assert any(getattr(x, "sharding", None) is not None and x.shape == kernel.shape
               and x.sharding.spec == kernel.sharding.spec for x in mu)
    np.testing.assert_allclose(losses, single_losses, atol=1e-5)
    assert max_diff(params, single_params) <= 1e-5


def test_grad_accumulation_equals_big_batch(glue_root):
    big_losses, big_params, _ = run_steps(config_for(glue_root, batch_size=16), {"data": 2})
    acc_losses, acc_params, _ = run_steps(config_for(glue_root, batch_size=16, grad_accum=4),
                                          {"data": 2})
    np.testing.assert_allclose(acc_losses, big_losses, atol=1e-5)
    assert max_diff(acc_params, big_params) <= 1e-5


def test_padding_rows_do_not_count(glue_root):
    """A batch with weight-0 padding rows gives the loss of its real rows only."""
    config = config_for(glue_root, batch_size=16)
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    tok = init.load_tokenizer(config)
    task = make_task(config, tok)
    b = batching.Batcher(task.load("train").features, 16, mesh, (64,))
    idx = np.arange(16)
    idx[10:] = -1
    batch = b.assemble(idx)
    assert np.asarray(batch["weights"]).sum() == 10
    np.testing.assert_array_equal(np.asarray(batch["input_ids"])[10], np.asarray(
        batch["input_ids"])[0])  # padding repeats a real row (no all-masked attention)


def test_dropout_keep_mask_statistics():
    """The hash-based dropout mask: keep rate, no correlation between neighbours or keys,
    reproducible per key, and inverted-dropout scaling."""
    import jax
    import numpy as np

    from lmtransfer.models import layers

    shape = (8, 4, 64, 64)
    a = np.asarray(layers.keep_mask(jax.random.key(0), shape, 0.1))
    b = np.asarray(layers.keep_mask(jax.random.key(1), shape, 0.1))
    assert abs(a.mean() - 0.9) < 0.005  # 131k draws: sd 0.0008
    assert (a == np.asarray(layers.keep_mask(jax.random.key(0), shape, 0.1))).all()
    flat = a.reshape(-1).astype(float)
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.02
    assert abs(np.corrcoef(flat, b.reshape(-1).astype(float))[0, 1]) < 0.02
    drop = layers.Dropout(0.1)
    x = np.ones(shape, np.float32)
    y = np.asarray(drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}))
    kept = y != 0
    assert np.allclose(y[kept], 1 / 0.9) and abs(kept.mean() - 0.9) < 0.005


@pytest.mark.parametrize("mesh_spec,kv_spec", [
    ({"data": 2, "fsdp": 2, "tensor": 2}, ("fsdp", "tensor", None)),  # 2 kv heads on tensor=2
    ({"data": 1, "fsdp": 2, "tensor": 4}, ("fsdp", None, None)),  # ... don't divide tensor=4
])
def test_gqa_decoder_sharded_step_equals_single_device(glue_root, mesh_spec, kv_spec, caplog):
    """Llama-style grouped-query attention (4 query, 2 key/value heads): kv heads shard on
    tensor when they divide it, else they are replicated (logged); the step is the same."""
    config = config_for(glue_root, batch_size=16)
    config.model.preset = "llama-tiny"
    single_losses, single_params, _ = run_steps(config, {"data": 1})
    with caplog.at_level("INFO", logger="lmtransfer.sharding"):
        losses, params, state = run_steps(config, mesh_spec)
    attention = state.params["layer_0"]["attention"]
    def spec(x):
        return tuple(x.sharding.spec) + (None,) * (x.ndim - len(x.sharding.spec))

    assert spec(attention["key"]["kernel"]) == kv_spec
    assert spec(attention["query"]["kernel"]) == ("fsdp", "tensor", None)
    replicated = "kv_heads of size 2 does not divide mesh axes tensor (size 4); replicated"
    assert (replicated in caplog.text) == (mesh_spec["tensor"] == 4)
    np.testing.assert_allclose(losses, single_losses, atol=1e-5)
    assert max_diff(params, single_params) <= 1e-5
