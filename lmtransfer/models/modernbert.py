"""ModernBERT encoder (Warner et al. 2024) in functional Flax linen, numerically equal to HF's
ModernBertModel, ModernBertForMaskedLM, ModernBertForSequenceClassification,
ModernBertForTokenClassification and ModernBertForQuestionAnswering.

Pre-norm layers (layer 0 has no attention norm: the embedding norm precedes it), rotary
attention whose theta depends on the layer type, GeGLU feed-forward, a final norm, and
LayerNorms without bias unless `norm_bias`. "sliding_attention" layers see only keys within
`local_attention // 2` positions on either side (HF's symmetric window), on top of the
padding mask, so a padded row computes what it does unpadded (no unpadding needed). HF's
fused `Wqkv` and `Wi` are kept as separate query/key/value and wi/gate kernels here (split
on import), so each is named for tensor sharding.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from lmtransfer.models import layers
from lmtransfer.models.base import ConfigBase, Model, check_config
from lmtransfer.models.bert import BertOutput, layer_class

HEADS = (None, "mlm", "classification", "token_classification", "qa")
LAYER_TYPES = ("full_attention", "sliding_attention")
POOLING = ("cls", "mean")


def default_layer_types(num_layers: int, every_n: int = 3) -> tuple[str, ...]:
    """HF's pattern from the legacy `global_attn_every_n_layers`: full every n-th layer."""
    return tuple("sliding_attention" if i % every_n else "full_attention"
                 for i in range(num_layers))


@dataclasses.dataclass(frozen=True)
class ModernBertConfig(ConfigBase):
    """Architecture (HF `ModernBertConfig` names and defaults, except: `hidden_act` is HF's
    hidden_activation, `attention_probs_dropout_prob` its attention_dropout,
    `hidden_dropout_prob` its mlp_dropout; the rotary thetas are per layer type) plus
    lmtransfer's compute settings (the same as BertConfig's)."""

    vocab_size: int = 50368
    hidden_size: int = 768
    intermediate_size: int = 1152
    num_hidden_layers: int = 22
    num_attention_heads: int = 12
    hidden_act: str = "gelu"
    max_position_embeddings: int = 8192
    initializer_range: float = 0.02
    initializer_cutoff_factor: float = 2.0
    norm_eps: float = 1e-5
    norm_bias: bool = False
    pad_token_id: int | None = 50283
    eos_token_id: int | None = 50282
    bos_token_id: int | None = 50281
    cls_token_id: int | None = 50281
    sep_token_id: int | None = 50282
    attention_bias: bool = False
    attention_probs_dropout_prob: float = 0.0  # attention probabilities and Wo's output
    hidden_dropout_prob: float = 0.0  # inside the MLP (HF mlp_dropout)
    embedding_dropout: float | None = None  # None: hidden_dropout_prob
    layer_types: tuple[str, ...] = ()  # () = HF's default (full every 3rd layer)
    global_rope_theta: float = 160000.0  # full_attention layers
    local_rope_theta: float = 10000.0  # sliding_attention layers
    local_attention: int = 128  # whole window: local_attention // 2 on each side
    mlp_bias: bool = False
    decoder_bias: bool = True
    classifier_pooling: str = "cls"
    classifier_dropout: float = 0.0
    classifier_bias: bool = False  # the prediction head's dense (HF's classifier has one)
    classifier_activation: str = "gelu"
    # lmtransfer-only: not part of the HF architecture.
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention: str = "auto"
    remat: bool = False

    def __post_init__(self):
        check_config(self)
        types = tuple(self.layer_types) or default_layer_types(self.num_hidden_layers)
        object.__setattr__(self, "layer_types", types)  # JSON gives lists back
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if len(types) != self.num_hidden_layers or set(types) - set(LAYER_TYPES):
            raise ValueError(f"layer_types={list(types)} must give one of {LAYER_TYPES} for "
                             f"each of the {self.num_hidden_layers} layers")
        if self.classifier_activation not in layers.ACTIVATIONS:
            raise ValueError(f"classifier_activation={self.classifier_activation!r} is not "
                             f"supported; use one of {sorted(layers.ACTIVATIONS)}")
        if self.classifier_pooling not in POOLING:
            raise ValueError(f"classifier_pooling={self.classifier_pooling!r}; use one of "
                             f"{POOLING}")

    @property
    def mlp(self) -> str:
        return "gated"  # for perf accounting: three MLP matmuls (wi, gate, wo)

    def sliding(self, i: int) -> bool:
        return self.layer_types[i] == "sliding_attention"



