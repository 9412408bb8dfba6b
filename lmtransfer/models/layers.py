"""Transformer building blocks with logical axis names on every parameter and activation.

Parameter axes: vocab, embed, embed_out, heads, kv, mlp, labels, positions, token_types.
Activation axes carry an `activation_` prefix so params and activations can shard differently
(e.g. params' `embed` over fsdp while activations' embed stays whole).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ACT_BTE = ("activation_batch", "activation_length", "activation_embed")
ACT_BTNH = ("activation_batch", "activation_length", "activation_heads", "activation_kv")
# Key/value heads are left to follow their kernel (sharded on tensor only when they divide it).
ACT_BTKH = ("activation_batch", "activation_length", None, "activation_kv")
ACT_BTM = ("activation_batch", "activation_length", "activation_mlp")


def gelu(x):
    """Exact GELU, x Φ(x), in PyTorch's erf form (HF "gelu"): `nn.gelu(approximate=False)`
    goes through erfc, which XLA:CPU expands into exp and selects; this form made the MiniLM
    b32 x 128 train step 7% faster (docs/performance.md) and matches PyTorch as closely."""
    return x * (0.5 * (1.0 + jax.lax.erf(x * 0.7071067811865476)))


ACTIVATIONS = {
    "gelu": gelu,
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
    "gelu_fast": functools.partial(nn.gelu, approximate=True),
    "relu": nn.relu,
    "silu": nn.silu,
    "swish": nn.silu,
    "tanh": jnp.tanh,
}

ATTENTION_IMPLS = ("auto", "xla", "cudnn", "explicit")


def attention_mask(segment_ids, causal: bool = False, window: int = 0):
    """Boolean attention mask from [B, T] segment ids (0 = padding, k > 0 = document k).

    A token attends to tokens of its own document only (so packed documents never see each
    other), with `causal` only to earlier ones, and with `window` > 0 only to the last
    `window` (itself included: Mistral's sliding window). Returns [B, 1, T, T] (True =
    attend); an attention_mask [B, T] of 0/1 is the one-document case.
    """
    seg = jnp.asarray(segment_ids)
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)
    if causal:
        q = jnp.arange(seg.shape[-1])
        same &= causal_mask(q, q, window)[None]
    return same[:, None]


def causal_mask(query_pos, key_pos, window: int = 0):
    """[Tq, Tk] True where key position <= query position (and within `window`)."""
    diff = query_pos[:, None] - key_pos[None, :]
    return (diff >= 0) & (diff < window) if window else diff >= 0


def rope_frequencies(head_dim: int, theta: float, scaling: dict | None = None) -> tuple:
    """Rotary inverse frequencies (theta ** (-2i / head_dim)), scaled like HF's `rope_type`
    'linear' (positions / factor) or 'llama3' (Llama 3.1's wavelength-banded smoothing).
    A tuple of floats, so a module can hold it as a static attribute."""
    import numpy as np

    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "linear":
        inv = inv / scaling["factor"]
    elif kind == "llama3":
        factor, low, high = (scaling[k] for k in ("factor", "low_freq_factor",
                                                  "high_freq_factor"))
        context = scaling["original_max_position_embeddings"]
        wavelen = 2 * np.pi / inv
        scaled = np.where(wavelen > context / low, inv / factor, inv)
        smooth = (context / wavelen - low) / (high - low)
        medium = (wavelen >= context / high) & (wavelen <= context / low)
        inv = np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    elif kind != "default":
        raise ValueError(f"rope_type={kind!r} is not supported (default, linear, llama3)")
    return tuple(float(f) for f in inv.astype(np.float32))


def rotary(x, positions, inv_freq):
    """Rotary position embedding (Su et al. 2021) of [B, T, heads, head_dim] by [B, T]
    positions, rotating the two halves of head_dim (the GPT-NeoX / Llama layout)."""
    half = x.shape[-1] // 2
    freq = jnp.asarray(inv_freq, jnp.float32)
    angle = positions.astype(jnp.float32)[..., None, None] * freq  # [B, T, 1, half]
    sin, cos = jnp.sin(angle), jnp.cos(angle)
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def _mix32(x):
    """A 32-bit integer finaliser (Wellons' lowbias32: full avalanche, bias ~0.1)."""
    x = (x ^ (x >> 16)) * jnp.uint32(0x21F0AAAD)
    x = (x ^ (x >> 15)) * jnp.uint32(0x735A2D97)
    return x ^ (x >> 15)


def keep_mask(key, shape, rate: float):
    """Boolean dropout mask (True = keep, probability 1 - rate) from a counter-based hash.

    Element i's bit is hash(hash(i ^ k0) + k1) for two words k0, k1 drawn from `key`: ~20
    vectorised integer ops per element, where `jax.random.bernoulli`'s threefry costs ~30x
    more on CPU (a third of a BERT training step). It depends on the global element index
    only, so a sharded array gets the same mask as an unsharded one. Indices wrap at 2**32
    elements per call.
    """
    k0, k1 = jax.random.bits(key, (2,), jnp.uint32)
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for d in reversed(range(len(shape))):
        index += jax.lax.broadcasted_iota(jnp.uint32, shape, d) * jnp.uint32(stride % 2**32)
        stride *= shape[d]
    bits = _mix32(_mix32(index ^ k0) + k1)
    return bits >= jnp.uint32(min(round(rate * 2**32), 2**32 - 1))


class Dropout(nn.Module):
    """Inverted dropout like `nn.Dropout` (same arguments, rng stream "dropout"), with the
    fast `keep_mask`."""

    rate: float
    deterministic: bool | None = None

    @nn.compact
    def __call__(self, x, deterministic: bool | None = None):
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if deterministic or self.rate == 0.0:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep = keep_mask(self.make_rng("dropout"), x.shape, self.rate)
        return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros_like(x))


def constrain(x, names):
    return nn.with_logical_constraint(x, names)


class DenseGeneral(nn.Module):
    """y = x . kernel + bias, contracting `axis` of x; kernel axes named `names`.

    (Not nn.DenseGeneral: that initialises a flattened kernel and reshapes it, which breaks
    logical sharding constraints on multi-dimensional kernels under a mesh.)
    """

    features: int | tuple[int, ...]
    names: tuple[str, ...]
    init_std: float
    axis: int | tuple[int, ...] = -1
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def weights(self, x_shape):
        """(kernel, bias or None) for an input of shape `x_shape`, created on first use."""
        features = self.features if isinstance(self.features, tuple) else (self.features,)
        kernel = self.param(
            "kernel", nn.with_logical_partitioning(nn.initializers.normal(self.init_std),
                                                   self.names),
            tuple(x_shape[a] for a in self._axes(len(x_shape))) + features, self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(
                nn.initializers.zeros_init(), self.names[-len(features):]), features,
                self.param_dtype)
        return kernel, bias

    def _axes(self, ndim):
        axis = self.axis if isinstance(self.axis, tuple) else (self.axis,)
        return tuple(a % ndim for a in axis)

    def adapt(self, x, y):
        """The layer's output `y` for input `x`, plus an adapter's where one is attached
        (lmtransfer.models.lora intercepts this); callers that fuse several layers' matmuls
        call it on each part."""
        return y

    def __call__(self, x):
        kernel, bias = self.weights(x.shape)
        axis = self._axes(x.ndim)
        y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                                ((axis, tuple(range(len(axis)))), ((), ())))
        return self.adapt(x, y if bias is None else y + bias.astype(self.dtype))


