"""Decoder-only causal LM in functional Flax linen: our GPT (GPT-2 layout: LayerNorm, GELU,
learned or rotary positions, tied output embeddings; Radford et al. 2019) and, by config,
the Llama family (RMSNorm, rotary with the checkpoint's rope settings, grouped-query
attention, SwiGLU, tied or untied output; `lmtransfer.models.llama`).

    model = Gpt(GptConfig.preset("gpt-tiny"))
    params = model.init(rng, ids)["params"]
    out = model.apply({"params": params}, ids, segment_ids=seg, position_ids=pos)
    out.logits  # [batch, length, vocab], float32

Same building blocks and logical axis names as BERT (lmtransfer.models.layers), so the same
sharding rules table applies. Packed rows pass `segment_ids` (0 = padding, k = k-th document)
and per-document `position_ids`: attention never crosses documents. Task heads pool at the
last real token (HF's *ForSequenceClassification), so padding may be on either side.
Generation passes a `cache` (one (k, v) per layer, `init_cache`) and `cache_index`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lmtransfer.models import heads as heads_lib
from lmtransfer.models import layers
from lmtransfer.models.base import ConfigBase, Model, check_config
from lmtransfer.models.bert import BertOutput, layer_class

HEADS = (None, "lm", "classification", "token_classification", "qa")
POSITIONS = ("learned", "rotary")
FAMILIES = ("gpt2", "llama", "mistral", "qwen2")  # the HF layout an export writes


@dataclasses.dataclass(frozen=True)
class GptConfig(ConfigBase):
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
    rotary_base: float = 10000.0  # rope theta
    # The Llama family's choices (defaults are GPT-2's).
    family: str = "gpt2"
    num_key_value_heads: int = 0  # 0: num_attention_heads (no grouped-query attention)
    attention_head_dim: int = 0  # 0: hidden_size // num_attention_heads
    norm: str = "layernorm"  # or "rmsnorm"
    mlp: str = "standard"  # or "gated" (SwiGLU)
    qkv_bias: bool = True
    out_bias: bool = True
    mlp_bias: bool = True
    tie_word_embeddings: bool = True
    rope_scaling: tuple = ()  # sorted (key, value) pairs of HF's rope_parameters scaling
    sliding_window: int = 0  # > 0: attend to the last `sliding_window` tokens only
    sliding_layers: tuple = ()  # layers with the window (empty: all, when sliding_window)
    classifier_dropout: float | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention: str = "auto"
    remat: bool = False

    def __post_init__(self):
        # JSON (checkpoint metadata) turns tuples into lists.
        for f in ("rope_scaling", "sliding_layers"):
            v = getattr(self, f)
            object.__setattr__(self, f, tuple(tuple(x) if isinstance(x, list) else x for x in v))
        check_config(self)
        for field, value, allowed in (("positions", self.positions, POSITIONS),
                                      ("family", self.family, FAMILIES),
                                      ("norm", self.norm, ("layernorm", "rmsnorm")),
                                      ("mlp", self.mlp, ("standard", "gated"))):
            if value not in allowed:
                raise ValueError(f"{field}={value!r}; use one of {allowed}")
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple "
                             f"of num_key_value_heads={self.num_key_value_heads}")

    @property
    def head_dim(self) -> int:
        return self.attention_head_dim or self.hidden_size // self.num_attention_heads

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def inv_freq(self) -> tuple | None:
        if self.positions != "rotary":
            return None
        return layers.rope_frequencies(self.head_dim, self.rotary_base, dict(self.rope_scaling))

    def window(self, layer: int) -> int:
        if not self.sliding_window or (self.sliding_layers and layer not in self.sliding_layers):
            return 0
        return self.sliding_window

    @classmethod
    def preset(cls, name: str, **overrides) -> GptConfig:
        from lmtransfer.models.llama import PRESETS as LLAMA

        presets = {**PRESETS, **LLAMA}
        if name not in presets:
            raise ValueError(f"unknown GPT preset {name!r}; available: {sorted(presets)}")
        return cls(**{**presets[name], **overrides})


PRESETS: dict[str, dict[str, Any]] = {
    "gpt-tiny": dict(vocab_size=1024, hidden_size=64, num_hidden_layers=2,
                     num_attention_heads=4, intermediate_size=256, max_position_embeddings=128),
    "gpt-mini": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=1024, max_position_embeddings=512),
    "gpt2": dict(),  # GPT-2 small, 124M with its 50257 vocabulary
    "gpt2-medium": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                        intermediate_size=4096),
}


def _norm(c: GptConfig, name: str):
    dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    if c.norm == "rmsnorm":
        return layers.rms_norm(c.layer_norm_eps, dtype, pdtype, name=name)
    return layers.layer_norm(c.layer_norm_eps, dtype, pdtype, name=name)


class GptBlock(nn.Module):
    config: GptConfig

    @nn.compact
    def __call__(self, x, mask, positions, deterministic, cache=None, cache_index=None):
        c = self.config
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        drop = layers.Dropout(c.hidden_dropout_prob)
        a = layers.SelfAttention(
            c.num_attention_heads, c.head_dim, c.initializer_range,
            c.attention_probs_dropout_prob, c.attention, dtype, pdtype, inv_freq=c.inv_freq,
            num_kv_heads=c.kv_heads, qkv_bias=c.qkv_bias, out_bias=c.out_bias,
            name="attention")(_norm(c, "attention_layer_norm")(x), mask, deterministic,
                              positions, cache, cache_index)
        if cache is not None:
            a, cache = a
        x = x + drop(a, deterministic=deterministic)
        mlp = (layers.GatedMlp(c.intermediate_size, c.hidden_act, c.initializer_range, dtype,
                               pdtype, use_bias=c.mlp_bias, name="mlp") if c.mlp == "gated" else
               layers.Mlp(c.intermediate_size, c.hidden_act, c.initializer_range, dtype, pdtype,
                          name="mlp"))
        h = mlp(_norm(c, "mlp_layer_norm")(x))
        x = layers.constrain(x + drop(h, deterministic=deterministic), layers.ACT_BTE)
        return x if cache is None else (x, cache)


def init_cache(config: GptConfig, batch: int, length: int, dtype=jnp.float32):
    """An empty KV cache: one (k, v) of [batch, length, kv_heads, head_dim] per layer."""
    shape = (batch, length, config.kv_heads, config.head_dim)
    return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))
                 for _ in range(config.num_hidden_layers))


class Gpt(Model):
    config: GptConfig
    head: str | None = "lm"
    num_labels: int = 0
    arch = "gpt"
    HEADS = HEADS

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, segment_ids=None, cache=None,
                 cache_index=None) -> BertOutput:
        """`cache` given: `attention_mask` [B, S] marks the cache slots that hold real tokens
        (after this call's writes), the new tokens go to slots cache_index..+T, and the
        output carries the updated cache."""
        del token_type_ids  # one segment type; the signature matches Bert's
        c = self.config
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        length = input_ids.shape[-1]
        if segment_ids is None:
            segment_ids = jnp.ones_like(input_ids) if attention_mask is None else attention_mask
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(length), input_ids.shape)
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
        block = layer_class(GptBlock, c.remat and cache is None, deterministic_argnum=4)
        new_cache = []
        masks = {w: self._mask(segment_ids, w, cache, cache_index, length)
                 for w in {c.window(i) for i in range(c.num_hidden_layers)}}
        for i in range(c.num_hidden_layers):
            mask = masks[c.window(i)]
            if cache is None:
                x = block(c, name=f"layer_{i}")(x, mask, position_ids, deterministic)
            else:
                x, layer_cache = block(c, name=f"layer_{i}")(x, mask, position_ids,
                                                             deterministic, cache[i], cache_index)
                new_cache.append(layer_cache)
        x = _norm(c, "final_layer_norm")(x)
        out = BertOutput(last_hidden_state=x, cache=tuple(new_cache) if cache else None)
        if self.head == "lm":
            if c.tie_word_embeddings:
                logits = wte.attend(x.astype(dtype))
            else:
                logits = layers.dense(c.vocab_size, ("embed", "vocab"), use_bias=False,
                                      name="lm_head", **kw)(x)
            out = out.replace(logits=nn.with_logical_constraint(
                logits.astype(jnp.float32),
                ("activation_batch", "activation_length", "activation_vocab")))
        elif self.head is not None:
            out = heads_lib.apply_decoder_head(self.head, c, self.num_labels, out,
                                               segment_ids > 0, deterministic)
        return out

    @staticmethod
    def _mask(segment_ids, window, cache, cache_index, length):
        if cache is None:
            return layers.attention_mask(segment_ids, causal=True, window=window)
        slots = jnp.arange(segment_ids.shape[-1])
        causal = layers.causal_mask(cache_index + jnp.arange(length), slots, window)
        return (segment_ids[:, None, None, :] > 0) & causal[None, None]
