"""The optimizer from config: clip by global norm -> AdamW (decay masked off LayerNorm and
biases) with linear warmup then linear / cosine / constant decay."""

from __future__ import annotations

import jax
import optax


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
        raise ValueError(f"config.optim.decay={c.decay!r}; use one of {sorted(decays)}")
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


def make(c, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    lr = schedule(c, total_steps)
    parts = []
    if c.max_grad_norm:
        parts.append(optax.clip_by_global_norm(c.max_grad_norm))
    parts.append(optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
                             mask=decay_mask))
    return optax.chain(*parts), lr
