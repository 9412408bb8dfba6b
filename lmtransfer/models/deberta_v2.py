"""DeBERTa-v2 / DeBERTa-v3 encoder (He et al. 2021) in functional Flax linen, numerically equal
to HF's DebertaV2Model, DebertaV2ForMaskedLM, DebertaV2ForSequenceClassification,
DebertaV2ForTokenClassification and DebertaV2ForQuestionAnswering.

Disentangled attention: content-content scores plus content->position (c2p) and
position->content (p2c) scores against shared relative-position embeddings, with HF's log
position buckets. The MLM head is HF's (`legacy=True`: BERT-style `cls.predictions`, a
transform to embedding_size then the tied word embeddings; `legacy=False`: `lm_predictions`);
like HF, there is no enhanced mask decoder (absolute positions re-added before the MLM head),
and checkpoints' `mask_predictions` (DeBERTa-v3's replaced-token-detection head) are dropped.

    model = DebertaV2(DebertaV2Config.preset("tiny"), head="classification", num_labels=3)
    params = model.init(rng, ids)["params"]
    out = model.apply({"params": params}, ids, attention_mask, deterministic=True)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lmtransfer.models import layers
from lmtransfer.models.base import ConfigBase, Model, check_config
from lmtransfer.models.bert import BertOutput, layer_class
from lmtransfer.models.heads import MlmHead

HEADS = (None, "mlm", "classification", "token_classification", "qa")
POS_ATT_TYPES = ("c2p", "p2c")
NORM_REL_EBD = ("none", "layer_norm")


@dataclasses.dataclass(frozen=True)
class DebertaV2Config(ConfigBase):
    """Architecture (HF `DebertaV2Config` field names and defaults, `cls_dropout` as
    classifier_dropout) plus lmtransfer's compute settings."""

    vocab_size: int = 128100
    hidden_size: int = 1536
    num_hidden_layers: int = 24
    num_attention_heads: int = 24
    intermediate_size: int = 6144
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-7
    pad_token_id: int = 0
    embedding_size: int | None = None  # None: hidden_size (else embeddings are projected)
    relative_attention: bool = False
    max_relative_positions: int = -1  # < 1: max_position_embeddings
    position_buckets: int = -1  # > 0: log-bucketed relative positions
    position_biased_input: bool = True  # add absolute position embeddings to the input
    pos_att_type: tuple[str, ...] = ()  # subset of ("c2p", "p2c")
    share_att_key: bool = False  # positions projected by query/key (else pos_*_proj)
    norm_rel_ebd: str = "none"  # "layer_norm": LayerNorm the relative embeddings
    pooler_dropout: float = 0.0
    pooler_hidden_act: str = "gelu"
    legacy: bool = True  # MLM head layout (see module docstring)
    classifier_dropout: float | None = None  # HF cls_dropout; None: hidden_dropout_prob
    # lmtransfer-only: not part of the HF architecture.
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention: str = "auto"  # one of layers.ATTENTION_IMPLS
    remat: bool = False

    def __post_init__(self):
        pos = self.pos_att_type
        if isinstance(pos, str):  # HF's old "p2c|c2p" spelling
            pos = [p.strip() for p in pos.lower().split("|") if p.strip()]
        object.__setattr__(self, "pos_att_type", tuple(pos or ()))
        check_config(self)
        bad = [p for p in self.pos_att_type if p not in POS_ATT_TYPES]
        if bad:
            raise ValueError(f"pos_att_type={list(self.pos_att_type)} is not supported; use a "
                             f"subset of {list(POS_ATT_TYPES)}")
        bad = [n for n in self.norm_rel_ebd_parts if n not in NORM_REL_EBD]
        if bad:
            raise ValueError(f"norm_rel_ebd={self.norm_rel_ebd!r} is not supported; use "
                             "'none' or 'layer_norm'")
        if self.pooler_hidden_act not in layers.ACTIVATIONS:
            raise ValueError(f"pooler_hidden_act={self.pooler_hidden_act!r} is not supported; "
                             f"use one of {sorted(layers.ACTIVATIONS)}")
        if not self.legacy and self.embed_dim != self.hidden_size:
            raise ValueError(f"legacy=False with embedding_size={self.embedding_size} != "
                             f"hidden_size={self.hidden_size}: HF's lm_predictions head needs "
                             "them equal; use legacy=True")

    @property
    def embed_dim(self) -> int:
        return self.embedding_size or self.hidden_size

    @property
    def norm_rel_ebd_parts(self) -> list[str]:
        return [x.strip() for x in self.norm_rel_ebd.lower().split("|")]

    @property
    def max_relative(self) -> int:
        return self.max_relative_positions if self.max_relative_positions >= 1 else \
            self.max_position_embeddings

    @property
    def att_span(self) -> int:
        """Relative positions run over [-att_span, att_span); the table has 2 * att_span rows."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative

    @classmethod
    def preset(cls, name: str, **overrides) -> DebertaV2Config:
        if name not in PRESETS:
            raise ValueError(f"unknown DeBERTa-v2 preset {name!r}; available: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


_V3 = dict(vocab_size=128100, relative_attention=True, position_buckets=256,
           pos_att_type=("p2c", "c2p"), share_att_key=True, norm_rel_ebd="layer_norm",
           position_biased_input=False, max_relative_positions=-1, hidden_size=768,
           num_attention_heads=12, intermediate_size=3072, num_hidden_layers=12)
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(_V3, vocab_size=1024, hidden_size=64, num_hidden_layers=2,
                 num_attention_heads=4, intermediate_size=128, max_position_embeddings=128,
                 position_buckets=32),
    "deberta-v3-xsmall": dict(_V3, hidden_size=384, num_attention_heads=6,
                              intermediate_size=1536),
    "deberta-v3-small": dict(_V3, num_hidden_layers=6),
    "deberta-v3-base": dict(_V3),
    "deberta-v3-large": dict(_V3, hidden_size=1024, num_hidden_layers=24,
                             num_attention_heads=16, intermediate_size=4096),
}


def relative_positions(length: int, buckets: int, max_position: int) -> np.ndarray:
    """[T, T] relative positions q - k, log-bucketed beyond buckets // 2 like HF's
    `make_log_bucket_position` (same float32 arithmetic, so the same buckets)."""
    q = np.arange(length, dtype=np.int64)
    rel = q[:, None] - q[None, :]
    if buckets <= 0 or max_position <= 0:
        return rel
    mid = buckets // 2
    abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel))
    log_pos = np.ceil(np.log(abs_pos.astype(np.float32) / np.float32(mid))
                      / np.log(np.float32((max_position - 1) / mid)) * np.float32(mid - 1)) + mid
    return np.where(abs_pos <= mid, rel, log_pos * np.sign(rel)).astype(np.int64)


def _kw(c):
    return dict(init_std=c.initializer_range, dtype=jnp.dtype(c.dtype),
                param_dtype=jnp.dtype(c.param_dtype))


class DisentangledAttention(nn.Module):
    """HF's DisentangledSelfAttention + the output projection. Kernels keep the shared
    [embed, heads, kv] / [heads, kv, embed] layout so tensor parallelism shards heads."""

    config: DebertaV2Config

    @nn.compact
    def __call__(self, x, mask, rel_emb, deterministic):
        c = self.config
        kw, types = _kw(c), c.pos_att_type
        proj = lambda name: layers.dense((c.num_attention_heads, c.head_dim),  # noqa: E731
                                         ("embed", "heads", "kv"), name=name, **kw)
        query, key = proj("query"), proj("key")
        q, k, v = (layers.constrain(m(x), layers.ACT_BTNH) for m in (query, key, proj("value")))
        # HF scales content and position scores alike by sqrt(head_dim * (1 + #types)), even
        # without relative attention.
        scale = math.sqrt(c.head_dim * (1 + len(types)))
        bias = None
        if c.relative_attention and types:
            rel = layers.Dropout(c.hidden_dropout_prob)(rel_emb, deterministic=deterministic)
            span, length = c.att_span, x.shape[1]
            rel_pos = relative_positions(length, c.position_buckets, c.max_relative)
            shape = (x.shape[0], c.num_attention_heads, length, length)
            bias = jnp.zeros(shape, q.dtype)
            if "c2p" in types:  # query content . key's relative position
                pos_key = (key if c.share_att_key else proj("pos_key"))(rel)  # [2S, N, H]
                att = jnp.einsum("bqnh,rnh->bnqr", q, pos_key)
                index = np.clip(rel_pos + span, 0, 2 * span - 1)
                bias += jnp.take_along_axis(att, jnp.broadcast_to(index, shape), -1) / scale
            if "p2c" in types:  # key content . query's relative position
                pos_query = (query if c.share_att_key else proj("pos_query"))(rel)
                att = jnp.einsum("bknh,rnh->bnkr", k, pos_query)
                index = np.clip(-rel_pos + span, 0, 2 * span - 1)
                bias += jnp.swapaxes(
                    jnp.take_along_axis(att, jnp.broadcast_to(index, shape), -1), -1, -2) / scale
        drop = layers.Dropout(c.attention_probs_dropout_prob, deterministic=False,
                              name="attention_dropout")
        out = _attend(q, k, v, bias, mask, scale, c, deterministic, drop)
        out = layers.constrain(out, layers.ACT_BTNH)
        out = layers.dense(x.shape[-1], ("heads", "kv", "embed"), axis=(-2, -1), name="out",
                           **kw)(out)
        return layers.constrain(out, layers.ACT_BTE)


def _attend(q, k, v, bias, mask, scale, c, deterministic, dropout):
    """softmax(q.k / scale + bias) . v over [B, T, N, H]; fused unless probability dropout is
    active (fused kernels have none) or attention='explicit'."""
    rate = c.attention_probs_dropout_prob
    needs_dropout = rate > 0.0 and not deterministic
    if c.attention == "cudnn" and needs_dropout:
        raise ValueError("model.attention='cudnn' has no attention dropout; set "
                         "model.attention_probs_dropout_prob=0 or model.attention='auto'")
    if c.attention != "explicit" and not needs_dropout:
        return jax.nn.dot_product_attention(
            q, k, v, bias=bias, mask=mask, scale=1.0 / scale,
            implementation=None if c.attention == "auto" else c.attention)
    q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))  # heads-major, see layers
    logits = jnp.einsum("bnqh,bnkh->bnqk", q, k) / jnp.asarray(scale, q.dtype)
    if bias is not None:
        logits = logits + bias
    logits = jnp.where(mask, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    if needs_dropout:
        probs = dropout(probs)
    return jnp.einsum("bnqk,bnkh->bnqh", probs, v).transpose(0, 2, 1, 3)


class DebertaV2Layer(nn.Module):
    config: DebertaV2Config

    @nn.compact
    def __call__(self, x, mask, rel_emb, deterministic):
        c = self.config
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        drop = layers.Dropout(c.hidden_dropout_prob)
        a = DisentangledAttention(c, name="attention")(x, mask, rel_emb, deterministic)
        x = layers.layer_norm(c.layer_norm_eps, dtype, pdtype, name="attention_layer_norm")(
            x + drop(a, deterministic=deterministic))
        h = layers.Mlp(c.intermediate_size, c.hidden_act, c.initializer_range, dtype, pdtype,
                       name="mlp")(x)
        x = layers.layer_norm(c.layer_norm_eps, dtype, pdtype, name="output_layer_norm")(
            x + drop(h, deterministic=deterministic))
        return layers.constrain(x, layers.ACT_BTE)


class DebertaV2Embeddings(nn.Module):
    """words (+ absolute positions) (+ token types), projected to hidden_size when
    embedding_size differs, LayerNorm, zeroed at padding (as HF does), dropout."""

    config: DebertaV2Config

    def setup(self):
        c = self.config
        kw = _kw(c)
        del kw["init_std"]
        std = c.initializer_range
        self.word_embeddings = layers.embed(c.vocab_size, c.embed_dim, ("vocab", "embed"),
                                            init_std=std, name="word_embeddings", **kw)
        # Small tables stay replicated (see BertEmbeddings).
        if c.position_biased_input:
            self.position_embeddings = layers.embed(
                c.max_position_embeddings, c.embed_dim, ("positions", None), init_std=std,
                name="position_embeddings", **kw)
        if c.type_vocab_size > 0:
            self.token_type_embeddings = layers.embed(
                c.type_vocab_size, c.embed_dim, ("token_types", None), init_std=std,
                name="token_type_embeddings", **kw)
        if c.embed_dim != c.hidden_size:
            self.embed_proj = layers.dense(c.hidden_size, ("embed", "embed_out"), init_std=std,
                                           use_bias=False, name="embed_proj", **kw)
        self.layer_norm = layers.layer_norm(c.layer_norm_eps, kw["dtype"], kw["param_dtype"])
        self.dropout = layers.Dropout(c.hidden_dropout_prob)

    def __call__(self, input_ids, token_type_ids, position_ids, valid, deterministic):
        c = self.config
        table = layers.constrain(self.word_embeddings.embedding, ("vocab", None))
        x = jnp.take(table, input_ids, axis=0).astype(jnp.dtype(c.dtype))
        if c.position_biased_input:
            x = x + self.position_embeddings(position_ids)
        if c.type_vocab_size > 0:
            x = x + self.token_type_embeddings(token_type_ids)
        if c.embed_dim != c.hidden_size:
            x = self.embed_proj(x)
        x = self.layer_norm(x) * valid[..., None].astype(x.dtype)
        return layers.constrain(self.dropout(x, deterministic=deterministic), layers.ACT_BTE)

    def attend(self, x):
        return self.word_embeddings.attend(x)


class DebertaV2(Model):
    """DeBERTa-v2/v3 encoder with an optional task head (see HEADS). `token_type_ids` are
    used only when type_vocab_size > 0. `segment_ids` ([B, T], 0 = padding) replaces
    `attention_mask` for packed rows; relative positions are row positions either way."""

    config: DebertaV2Config
    arch = "deberta_v2"
    HEADS = HEADS

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, segment_ids=None,
                 mlm_positions=None) -> BertOutput:
        c = self.config
        kw = _kw(c)
        if segment_ids is not None:
            valid, mask = segment_ids > 0, layers.attention_mask(segment_ids)
        else:
            valid = (jnp.ones_like(input_ids) if attention_mask is None
                     else attention_mask).astype(bool)
            # HF masks padded queries too (their rows attend uniformly, as in HF).
            mask = valid[:, None, :, None] & valid[:, None, None, :]
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
        embeddings = DebertaV2Embeddings(c, name="embeddings")
        x = embeddings(input_ids, token_type_ids, position_ids, valid, deterministic)
        rel_emb = None
        if c.relative_attention:
            rel_emb = layers.embed(2 * c.att_span, c.hidden_size, ("positions", None),
                                   name="rel_embeddings", **kw)(jnp.arange(2 * c.att_span))
        if "layer_norm" in c.norm_rel_ebd_parts:
            norm = layers.layer_norm(c.layer_norm_eps, kw["dtype"], kw["param_dtype"],
                                     name="rel_layer_norm")
            # HF creates this LayerNorm even without relative attention; so do we (unused).
            normed = norm(rel_emb if rel_emb is not None else jnp.zeros((1, c.hidden_size)))
            rel_emb = normed if rel_emb is not None else None
        layer = layer_class(DebertaV2Layer, c.remat, deterministic_argnum=4)
        for i in range(c.num_hidden_layers):
            x = layer(c, name=f"layer_{i}")(x, mask, rel_emb, deterministic)
        out = BertOutput(last_hidden_state=x)
        return out if self.head is None else self._head(out, embeddings, deterministic,
                                                        mlm_positions)

    def _head(self, out, embeddings, deterministic, mlm_positions):
        c, x = self.config, out.last_hidden_state
        f32 = lambda t: t.astype(jnp.float32)  # noqa: E731  (losses and metrics want float32)
        dense = lambda n, names, name: layers.dense(n, names, name=name, **_kw(c))  # noqa: E731
        if self.head == "mlm":
            h = x if mlm_positions is None else jnp.take_along_axis(
                x, mlm_positions[..., None], axis=1)
            name, features = ("mlm", c.embed_dim) if c.legacy else ("lm_predictions",
                                                                    c.hidden_size)
            return out.replace(logits=f32(MlmHead(c, features, name=name)(h, embeddings)))
        if self.head == "classification":  # HF's ContextPooler on token 0, then classifier
            h = layers.Dropout(c.pooler_dropout)(x[:, 0], deterministic=deterministic)
            pooled = layers.ACTIVATIONS[c.pooler_hidden_act](
                dense(c.hidden_size, ("embed", "embed_out"), "pooler")(h))
            rate = c.hidden_dropout_prob if c.classifier_dropout is None else \
                c.classifier_dropout
            h = layers.Dropout(rate)(pooled, deterministic=deterministic)
            return out.replace(pooler_output=pooled, logits=f32(
                dense(self.num_labels, ("embed", "labels"), "classifier")(h)))
        if self.head == "token_classification":
            h = layers.Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)
            return out.replace(logits=f32(
                dense(self.num_labels, ("embed", "labels"), "classifier")(h)))
        logits = f32(dense(2, ("embed", "labels"), "qa_outputs")(x))  # qa
        return out.replace(start_logits=logits[..., 0], end_logits=logits[..., 1])
