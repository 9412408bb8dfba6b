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
import optax
from flax import traverse_util

from lmtransfer.errors import ConfigError


def schedule(c, total_steps: int) -> optax.Schedule:
    """`c` = config.optim: lr, warmup_steps or warmup_ratio, decay."""
    warmup = int(c.warmup_steps) if c.warmup_steps else int(round(c.warmup_ratio * total_steps))
    warmup = min(warmup, total_steps)
    rest = max(total_steps - warmup, 1)
    decays = {
        "linear": optax.linear_schedule(c.lr, 0.0, rest),
        "cosine": optax.cosine_decay_schedule(c.lr, rest),
        "constant": optax.constant_schedule(c.lr),
    }
    if c.decay not in decays:
        raise ConfigError(f"config.optim.decay={c.decay!r}; use one of {sorted(decays)}")
    if warmup == 0:
        return decays[c.decay]
    return optax.join_schedules([optax.linear_schedule(0.0, c.lr, warmup), decays[c.decay]],
                                [warmup])


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


def make(c, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    lr = schedule(c, total_steps)
    parts = []
    if c.max_grad_norm:
        parts.append(optax.clip_by_global_norm(c.max_grad_norm))
    parts.append(optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
                             mask=decay_mask))
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