def _kw(c) -> dict:
    return dict(init_std=c.initializer_range, dtype=jnp.dtype(c.dtype),
                param_dtype=jnp.dtype(c.param_dtype))


def norm(c, name=None):
    """HF's nn.LayerNorm(bias=norm_bias)."""
    return nn.LayerNorm(
        epsilon=c.norm_eps, use_bias=c.norm_bias, dtype=jnp.dtype(c.dtype),
        param_dtype=jnp.dtype(c.param_dtype), name=name,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("embed",)))


class Embeddings(nn.Module):
    """HF ModernBertEmbeddings: token table, norm, dropout (no positions: rotary)."""

    config: ModernBertConfig

    def setup(self):
        c = self.config
        self.tok_embeddings = layers.embed(c.vocab_size, c.hidden_size, ("vocab", "embed"),
                                           name="tok_embeddings", **_kw(c))
        self.norm = norm(c)
        rate = c.hidden_dropout_prob if c.embedding_dropout is None else c.embedding_dropout
        self.dropout = layers.Dropout(rate)

    def __call__(self, input_ids, deterministic):
        # Gather from a table whose embed axis is whole (see BertEmbeddings).
        table = layers.constrain(self.tok_embeddings.embedding, ("vocab", None))
        x = jnp.take(table, input_ids, axis=0).astype(jnp.dtype(self.config.dtype))
        x = self.dropout(self.norm(x), deterministic=deterministic)
        return layers.constrain(x, layers.ACT_BTE)

    def attend(self, x):
        """Logits against the (tied) token embeddings: the MLM decoder's weight."""
        return self.tok_embeddings.attend(x)


class GegluMlp(nn.Module):
    """HF ModernBertMLP: Wo(dropout(act(input) * gate)), `input` and `gate` being the halves
    of the fused Wi (here `wi` and `gate`)."""

    config: ModernBertConfig

    @nn.compact
    def __call__(self, x, deterministic):
        c = self.config
        kw = dict(_kw(c), use_bias=c.mlp_bias)
        h = layers.dense(c.intermediate_size, ("embed", "mlp"), name="wi", **kw)(x)
        g = layers.dense(c.intermediate_size, ("embed", "mlp"), name="gate", **kw)(x)
        h = layers.constrain(layers.ACTIVATIONS[c.hidden_act](h) * g, layers.ACT_BTM)
        h = layers.Dropout(c.hidden_dropout_prob)(h, deterministic=deterministic)
        return layers.constrain(layers.dense(c.hidden_size, ("mlp", "embed"), name="wo",
                                             **kw)(h), layers.ACT_BTE)


class ModernBertLayer(nn.Module):
    """HF ModernBertEncoderLayer: x + attn(attn_norm(x)), then x + mlp(mlp_norm(x))."""

    config: ModernBertConfig
    index: int

    @nn.compact
    def __call__(self, x, mask, deterministic, positions):
        c = self.config
        kw = _kw(c)
        h = x if self.index == 0 else norm(c, "attn_norm")(x)  # HF: Identity on layer 0
        theta = c.local_rope_theta if c.sliding(self.index) else c.global_rope_theta
        a = layers.SelfAttention(
            c.num_attention_heads, c.head_dim, c.initializer_range,
            c.attention_probs_dropout_prob, c.attention, kw["dtype"], kw["param_dtype"],
            inv_freq=layers.rope_frequencies(c.head_dim, theta), qkv_bias=c.attention_bias,
            out_bias=c.attention_bias, name="attention")(h, mask, deterministic, positions)
        x = x + layers.Dropout(c.attention_probs_dropout_prob)(a, deterministic=deterministic)
        x = x + GegluMlp(c, name="mlp")(norm(c, "mlp_norm")(x), deterministic)
        return layers.constrain(x, layers.ACT_BTE)


class PredictionHead(nn.Module):
    """HF ModernBertPredictionHead: norm(classifier_activation(dense(x)))."""

    config: ModernBertConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        h = layers.dense(c.hidden_size, ("embed", "embed_out"), use_bias=c.classifier_bias,
                         name="dense", **_kw(c))(x)
        return norm(c, "norm")(layers.ACTIVATIONS[c.classifier_activation](h))


