"""BERT encoder (Devlin et al. 2019) in functional Flax linen, numerically equal to HF's BertModel.

    model = Bert(BertConfig.preset("tiny"), head="classification", num_labels=3)
    params = model.init(rng, ids)["params"]
    out = model.apply({"params": params}, ids, attention_mask, token_type_ids, deterministic=True)
    out.logits  # [batch, 3]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import flax.struct
import jax.numpy as jnp

from lmtransfer.errors import ConfigError
from lmtransfer.models import heads as heads_lib
from lmtransfer.models import layers
from lmtransfer.models.base import ConfigBase, Model, encoder_inputs

HEADS = (None, "mlm", "nsp", "pretraining", "classification", "token_classification", "qa")
# HF builds these heads on a BertModel without a pooler (add_pooling_layer=False).
_NO_POOLER = ("mlm", "token_classification", "qa")


@dataclasses.dataclass(frozen=True)
class BertConfig(ConfigBase):
    """Architecture (HF `BertConfig` field names) plus lmtransfer's compute settings."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    classifier_dropout: float | None = None
    # lmtransfer-only: not part of the HF architecture.
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    attention: str = "auto"  # one of layers.ATTENTION_IMPLS
    remat: bool = False  # recompute each layer's activations in the backward pass

    HF_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "hidden_act", "hidden_dropout_prob",
                 "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
                 "layer_norm_eps", "initializer_range", "pad_token_id", "classifier_dropout")

    @classmethod
    def preset(cls, name: str, **overrides) -> BertConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown BERT preset {name!r}; available: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_hf(cls, hf: dict[str, Any], source: str = "config.json", **overrides) -> BertConfig:
        """From an HF config.json dict; refuses other model types and unsupported variants."""
        model_type = hf.get("model_type")
        if model_type != "bert":
            raise ConfigError(f"{source}: model_type is {model_type!r}, but lmtransfer reads BERT "
                              "checkpoints (model_type 'bert')")
        pos = hf.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ConfigError(f"{source}: position_embedding_type={pos!r} is not supported "
                              "(only 'absolute')")
        if hf.get("is_decoder") or hf.get("add_cross_attention"):
            raise ConfigError(f"{source}: decoder / cross-attention BERT is not supported")
        kw = {f: hf[f] for f in cls.HF_FIELDS if f in hf}
        return cls(**{**kw, **overrides})

    def to_hf(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in self.HF_FIELDS}
        d.update(model_type="bert", position_embedding_type="absolute")
        return d


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(vocab_size=1024, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=128),
    "mini": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                 intermediate_size=1024),
    "minilm-l6": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                      intermediate_size=1536),
    "bert-base": dict(),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                       intermediate_size=4096),
}


@flax.struct.dataclass
class BertOutput:
    """HF-style outputs; fields a head does not produce are None."""

    last_hidden_state: Any = None
    pooler_output: Any = None
    logits: Any = None  # mlm: [B, T, vocab]; classification: [B, labels]; token: [B, T, labels]
    seq_relationship_logits: Any = None  # nsp / pretraining: [B, 2]
    start_logits: Any = None  # qa: [B, T]
    end_logits: Any = None
    cache: Any = None  # decoders during generation: one (k, v) per layer


