"""What every lmtransfer model shares: its config's methods and the model contract.

A family is a frozen-dataclass config (HF's field names plus lmtransfer's compute settings
`dtype`, `param_dtype`, `attention`, `remat`) deriving from `ConfigBase`, and a linen module
deriving from `Model`: `model.apply({"params": p}, input_ids, attention_mask, token_type_ids,
position_ids, deterministic, segment_ids, mlm_positions)` returns a `BertOutput`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from lmtransfer.models import layers, lora


def check_config(c) -> None:
    """Checks the fields every config shares (heads, activation, attention, dtypes)."""
    if not getattr(c, "attention_head_dim", 0) and c.hidden_size % c.num_attention_heads:
        raise ValueError(f"hidden_size={c.hidden_size} is not divisible by "
                         f"num_attention_heads={c.num_attention_heads}")
    if c.hidden_act not in layers.ACTIVATIONS:
        raise ValueError(f"hidden_act={c.hidden_act!r} is not supported; use one of "
                         f"{sorted(layers.ACTIVATIONS)}")
    if c.attention not in layers.ATTENTION_IMPLS:
        raise ValueError(f"attention={c.attention!r}; use one of {layers.ATTENTION_IMPLS}")
    for f in ("dtype", "param_dtype"):
        try:
            jnp.dtype(getattr(c, f))
        except TypeError:
            raise ValueError(f"{f}={getattr(c, f)!r} is not a dtype; use 'float32' or "
                             "'bfloat16'") from None


class ConfigBase:
    """Methods of every model config (a frozen dataclass)."""

    def __post_init__(self):
        check_config(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def replace(self, **kw):
        return dataclasses.replace(self, **kw)


class Model(nn.Module):
    """The contract tasks, the train step and checkpoints use: `config`, `head` (one of the
    family's HEADS) and `num_labels`; `arch` names the family in checkpoint metadata
    (`lmtransfer.models.ARCHS`)."""

    config: Any
    head: str | None = None
    num_labels: int = 2
    lora: Any = None  # a models.lora.LoraSpec: LoRA adapters on the matching dense layers
    arch: ClassVar[str] = ""
    HEADS: ClassVar[tuple] = (None,)

    def __post_init__(self):
        if self.head not in self.HEADS:
            raise ValueError(f"{self.arch} head={self.head!r}; use one of {self.HEADS}")
        super().__post_init__()

    # Every use of a model (train, eval, init, shapes, export) goes through these two.
    def apply(self, *args, **kwargs):
        with self._adapters():
            return super().apply(*args, **kwargs)

    def init_with_output(self, *args, **kwargs):
        with self._adapters():
            return super().init_with_output(*args, **kwargs)

    def _adapters(self):
        if self.lora is None:
            return contextlib.nullcontext()
        return nn.intercept_methods(lora.interceptor(self.lora))


def at_positions(x, mlm_positions):
    """[B, T, E] -> [B, P, E] at `mlm_positions` (all of x when None)."""
    if mlm_positions is None:
        return x
    return jnp.take_along_axis(x, mlm_positions[..., None], axis=1)


def encoder_inputs(input_ids, attention_mask, token_type_ids, position_ids, segment_ids):
    """Defaults for the optional inputs and the boolean attention mask."""
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
    if position_ids is None:
        position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
    if segment_ids is not None:
        mask = layers.attention_mask(segment_ids)
    else:  # [B, T] padding mask -> [B, 1, 1, T] for attention over keys.
        mask = attention_mask.astype(bool)[:, None, None, :]
    return token_type_ids, position_ids, mask
