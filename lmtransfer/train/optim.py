"""The optimizer from config: clip by global norm -> AdamW (decay masked off LayerNorm and
biases) with linear warmup then linear / cosine / constant decay.

`optim.freeze` (a regex searched in each parameter path, e.g. `embeddings/`) leaves the
matching parameters as they are: no update, no weight decay, no optimizer state, and they
don't count in the clipped norm. `optim.layer_decay` < 1 is layer-wise learning-rate decay as
ELECTRA and DeBERTa fine-tune: `layer_{i}` learns at lr x decay^(L - i), the embeddings at
lr x decay^(L + 1), the head (and anything above the layers) at lr.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from lmtransfer.errors import ConfigError

DECAYS = ("linear", "cosine", "constant")


class Schedule:
    """Linear warmup to `config.optim.lr`, then linear / cosine / constant decay, as a function
    of (step, run scalars): the peak lr, warmup and total steps are arguments of the train step
    (`scalars`), not constants compiled into it, so the runs of a sweep that differ only in
    them (learning rates, seeds, dataset sizes) share one executable per shape. The formulas
    are optax's `join_schedules` of `linear_schedule` and `*_decay_schedule`."""

    def __init__(self, c, total_steps: int):
        if c.decay not in DECAYS:
            raise ConfigError(f"config.optim.decay={c.decay!r}; use one of {sorted(DECAYS)}")
        warmup = int(c.warmup_steps) if c.warmup_steps else int(round(c.warmup_ratio *
                                                                      total_steps))
        self.decay = c.decay
        self.scalars = {"lr": np.float32(c.lr), "warmup": np.int32(min(warmup, total_steps)),
                        "total": np.int32(total_steps)}

    def __call__(self, step, scalars):
        lr, warmup = scalars["lr"], scalars["warmup"]
        rest = jnp.maximum(scalars["total"] - warmup, 1).astype(jnp.float32)
        t = jnp.clip(step - warmup, 0, rest)
        if self.decay == "linear":
            decayed = lr * (1 - t / rest)
        elif self.decay == "cosine":
            decayed = lr * (0.5 * (1 + jnp.cos(jnp.pi * t / rest)))
        else:
            decayed = lr * jnp.ones_like(t)
        warm = -lr * (1 - jnp.clip(step, 0, warmup) / jnp.maximum(warmup, 1)) + lr
        return jnp.where(step < warmup, warm, decayed)


def decay_mask(params):
    """True for weights that get weight decay: not biases, not LayerNorm scales."""
    def keep(path, _):
        name = getattr(path[-1], "key", str(path[-1]))
        return name not in ("bias", "scale")

    return jax.tree_util.tree_map_with_path(keep, params)


def _path(path) -> str:
    return "/".join(getattr(k, "key", str(k)) for k in path)


def frozen_labels(pattern: str):
    """params -> a tree of "frozen" / "train" labels by `pattern` (config.optim.freeze)."""
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ConfigError(f"config.optim.freeze={pattern!r} is not a regex: {e}") from None

    def labels(params):
        out = jax.tree_util.tree_map_with_path(
            lambda path, _: "frozen" if regex.search(_path(path)) else "train", params)
        if not isinstance(params, dict):  # optax.tree_map_params' placeholder: no paths
            return out
        values = jax.tree.leaves(out)
        if "frozen" not in values:
            raise ConfigError(f"config.optim.freeze={pattern!r} matches no parameter; paths "
                              f"look like {', '.join(_path(p) for p, _ in _examples(params))}")
        if "train" not in values:
            raise ConfigError(f"config.optim.freeze={pattern!r} freezes every parameter")
        return out

    return labels


def _examples(params, n=4):
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return flat[:: max(len(flat) // n, 1)][:n]


def layer_scales(params, decay: float):
    """A tree of lr multipliers: decay^(depth from the top), counted over `layer_{i}`."""
    flat = traverse_util.flatten_dict(params)
    tops = {k[0] for k in flat}
    shared = sorted(t for t in tops if t.startswith("shared_layer"))
    if shared:
        raise ConfigError(f"config.optim.layer_decay={decay}: this model shares its layers "
                          f"({', '.join(shared)}, ALBERT), so they have no single depth; "
                          "use layer_decay=1")
    depth = {t: int(m.group(1)) + 1 for t in tops if (m := re.fullmatch(r"layer_(\d+)", t))}
    if not depth:
        raise ConfigError(f"config.optim.layer_decay={decay}: the model has no layer_<i> "
                          "modules to decay over")
    top = max(depth.values()) + 1

    def scale(top_module: str) -> float:
        if top_module in depth:
            return decay ** (top - depth[top_module])
        return decay ** top if "embed" in top_module else 1.0  # embeddings: depth 0

    return traverse_util.unflatten_dict({k: scale(k[0]) for k in flat})


def scale_by_layer(decay: float) -> optax.GradientTransformation:
    """Multiplies each update by its layer's lr factor (`layer_scales`): the same as a
    per-layer learning rate for AdamW, whose decoupled weight decay scales with it too."""
    def init(params):
        if isinstance(params, dict):  # not optax.tree_map_params' placeholder
            layer_scales(params, decay)  # a model it can't decay fails here, before training
        return optax.EmptyState()

    def update(updates, state, params=None):
        factors = layer_scales(updates, decay)
        return jax.tree.map(lambda u, f: u * f, updates, factors), state

    return optax.GradientTransformation(init, update)


def make(c, total_steps: int) -> tuple[optax.GradientTransformation, Schedule]:
    """(the update at learning rate 1, the schedule): the train step multiplies the update by
    the schedule's learning rate (AdamW's update, decoupled weight decay included, is linear in
    it, and so are layer-wise decay and freezing)."""
    lr = Schedule(c, total_steps)
    parts = []
    if c.max_grad_norm:
        parts.append(optax.clip_by_global_norm(c.max_grad_norm))
    # a constant schedule keeps the optimizer state's structure (and old checkpoints) as it was
    parts.append(optax.adamw(optax.constant_schedule(1.0), b1=c.b1, b2=c.b2, eps=c.eps,
                             weight_decay=c.weight_decay, mask=decay_mask))
    decay = c.get("layer_decay", 1.0)
    if not 0 < decay <= 1:
        raise ConfigError(f"config.optim.layer_decay={decay} must be in (0, 1]")
    tx = optax.chain(*parts)
    if c.get("freeze", ""):
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                   frozen_labels(c.freeze))
    if decay < 1:  # on the whole tree (frozen updates are 0), so depths count every layer
        tx = optax.chain(tx, scale_by_layer(decay))
    return tx, lr