class BertEmbeddings(nn.Module):
    """Word + position (+ token-type) tables, LayerNorm, dropout: BERT's and, by config, the
    encoders that share its layout (`embedding_size` narrower than hidden: ELECTRA's and
    ALBERT's factorized tables, projected by the model; no `type_vocab_size`: DistilBERT)."""

    config: Any

    def setup(self):
        c = self.config
        kw = dict(init_std=c.initializer_range, dtype=jnp.dtype(c.dtype),
                  param_dtype=jnp.dtype(c.param_dtype))
        width = getattr(c, "embedding_size", None) or c.hidden_size
        self.word_embeddings = layers.embed(c.vocab_size, width, ("vocab", "embed"),
                                            name="word_embeddings", **kw)
        # Small tables stay replicated: a gather from an embed-sharded table makes XLA
        # rematerialise the whole activation to reach the batch sharding.
        self.position_embeddings = layers.embed(
            c.max_position_embeddings, width, ("positions", None),
            name="position_embeddings", **kw)
        if getattr(c, "type_vocab_size", 0):
            self.token_type_embeddings = layers.embed(
                c.type_vocab_size, width, ("token_types", None),
                name="token_type_embeddings", **kw)
        self.layer_norm = layers.layer_norm(c.layer_norm_eps, kw["dtype"], kw["param_dtype"])
        self.dropout = layers.Dropout(c.hidden_dropout_prob)

    def __call__(self, input_ids, token_type_ids, position_ids, deterministic):
        # Gather from a table whose embed axis is whole (vocab may stay tensor-sharded):
        # gathering from an fsdp-split table forces XLA to rematerialise the activation.
        table = layers.constrain(self.word_embeddings.embedding, ("vocab", None))
        words = jnp.take(table, input_ids, axis=0).astype(jnp.dtype(self.config.dtype))
        x = words + self.position_embeddings(position_ids)
        if getattr(self.config, "type_vocab_size", 0):
            x = x + self.token_type_embeddings(token_type_ids)
        x = self.dropout(self.layer_norm(x), deterministic=deterministic)
        return layers.constrain(x, layers.ACT_BTE)

    def attend(self, x):
        """Logits against the (tied) word embeddings: the MLM decoder."""
        return self.word_embeddings.attend(x)


class BertLayer(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic):
        c = self.config
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        drop = layers.Dropout(c.hidden_dropout_prob)
        a = layers.SelfAttention(c.num_attention_heads, c.head_dim, c.initializer_range,
                                 c.attention_probs_dropout_prob, c.attention, dtype, pdtype,
                                 name="attention")(x, mask, deterministic)
        x = layers.layer_norm(c.layer_norm_eps, dtype, pdtype, name="attention_layer_norm")(
            x + drop(a, deterministic=deterministic))
        h = layers.Mlp(c.intermediate_size, c.hidden_act, c.initializer_range, dtype, pdtype,
                       name="mlp")(x)
        x = layers.layer_norm(c.layer_norm_eps, dtype, pdtype, name="output_layer_norm")(
            x + drop(h, deterministic=deterministic))
        return layers.constrain(x, layers.ACT_BTE)


def layer_class(cls, remat: bool, deterministic_argnum: int = 3):
    """`cls`, or its rematerialised version (activations recomputed in the backward pass,
    trading compute for memory); `deterministic` (its argument number, counting self) stays
    static."""
    return nn.remat(cls, static_argnums=(deterministic_argnum,)) if remat else cls


class Bert(Model):
    """BERT encoder with an optional task head (see HEADS).

    `segment_ids` ([B, T], 0 = padding, k = k-th packed document) replaces `attention_mask`
    for packed pretraining rows: attention then never crosses documents. `mlm_positions`
    ([B, P]) runs the MLM decoder at those positions only: logits are [B, P, vocab]."""

    config: BertConfig
    arch = "bert"
    HEADS = HEADS

    @property
    def has_pooler(self) -> bool:
        return self.head not in _NO_POOLER

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, segment_ids=None,
                 mlm_positions=None) -> BertOutput:
        c = self.config
        token_type_ids, position_ids, mask = encoder_inputs(
            input_ids, attention_mask, token_type_ids, position_ids, segment_ids)
        embeddings = BertEmbeddings(c, name="embeddings")
        x = embeddings(input_ids, token_type_ids, position_ids, deterministic)
        layer = layer_class(BertLayer, c.remat)
        for i in range(c.num_hidden_layers):
            x = layer(c, name=f"layer_{i}")(x, mask, deterministic)
        out = BertOutput(last_hidden_state=x)
        if self.has_pooler:
            pooled = jnp.tanh(layers.dense(
                c.hidden_size, ("embed", "embed_out"), init_std=c.initializer_range,
                dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype),
                name="pooler")(x[:, 0]))
            out = out.replace(pooler_output=pooled)
        if self.head is None:
            return out
        return heads_lib.apply_head(self.head, c, self.num_labels, out, embeddings, deterministic,
                                    mlm_positions)