class TiedDecoder(nn.Module):
    """HF's MLM `decoder`: its weight is the token table (tied), its bias `decoder_bias`."""

    config: ModernBertConfig

    @nn.compact
    def __call__(self, h, embeddings):
        c = self.config
        logits = embeddings.attend(h.astype(jnp.dtype(c.dtype)))
        if c.decoder_bias:
            bias = self.param("bias", nn.with_logical_partitioning(
                nn.initializers.zeros_init(), ("vocab",)), (c.vocab_size,),
                jnp.dtype(c.param_dtype))
            logits = logits + bias.astype(logits.dtype)
        return layers.constrain(logits, ("activation_batch", "activation_length",
                                         "activation_vocab"))


def masks(c, attention_mask, segment_ids, length):
    """(full, sliding) boolean masks [B, 1, T|1, T]; sliding adds |q - k| <= window // 2."""
    if segment_ids is not None:
        full = layers.attention_mask(segment_ids)
    else:
        full = attention_mask.astype(bool)[:, None, None, :]
    pos = jnp.arange(length)
    near = jnp.abs(pos[:, None] - pos[None, :]) <= c.local_attention // 2
    return full, full & near[None, None]


class ModernBert(Model):
    """ModernBERT encoder with an optional task head (see HEADS). Has no token types:
    `token_type_ids` is accepted and ignored.

    `segment_ids` ([B, T], 0 = padding, k = k-th packed document) replaces `attention_mask`;
    `mlm_positions` ([B, P]) runs the MLM head at those positions only."""

    config: ModernBertConfig
    arch = "modernbert"
    HEADS = HEADS

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, segment_ids=None,
                 mlm_positions=None) -> BertOutput:
        c = self.config
        del token_type_ids  # ModernBERT has none
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)
        embeddings = Embeddings(c, name="embeddings")
        x = embeddings(input_ids, deterministic)
        full, sliding = masks(c, attention_mask, segment_ids, input_ids.shape[-1])
        layer = layer_class(ModernBertLayer, c.remat)
        for i in range(c.num_hidden_layers):
            x = layer(c, i, name=f"layer_{i}")(x, sliding if c.sliding(i) else full,
                                                deterministic, position_ids)
        x = layers.constrain(norm(c, "final_norm")(x), layers.ACT_BTE)
        out = BertOutput(last_hidden_state=x)
        valid = (segment_ids > 0) if segment_ids is not None else attention_mask.astype(bool)
        return apply_head(self.head, c, self.num_labels, out, embeddings, valid,
                          deterministic, mlm_positions)


def apply_head(head, c, num_labels, out, embeddings, valid, deterministic, mlm_positions):
    """`out` with ModernBERT's `head` filled in, as HF builds them: every head runs the
    prediction head; classification, token classification and QA then drop out with
    `classifier_dropout` before `classifier` (`qa_outputs` here; HF names it classifier too).
    Logits are float32."""
    if head is None:
        return out
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731  (losses and metrics want float32)
    x = out.last_hidden_state
    if head == "mlm":
        if mlm_positions is not None:
            x = jnp.take_along_axis(x, mlm_positions[..., None], axis=1)
        h = PredictionHead(c, name="prediction_head")(x)
        return out.replace(logits=f32(TiedDecoder(c, name="decoder")(h, embeddings)))
    if head == "classification":
        if c.classifier_pooling == "cls":
            x = x[:, 0]
        else:  # mean over real tokens (where(): padded rows must not leak a NaN in)
            w = valid[..., None]
            x = jnp.where(w, x, 0).sum(1) / w.sum(1).astype(x.dtype)
    h = PredictionHead(c, name="prediction_head")(x)
    h = layers.Dropout(c.classifier_dropout)(h, deterministic=deterministic)
    labels, name = (2, "qa_outputs") if head == "qa" else (num_labels, "classifier")
    logits = f32(layers.dense(labels, ("embed", "labels"), name=name, **_kw(c))(h))
    if head == "qa":
        return out.replace(start_logits=logits[..., 0], end_logits=logits[..., 1])
    return out.replace(logits=logits)


__all__ = ["HEADS", "ModernBert", "ModernBertConfig", "default_layer_types"]