def dense(features, names, *, init_std, dtype, param_dtype, axis=-1, name=None, use_bias=True):
    """DenseGeneral whose kernel is named `names` (input axes then output axes)."""
    return DenseGeneral(features, tuple(names), init_std, axis=axis, use_bias=use_bias,
                        dtype=dtype, param_dtype=param_dtype, name=name)


def layer_norm(eps, dtype, param_dtype, name=None):
    return nn.LayerNorm(
        epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)),
    )


def embed(num, features, names, *, init_std, dtype, param_dtype, name):
    return nn.Embed(
        num, features, dtype=dtype, param_dtype=param_dtype, name=name,
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(init_std), names),
    )


def dot_product_attention(q, k, v, mask, *, impl: str, dropout_rate: float = 0.0,
                          deterministic: bool = True, dropout=None):
    """Scaled dot-product attention over [batch, length, heads, head_dim] inputs.

    `mask` is boolean, broadcastable to [batch, heads, q_len, kv_len] (True = attend).
    `impl='auto'` uses the fused `jax.nn.dot_product_attention` (XLA picks its kernel) unless
    attention-probability dropout is active, which fused kernels don't offer; then the explicit
    softmax path runs, so training keeps BERT's attention dropout.
    """
    needs_dropout = dropout_rate > 0.0 and not deterministic
    if impl == "cudnn" and needs_dropout:
        raise ValueError("model.attention='cudnn' has no attention dropout; set "
                         "model.attention_probs_dropout_prob=0 or model.attention='auto'")
    if impl in ("xla", "cudnn") or (impl == "auto" and not needs_dropout):
        return jax.nn.dot_product_attention(
            q, k, v, mask=mask, implementation=None if impl == "auto" else impl)
    depth = q.shape[-1]
    if k.shape[2] != q.shape[2]:  # grouped-query attention: each kv head serves a group
        k, v = (jnp.repeat(t, q.shape[2] // k.shape[2], axis=2) for t in (k, v))
    # Heads-major [b, n, t, h] operands: batched matmuls over contiguous (b, n) run ~4x
    # faster on CPU than einsums over the [b, t, n, h] layout.
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    logits = jnp.einsum("bnqh,bnkh->bnqk", q, k) / jnp.sqrt(depth).astype(q.dtype)
    logits = jnp.where(mask, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    if needs_dropout:
        probs = dropout(probs)
    return jnp.einsum("bnqk,bnkh->bnqh", probs, v).transpose(0, 2, 1, 3)


class SelfAttention(nn.Module):
    """Multi-head self-attention; with `num_kv_heads` < `num_heads`, grouped-query attention
    (each group of num_heads / num_kv_heads query heads shares one key/value head).

    With `cache` ((k, v), each [B, S, kv_heads, head_dim]) the new keys and values are written
    at `cache_index` and attention runs over the whole cache (`mask` is then [B, 1, T, S]);
    the call returns (output, new cache)."""

    num_heads: int
    head_dim: int
    init_std: float
    dropout_rate: float
    impl: str = "auto"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    inv_freq: tuple | None = None  # rotary frequencies (then `positions` is needed)
    num_kv_heads: int = 0  # 0: num_heads
    qkv_bias: bool = True
    out_bias: bool = True

    @nn.compact
    def __call__(self, x, mask, deterministic: bool, positions=None, cache=None,
                 cache_index=None):
        kv_heads = self.num_kv_heads or self.num_heads
        kw = dict(init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype)
        projections = [dense((n, self.head_dim), ("embed", names, "kv"),
                             use_bias=self.qkv_bias, name=name, **kw)
                       for name, n, names in (("query", self.num_heads, "heads"),
                                              ("key", kv_heads, "kv_heads"),
                                              ("value", kv_heads, "kv_heads"))]
        weights = [p.weights(x.shape) for p in projections]
        # One [embed, (heads + 2 kv_heads) * kv] matmul instead of three: a wider matmul runs
        # closer to peak on CPU (and saves two reads of x); params stay three HF-shaped sets.
        kernel = jnp.concatenate([w for w, _ in weights], axis=1).astype(self.dtype)
        qkv = jax.lax.dot_general(x.astype(self.dtype), kernel, (((x.ndim - 1,), (0,)), ((), ())))
        if self.qkv_bias:
            qkv = qkv + jnp.concatenate([b for _, b in weights]).astype(self.dtype)
        n = self.num_heads
        q, k, v = (p.adapt(x, t) for p, t in zip(projections, (
            qkv[..., :n, :], qkv[..., n:n + kv_heads, :], qkv[..., n + kv_heads:, :]),
            strict=True))
        q = constrain(q, ACT_BTNH)
        k, v = constrain(k, ACT_BTKH), constrain(v, ACT_BTKH)
        if self.inv_freq:
            q, k = rotary(q, positions, self.inv_freq), rotary(k, positions, self.inv_freq)
        if cache is not None:
            start = (0, cache_index, 0, 0)
            k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), start)
            v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), start)
            cache = (k, v)
            k, v = k.astype(self.dtype), v.astype(self.dtype)
        drop = Dropout(self.dropout_rate, deterministic=False, name="attention_dropout")
        out = dot_product_attention(q, k, v, mask, impl=self.impl, dropout_rate=self.dropout_rate,
                                    deterministic=deterministic, dropout=drop)
        out = constrain(out, ACT_BTNH)
        out = dense(x.shape[-1], ("heads", "kv", "embed"), axis=(-2, -1), use_bias=self.out_bias,
                    name="out", **kw)(out)
        out = constrain(out, ACT_BTE)
        return out if cache is None else (out, cache)


