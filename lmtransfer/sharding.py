"""Device mesh, logical-axis rules and sharded state creation.

Models name their axes logically (`embed`, `heads`, `mlp`, ...); one rules table in the config
maps each logical name to a mesh axis (`data`, `fsdp`, `tensor`) or to None (replicated).
Changing parallelism is therefore one config line, never a model change.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec

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
        raise ValueError(f"config.mesh has unknown axes {sorted(unknown)}; allowed: {MESH_AXES}")
    sizes = [int(spec.get(a, 1)) for a in MESH_AXES]
    fill = [a for a, s in zip(MESH_AXES, sizes, strict=True) if s == -1]
    if len(fill) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"config.mesh={dict(spec)}: sizes must be positive, at most one may be -1")
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
    """Shardings of a (boxed, possibly abstract) variable tree, as an *unboxed* tree."""
    return logical_to_shardings(nn.get_partition_spec(abstract_variables), mesh, rules)


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
