"""Pure, jitted step functions. One train step is one optimizer update, whatever the
gradient accumulation: microbatch gradients of the *summed* loss are added in a `lax.scan`
and divided once by the total weight, so k microbatches equal one big batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmtransfer import peft
from lmtransfer.train.state import TrainState

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "segment_ids",
                "mlm_positions")


def _apply(model, params, batch, deterministic, rng=None):
    rngs = None if deterministic else {"dropout": rng}
    return model.apply({"params": params}, **{k: batch[k] for k in MODEL_INPUTS if k in batch},
                       deterministic=deterministic, rngs=rngs)


def _split_microbatches(batch, k: int):
    """[B, ...] -> [k, B/k, ...] taking rows j, j+k, ... for microbatch j, so each device's
    rows stay on that device."""
    def split(x):
        return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


def run_scalars(seed: int, lr_schedule) -> dict:
    """The train step's `run` argument: the seed and the schedule's numbers. They are
    arguments rather than constants so that runs differing only in them (a sweep's seeds and
    learning rates) compile one executable per shape and share it through the persistent
    compilation cache."""
    return {"seed": np.uint32(seed), **lr_schedule.scalars}


def make_train_step(model, task, tx, lr_schedule, grad_accum: int,
                    skip_nonfinite: bool = False):
    """The jitted-to-be train step `(state, batch, frozen, run) -> (state, metrics)`. `tx`
    gives the update at learning rate 1 (`optim.make`); the step scales it by
    `lr_schedule(step, run)` (`run`: `run_scalars`). `metrics["nonfinite"]` is 1 when the
    loss or the gradient norm is NaN/Inf; with `skip_nonfinite` such an update is not applied
    (params and optimizer state stay as they were; the step count still advances with the
    data)."""
    def loss_fn(params, batch, rng, frozen):
        full = peft.combine(params, frozen)
        loss_sum, weight = task.loss(_apply(model, full, batch, False, rng), batch)
        return loss_sum, weight

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch, frozen, run):
        """`state.params` is what trains; `frozen` the rest of the model (a LoRA run's
        base: neither differentiated nor in the optimizer), None when everything trains."""
        key = jax.random.key(run["seed"])
        rng = jax.random.fold_in(key, state.step)
        # The task's batch transform (MLM masking) sees the whole batch, so masks don't
        # depend on grad_accum; dropout draws from an independent stream.
        mask_rng = jax.random.fold_in(jax.random.fold_in(key, 1), state.step)
        batch = task.prepare(batch, mask_rng)
        if grad_accum == 1:
            (loss_sum, weight), grads = grad_fn(state.params, batch, rng, frozen)
        else:
            def body(carry, xs):
                i, micro = xs
                (loss, w), g = grad_fn(state.params, micro, jax.random.fold_in(rng, i), frozen)
                return jax.tree.map(jnp.add, carry, (loss, w, g)), None

            zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.params))
            (loss_sum, weight, grads), _ = jax.lax.scan(
                body, zeros, (jnp.arange(grad_accum), _split_microbatches(batch, grad_accum)))
        denom = jnp.maximum(weight, 1e-6)  # weight 0 => loss and grads are 0 too
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        lr = lr_schedule(state.step, run)
        updates = jax.tree.map(lambda u: lr.astype(u.dtype) * u, updates)
        params = optax.apply_updates(state.params, updates)
        loss, grad_norm = loss_sum / denom, optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if skip_nonfinite:
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            params = jax.tree.map(keep, params, state.params)
            opt_state = jax.tree.map(keep, opt_state, state.opt_state)
        metrics = {"loss": loss, "weight": weight, "grad_norm": grad_norm,
                   "param_norm": optax.tree.norm(params), "lr": lr,
                   "nonfinite": (~finite).astype(jnp.float32)}
        return TrainState(state.step + 1, params, opt_state), metrics

    return train_step


def make_eval_step(model, task):
    def eval_step(params, batch):
        out = _apply(model, params, batch, True)
        loss_sum, weight = task.loss(out, batch)
        return task.predict(out, batch), loss_sum, weight

    return eval_step
