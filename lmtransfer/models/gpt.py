"""GPT-style decoder-only LM in functional Flax linen: causal attention, pre-LayerNorm, learned
or rotary positions, output logits tied to the input embeddings (Radford et al. 2019).

    model = Gpt(GptConfig.preset("gpt-tiny"))
    params = model.init(rng, ids)["params"]
    out = model.apply({"params": params}, ids, segment_ids=seg, position_ids=pos)
    out.logits  # [batch, length, vocab], float32

Same building blocks and logical axis names as BERT (lmtransfer.models.layers), so the same
sharding rules table applies. Packed rows pass `segment_ids` (0 = padding, k = k-th document)
and per-document `position_ids`: attention never crosses documents.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lmtransfer.models import layers
from lmtransfer.models.bert import BertOutput, check_config, layer_class

HEADS = ("lm",)
POSITIONS = ("learned", "rotary")


@dataclasses.dataclass(frozen=True)
class GptConfig:
    vocab_size: int = 50257
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 1024
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02
    positions: str = "learned"  # one of POSITIONS
    rotary_base: float = 10000.0
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention: str = "auto"
    remat: bool = False

    def __post_init__(self):
        check_config(self)
        if self.positions not in POSITIONS:
            raise ValueError(f"positions={self.positions!r}; use one of {POSITIONS}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def replace(self, **kw) -> GptConfig:
        return dataclasses.replace(self, **kw)

    @classmethod
    def preset(cls, name: str, **overrides) -> GptConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown GPT preset {name!r}; available: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    "gpt-tiny": dict(vocab_size=1024, hidden_size=64, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=256, max_position_embeddings=128),
    "gpt-mini": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=1024, max_position_embeddings=512),
    "gpt2": dict(),  # GPT-2 small, 124M with its 50257 vocabulary
    "gpt2-medium": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                        intermediate_size=4096),
}


class GptBlock(nn.Module):
    config: GptConfig

    @nn.compact
    def __call__(self, x, mask, positions, deterministic):
        c = self.config
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        drop = layers.Dropout(c.hidden_dropout_prob)
        ln = lambda name: layers.layer_norm(c.layer_norm_eps, dtype, pdtype, name=name)  # noqa: E731
        a = layers.SelfAttention(
            c.num_attention_heads, c.head_dim, c.initializer_range,
            c.attention_probs_dropout_prob, c.attention, dtype, pdtype,
            rotary_base=c.rotary_base if c.positions == "rotary" else 0.0,
            name="attention")(ln("attention_layer_norm")(x), mask, deterministic, positions)
        x = x + drop(a, deterministic=deterministic)
        h = layers.Mlp(c.intermediate_size, c.hidden_act, c.initializer_range, dtype, pdtype,
                       name="mlp")(ln("mlp_layer_norm")(x))
        return layers.constrain(x + drop(h, deterministic=deterministic), layers.ACT_BTE)


class Gpt(nn.Module):
    config: GptConfig
    head: str | None = "lm"
    num_labels: int = 0
    arch = "gpt"

    def __post_init__(self):
        if self.head not in HEADS:
            raise ValueError(f"GPT head={self.head!r}; use one of {HEADS}")
        super().__post_init__()

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, segment_ids=None) -> BertOutput:
        del token_type_ids  # one segment type; the signature matches Bert's
        c = self.config
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        if segment_ids is None:
            segment_ids = jnp.ones_like(input_ids) if attention_mask is None else attention_mask
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
        kw = dict(init_std=c.initializer_range, dtype=dtype, param_dtype=pdtype)
        wte = layers.embed(c.vocab_size, c.hidden_size, ("vocab", "embed"),
                           name="token_embeddings", **kw)
        table = layers.constrain(wte.embedding, ("vocab", None))  # see BertEmbeddings
        x = jnp.take(table, input_ids, axis=0).astype(dtype)
        if c.positions == "learned":
            x = x + layers.embed(c.max_position_embeddings, c.hidden_size, ("positions", None),
                                 name="position_embeddings", **kw)(position_ids)
        x = layers.Dropout(c.hidden_dropout_prob)(x, deterministic)
        x = layers.constrain(x, layers.ACT_BTE)
        mask = layers.attention_mask(segment_ids, causal=True)
        block = layer_class(GptBlock, c.remat, deterministic_argnum=4)
        for i in range(c.num_hidden_layers):
            x = block(c, name=f"layer_{i}")(x, mask, position_ids, deterministic)
        x = layers.layer_norm(c.layer_norm_eps, dtype, pdtype, name="final_layer_norm")(x)
        logits = nn.with_logical_constraint(
            wte.attend(x.astype(dtype)).astype(jnp.float32),
            ("activation_batch", "activation_length", "activation_vocab"))
        return BertOutput(last_hidden_state=x, logits=logits)