class Mlp(nn.Module):
    intermediate_size: int
    activation: str
    init_std: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype)
        h = dense(self.intermediate_size, ("embed", "mlp"), name="wi", **kw)(x)
        h = constrain(ACTIVATIONS[self.activation](h), ACT_BTM)
        return constrain(dense(x.shape[-1], ("mlp", "embed"), name="wo", **kw)(h), ACT_BTE)


class GatedMlp(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020; Llama): down(act(gate(x)) * up(x))."""

    intermediate_size: int
    activation: str
    init_std: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        kw = dict(init_std=self.init_std, dtype=self.dtype, param_dtype=self.param_dtype,
                  use_bias=self.use_bias)
        gate = dense(self.intermediate_size, ("embed", "mlp"), name="gate", **kw)(x)
        up = dense(self.intermediate_size, ("embed", "mlp"), name="up", **kw)(x)
        h = constrain(ACTIVATIONS[self.activation](gate) * up, ACT_BTM)
        return constrain(dense(x.shape[-1], ("mlp", "embed"), name="down", **kw)(h), ACT_BTE)


def rms_norm(eps, dtype, param_dtype, name=None):
    """RMSNorm (Zhang & Sennrich 2019; Llama): x / rms(x) * scale, computed in float32."""
    return nn.RMSNorm(
        epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)))
