"""Device mesh, logical-axis rules and sharded state creation.

Models name their axes logically (`embed`, `heads`, `mlp`, ...); one rules table in the config
maps each logical name to a mesh axis (`data`, `fsdp`, `tensor`) or to None (replicated).
Changing parallelism is therefore one config line, never a model change.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from lmtransfer.errors import ConfigError

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# Parameters shard `embed` over fsdp and the head/mlp/vocab dimensions over tensor; activations
# shard the batch over data x fsdp and follow the tensor split inside attention and the MLP.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("activation_batch", ("data", "fsdp")),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv", None),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("embed_out", None),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),  # grouped-query attention's key/value heads
    ("kv", None),
    ("mlp", "tensor"),
    ("labels", None),
    ("positions", None),
    ("token_types", None),
)


def mesh_shape(spec: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """Resolves a `{data, fsdp, tensor}` size mapping; one entry may be -1 to use the rest."""
    unknown = set(spec) - set(MESH_AXES)
    if unknown:
        raise ConfigError(f"config.mesh has unknown axes {sorted(unknown)}; allowed: {MESH_AXES}")
    sizes = [int(spec.get(a, 1)) for a in MESH_AXES]
    fill = [a for a, s in zip(MESH_AXES, sizes, strict=True) if s == -1]
    if len(fill) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ConfigError(f"config.mesh={dict(spec)}: sizes must be positive, at most one "
                          "may be -1")
    fixed = math.prod(s for s in sizes if s != -1)
    if fill:
        if num_devices % fixed:
            raise ValueError(
                f"config.mesh={dict(spec)}: {num_devices} devices are not divisible by {fixed}")
        sizes[MESH_AXES.index(fill[0])] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"config.mesh={dict(spec)} needs {math.prod(sizes)} devices but {num_devices} are "
            "available; set one axis to -1 to fill the rest")
    return tuple(sizes)


def make_mesh(spec: Mapping[str, int], devices: Sequence[jax.Device] | None = None):
    """A mesh with axes ('data', 'fsdp', 'tensor') of Auto type (linen constraints need Auto)."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = mesh_shape(spec, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def rules_from_config(rules) -> tuple[tuple[str, Any], ...]:
    """Normalises the config's rules (lists from JSON/CLI become tuples) and checks mesh axes."""
    out = []
    for i, rule in enumerate(rules):
        if len(rule) != 2:
            raise ValueError(
                f"config.sharding_rules[{i}]={rule!r}: expected (logical_name, mesh_axes)")
        name, axes = rule
        axes_t = tuple(axes) if isinstance(axes, (list, tuple)) else axes
        for a in (axes_t if isinstance(axes_t, tuple) else (axes_t,)):
            if a is not None and a not in MESH_AXES:
                raise ValueError(
                    f"config.sharding_rules[{i}]: {name!r} maps to unknown mesh axis {a!r}; "
                    f"use one of {MESH_AXES} or None")
        out.append((str(name), axes_t))
    return tuple(out)


@contextlib.contextmanager
def use_mesh(mesh, rules=DEFAULT_RULES):
    """Makes `mesh` the current mesh and `rules` the logical-axis rules (for constraints)."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


def unbox(tree):
    """Strips flax's logical-axis boxes without applying sharding constraints (safe on
    abstract trees and inside a mesh context, unlike `nn.unbox`)."""
    return jax.tree.map(lambda x: x.value if isinstance(x, nn.meta.AxisMetadata) else x, tree,
                        is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def logical_to_shardings(logical_specs, mesh, rules=DEFAULT_RULES):
    """Pytree of logical PartitionSpecs -> pytree of NamedShardings on `mesh`."""
    return nn.logical_to_mesh_sharding(logical_specs, mesh, rules)


def param_shardings(abstract_variables, mesh, rules=DEFAULT_RULES):
    """Shardings of a (boxed, possibly abstract) variable tree, as an *unboxed* tree.

    A dimension its mesh axes don't divide (e.g. 2 key/value heads of grouped-query attention
    on tensor=4) is replicated instead, with a log line: the rules table stays one table for
    every model, and activations follow their parameters."""
    specs = nn.get_partition_spec(abstract_variables)
    shapes = unbox(abstract_variables)
    logged = set()

    def fit(spec, leaf):
        if not isinstance(spec, PartitionSpec):
            return spec
        names = [n if isinstance(n, str) else None for n in spec]
        axes = list(nn.logical_to_mesh_axes(tuple(names), rules))
        for d, (name, ax) in enumerate(zip(names, axes, strict=True)):
            size = math.prod(mesh.shape[a] for a in (ax if isinstance(ax, tuple) else (ax,))
                             if a is not None)
            if size > 1 and leaf.shape[d] % size:
                axes[d] = None
                if (name, leaf.shape[d]) not in logged:
                    logged.add((name, leaf.shape[d]))
                    log.info("sharding: %s of size %d does not divide mesh axes %s (size %d); "
                             "replicated", name, leaf.shape[d], ax, size)
        return NamedSharding(mesh, PartitionSpec(*axes))

    return jax.tree.map(fit, specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def init_sharded(init_fn, mesh, rules=DEFAULT_RULES, *args):
    """Runs `init_fn(*args)` so every parameter is created directly in its sharding.

    `jax.eval_shape` gives the boxed structure with logical axis names; those become
    NamedShardings, and the jitted init writes each shard straight to its device (no
    full-size host copy, so models larger than one device's memory can be created).
    Returns `(variables, shardings)`, both unboxed plain pytrees.
    """
    abstract = jax.eval_shape(init_fn, *args)
    shardings = param_shardings(abstract, mesh, rules)
    with use_mesh(mesh, rules):
        variables = jax.jit(lambda *a: nn.unbox(init_fn(*a)), out_shardings=shardings)(*args)
    return variables, shardings


def put_sharded(tree, shardings):
    """Places a host (numpy) pytree onto devices with the given shardings.

    Each process only materialises the shards of its addressable devices, so this also works
    on multi-host meshes.
    """

    def put(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree, shardings)


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
