"""LoRA (Hu et al. 2021) inside any lmtransfer model, without the model knowing.

A model whose `lora` field holds a `LoraSpec` runs its `init` and `apply` under a Flax method
interceptor: every `layers.DenseGeneral` whose path (`layer_3/attention/query`) matches
`spec.targets` gets two more parameters beside its kernel, `lora_a` [*in, r] and `lora_b`
[r, *out], and its output becomes

    y = x . W + b + (alpha / r) * (dropout(x) . lora_a) . lora_b

`lora_b` starts at zero, so step 0 is the base model. The factors carry the kernel's logical
axes (the rank axis is replicated), so they shard the way their kernel does. Dropout applies
only while a "dropout" rng is given (training), as every other dropout does.
"""

from __future__ import annotations

import dataclasses
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmtransfer.errors import ConfigError
from lmtransfer.models import layers

# The attention query and value projections: the LoRA paper's choice and PEFT's default for
# every family lmtransfer has (all of them name their projections the same way).
DEFAULT_TARGETS = r"attention/(query|value)$"


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: str = DEFAULT_TARGETS  # regex searched in each dense layer's path
    train: str = ""  # regex over parameter paths trained in full besides adapters and head

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def module_path(module) -> str:
    return "/".join(module.path)


def _uniform_init(fan_in: int):
    """PEFT's (kaiming_uniform with a=sqrt(5)) A init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _create(module: layers.DenseGeneral, spec: LoraSpec, x_shape, kernel):
    n_in = len(module._axes(len(x_shape)))
    names = module.names
    fan_in, fan_out = math.prod(kernel.shape[:n_in]), math.prod(kernel.shape[n_in:])
    if spec.rank > min(fan_in, fan_out):
        raise ConfigError(f"config.peft.rank={spec.rank} is larger than the matrix "
                          f"{module_path(module)} ({fan_in} x {fan_out}); use a rank <= "
                          f"{min(fan_in, fan_out)}")
    module.param("lora_a", nn.with_logical_partitioning(_uniform_init(fan_in),
                                                        names[:n_in] + (None,)),
                 kernel.shape[:n_in] + (spec.rank,), jnp.float32)
    module.param("lora_b", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                        (None,) + names[n_in:]),
                 (spec.rank,) + kernel.shape[n_in:], jnp.float32)


def _delta(module: layers.DenseGeneral, spec: LoraSpec, x):
    a = nn.meta.unbox(module.get_variable("params", "lora_a"))
    b = nn.meta.unbox(module.get_variable("params", "lora_b"))
    axis = module._axes(x.ndim)
    if spec.dropout and module.has_rng("dropout"):
        keep = layers.keep_mask(module.make_rng("dropout"), x.shape, spec.dropout)
        x = jnp.where(keep, x / (1.0 - spec.dropout), jnp.zeros_like(x))
    dtype = module.dtype
    h = jax.lax.dot_general(x.astype(dtype), a.astype(dtype),
                            ((axis, tuple(range(len(axis)))), ((), ())))
    return jax.lax.dot_general(h, b.astype(dtype), (((h.ndim - 1,), (0,)), ((), ()))) * \
        jnp.asarray(spec.scale, dtype)


def interceptor(spec: LoraSpec):
    regex = re.compile(spec.targets)

    def intercept(next_fun, args, kwargs, context):
        m = context.module
        if (not isinstance(m, layers.DenseGeneral)
                or context.method_name not in ("weights", "adapt")
                or not regex.search(module_path(m))):
            return next_fun(*args, **kwargs)
        if context.method_name == "weights":  # the compact method: params are made here
            kernel, bias = next_fun(*args, **kwargs)
            if not m.has_variable("params", "lora_a"):
                _create(m, spec, args[0], kernel)
            return kernel, bias
        x, y = args
        return next_fun(*args, **kwargs) + _delta(m, spec, x)

    return intercept


def dense_paths(model) -> list[str]:
    """The path of every dense layer of `model` (what `LoraSpec.targets` is matched to)."""
    seen = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, layers.DenseGeneral) and context.method_name == "weights":
            path = module_path(context.module)
            if path not in seen:
                seen.append(path)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(type(model)(model.config, head=model.head, num_labels=model.num_labels)
                       .init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
    return seen
