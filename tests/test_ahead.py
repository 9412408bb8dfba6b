"""Compiling the train step ahead (lmtransfer.train.ahead): the buckets foreseen are the ones
the steps use, in first-use order, and the executables compiled ahead compute what the jitted
step computes (donation and shardings included)."""

import jax
import jax.numpy as jnp
import numpy as np

from lmtransfer import sharding
from lmtransfer.data import batching
from lmtransfer.train import ahead


def make_batcher(mesh, n=37, batch=8):
    rng = np.random.default_rng(0)
    lengths = np.minimum(2 + rng.geometric(0.12, n), 64)  # mostly short: several buckets
    ids = np.where(np.arange(64)[None] < lengths[:, None], rng.integers(1, 99, (n, 64)), 0)
    features = {"input_ids": ids.astype(np.int32), "attention_mask": (ids > 0).astype(np.int32),
                "label": rng.integers(0, 2, n).astype(np.int32), "length": lengths}
    return batching.Batcher(features, batch, mesh, (16, 32, 48, 64))


def test_lengths_ahead_are_the_steps_buckets_in_first_use_order():
    b = make_batcher(sharding.make_mesh({"data": -1}))
    for start, stop in ((0, 25), (7, 19), (4, 5)):  # 5 steps per epoch: several epochs
        used = [b.host_batch(b.train_indices(s, 3))["input_ids"].shape[1]
                for s in range(start, stop)]
        assert b.lengths_ahead(start, stop, 3) == list(dict.fromkeys(used))


def test_executables_compute_what_the_jitted_step_computes():
    mesh = sharding.make_mesh({"data": -1})
    b = make_batcher(mesh)
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def step(state, batch, frozen):
        x = jax.nn.one_hot(batch["input_ids"], 99).sum(1) @ state["w"] * frozen
        return {"w": state["w"] + x.mean()}, x.sum(-1) + batch["label"]

    jitted = jax.jit(step, in_shardings=(rep, b.sharding, rep), out_shardings=(rep, rep),
                     donate_argnums=(0,))
    state = jax.device_put({"w": jnp.ones((99, 4))}, rep)
    frozen = jax.device_put(jnp.float32(0.5), rep)
    lengths = b.lengths_ahead(0, 10, 0)[:-1]  # the last one is left to the jitted fallback
    assert len(lengths) >= 2
    run = ahead.Executables(jitted, (state, b.assemble(b.train_indices(0, 0)), frozen), lengths,
                            waiting=lambda: sharding.use_mesh(mesh),
                            context=lambda: sharding.use_mesh(mesh))
    ours, ref = state, jax.device_put({"w": jnp.ones((99, 4))}, rep)
    try:
        for s in range(10):
            batch = b.train_batch(s, 0)
            ours, got = run(ours, batch, frozen)
            ref, want = jitted(ref, batch, frozen)
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
            np.testing.assert_array_equal(np.asarray(ours["w"]), np.asarray(ref["w"]))
    finally:
        run.close()
