"""The train state (step, trained params, optimizer state) and its shardings on the mesh."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from lmtransfer import peft
from lmtransfer import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any


def abstract_params(model):
    """Boxed abstract variables of `model` (shapes + logical axis names, no memory)."""
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32))


def trained_params(model):
    """ShapeDtypeStructs of the parameters that train (all, or a LoRA run's trained part)."""
    return peft.split(model, sharding_lib.unbox(abstract_params(model))["params"])[0]


def param_shardings(model, mesh, rules) -> tuple:
    """(trained, frozen) NamedShardings of the model's parameters, by the rules table."""
    return peft.split(model, sharding_lib.param_shardings(abstract_params(model), mesh,
                                                          rules)["params"])


def shardings(model, tx, mesh, rules) -> TrainState:
    """NamedShardings of every TrainState leaf: params by the rules table, optimizer moments
    like their params, scalars (step, counts) replicated."""
    param_sh = param_shardings(model, mesh, rules)[0]
    abs_opt = jax.eval_shape(tx.init, trained_params(model))
    replicated = sharding_lib.replicated(mesh)
    # Frozen parameters (optim.freeze) hold a MaskedNode, not a moment, in the state.
    masked = lambda x: isinstance(x, optax.MaskedNode)  # noqa: E731
    opt_sh = optax.tree_map_params(tx, lambda x, s: x if masked(x) else s, abs_opt, param_sh,
                                   transform_non_params=lambda _: replicated, is_leaf=masked)
    return TrainState(step=replicated, params=param_sh, opt_state=opt_sh)


def abstract(model, tx, state_shardings: TrainState) -> TrainState:
    """ShapeDtypeStructs with shardings: the restore target for checkpoints."""
    params = trained_params(model)
    shapes = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                        opt_state=jax.eval_shape(tx.init, params))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        shapes, state_shardings)


def create(params, tx, state_shardings: TrainState) -> TrainState:
    """A fresh state around (already placed) params, created in its shardings."""
    make = jax.jit(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)),
                   out_shardings=state_shardings)
    return make(params)
