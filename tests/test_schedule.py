"""The learning-rate schedule and the run scalars: the schedule equals optax's, the update
equals optax's AdamW at that learning rate, and runs that differ in seed, learning rate,
warmup or length compile the same train step (one executable per shape for a whole sweep)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from lmtransfer import peft, sharding
from lmtransfer.tasks import make_task
from lmtransfer.train import init, loop, optim
from lmtransfer.train import state as state_lib
from lmtransfer.train.step import make_train_step, run_scalars
from tests.test_train_step import config_for, glue_root  # noqa: F401  (a fixture)


def _optim(**kw):
    return ml_collections.ConfigDict({**dict(
        lr=3e-4, warmup_steps=0, warmup_ratio=0.1, decay="linear", weight_decay=0.01,
        b1=0.9, b2=0.999, eps=1e-8, max_grad_norm=1.0, freeze="", layer_decay=1.0), **kw})


def _optax_schedule(c, total):
    """The schedule as optax composes it (what lmtransfer compiled in before)."""
    warmup = c.warmup_steps or int(round(c.warmup_ratio * total))
    rest = max(total - warmup, 1)
    decay = {"linear": optax.linear_schedule(c.lr, 0.0, rest),
             "cosine": optax.cosine_decay_schedule(c.lr, rest),
             "constant": optax.constant_schedule(c.lr)}[c.decay]
    if not warmup:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, c.lr, warmup), decay], [warmup])


@pytest.mark.parametrize("decay", ["linear", "cosine", "constant"])
@pytest.mark.parametrize("warmup", [dict(warmup_ratio=0.1), dict(warmup_ratio=0.0),
                                    dict(warmup_steps=7)])
def test_schedule_equals_optax(decay, warmup):
    c = _optim(decay=decay, **warmup)
    ours, ref = optim.Schedule(c, 50), _optax_schedule(c, 50)
    steps = jnp.arange(54, dtype=jnp.int32)  # past the end too
    # op by op, the same formula to the bit; compiled, XLA turns optax's divisions by
    # constants into multiplications by reciprocals (a last-bit difference)
    want = np.broadcast_to(np.asarray(ref(steps), np.float32), steps.shape)  # constant: a float
    np.testing.assert_array_equal(np.asarray(ours(steps, ours.scalars)), want)
    np.testing.assert_allclose(np.asarray(jax.jit(ours)(steps, ours.scalars)),
                               np.asarray(jax.jit(ref)(steps)), rtol=1e-5, atol=1e-10)
    assert float(ours(jnp.int32(3), ours.scalars)) == float(np.float32(ref(3)))


def test_bad_decay_names_the_key():
    with pytest.raises(ValueError, match=r"config\.optim\.decay='step'; use one of"):
        optim.Schedule(_optim(decay="step"), 10)


def test_update_times_the_schedule_equals_optax_adamw():
    """optim.make's transformation at lr 1, scaled by the schedule as the train step does,
    is bit for bit optax's AdamW with the schedule inside, with the same state structure."""
    c = _optim(warmup_steps=2)
    tx, lr = optim.make(c, 10)
    ref = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
        _optax_schedule(c, 10), b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
        mask=optim.decay_mask))
    params = {"dense": {"kernel": jnp.linspace(-1, 1, 12).reshape(3, 4),
                        "bias": jnp.linspace(0, 1, 4)}}
    state, ref_state = tx.init(params), ref.init(params)
    assert jax.tree.structure(state) == jax.tree.structure(ref_state)  # checkpoints restore
    for step in range(5):
        grads = jax.tree.map(lambda p, k=step + 1: jnp.sin(p * k) + 0.3, params)
        updates, state = tx.update(grads, state, params)
        rate = lr(jnp.int32(step), lr.scalars)
        updates = jax.tree.map(lambda u, r=rate: r * u, updates)
        want, ref_state = ref.update(grads, ref_state, params)
        for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        params = optax.apply_updates(params, updates)


def test_runs_differing_in_seed_lr_and_length_compile_one_train_step(glue_root):  # noqa: F811
    """What a sweep's runs of one task vary: their train steps lower to the same program,
    so the persistent compilation cache compiles it once; the values still act (another
    seed draws other dropout masks, another lr makes another update)."""
    config = config_for(glue_root)
    config.model.hidden_dropout_prob = 0.1
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    rules = sharding.rules_from_config(config.sharding_rules)
    tok = init.load_tokenizer(config)
    task = make_task(config, tok)
    batcher = loop.make_batcher(task.load("train"), 16, mesh, (32,))
    model, params, _ = init.build_adapted(config, task, tok, mesh, rules)
    params, frozen = peft.split(model, params)
    texts, outs = set(), []
    for seed, lr, total in ((0, 1e-3, 10), (1, 1e-3, 10), (0, 5e-4, 30)):
        c = config.optim.copy_and_resolve_references()
        c.lr, c.warmup_steps, c.warmup_ratio = lr, 0, 0.0  # (warmup: lr 0 at step 0)
        tx, schedule = optim.make(c, total)
        sh = state_lib.shardings(model, tx, mesh, rules)
        step = jax.jit(make_train_step(model, task, tx, schedule, 1))
        args = (state_lib.create(params, tx, sh), batcher.train_batch(0, 0), frozen,
                run_scalars(seed, schedule))
        with sharding.use_mesh(mesh, rules):
            texts.add(step.lower(*args).as_text())
            state, metrics = step(*args)
        outs.append((float(metrics["loss"]), jax.device_get(state.params)))
    assert len(texts) == 1
    assert outs[0][0] != outs[1][0]  # seed: other dropout, other loss
    assert outs[0][0] == outs[2][0]  # lr: the same forward pass...
    kernel = lambda p: np.asarray(jax.tree.leaves(p)[-1])  # noqa: E731
    assert not np.array_equal(kernel(outs[0][1]), kernel(outs[2][1]))  # ...another update
