"""DistilBERT (Sanh et al. 2019) in functional Flax linen, numerically equal to HF's
DistilBertModel, DistilBertForMaskedLM, DistilBertForSequenceClassification,
DistilBertForTokenClassification and DistilBertForQuestionAnswering.

DistilBERT is a post-norm BERT encoder without token types and without a pooler. The config
uses BERT's field names (HF's dim / n_layers / n_heads / hidden_dim / activation / dropout /
attention_dropout are mapped in `lmtransfer.hf.distilbert`). Its layer has BERT's parameters
(`attention/{query,key,value,out}`, `attention_layer_norm`, `mlp/{wi,wo}`,
`output_layer_norm`), but unlike BERT no dropout on the attention output.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from lmtransfer.models import layers
from lmtransfer.models.base import ConfigBase, Model, at_positions, encoder_inputs
from lmtransfer.models.bert import BertEmbeddings, BertOutput, layer_class
from lmtransfer.models.heads import MlmHead

HEADS = (None, "mlm", "classification", "token_classification", "qa")


@dataclasses.dataclass(frozen=True)
class DistilBertConfig(ConfigBase):
    """Architecture (HF `DistilBertConfig` defaults, under BERT's field names) plus
    lmtransfer's compute settings (the same as BertConfig's)."""

    vocab_size: int = 30522
    hidden_size: int = 768  # HF dim
    num_hidden_layers: int = 6  # n_layers
    num_attention_heads: int = 12  # n_heads
    intermediate_size: int = 3072  # hidden_dim
    hidden_act: str = "gelu"  # activation
    hidden_dropout_prob: float = 0.1  # dropout
    attention_probs_dropout_prob: float = 0.1  # attention_dropout
    max_position_embeddings: int = 512
    initializer_range: float = 0.02
    pad_token_id: int = 0
    seq_classif_dropout: float = 0.2  # after pre_classifier (sequence classification)
    qa_dropout: float = 0.1  # before qa_outputs
    # lmtransfer-only: not part of the HF architecture.
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention: str = "auto"
    remat: bool = False

    @property
    def layer_norm_eps(self) -> float:
        return 1e-12  # fixed in HF (every DistilBERT LayerNorm), not a config.json key



def _kw(c) -> dict:
    return dict(init_std=c.initializer_range, dtype=jnp.dtype(c.dtype),
                param_dtype=jnp.dtype(c.param_dtype))


class DistilBertLayer(nn.Module):
    """HF TransformerBlock: BertLayer's parameters, but the attention output goes into its
    residual without dropout (HF drops only the attention probabilities there)."""

    config: DistilBertConfig

    @nn.compact
    def __call__(self, x, mask, deterministic):
        c = self.config
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        a = layers.SelfAttention(c.num_attention_heads, c.head_dim, c.initializer_range,
                                 c.attention_probs_dropout_prob, c.attention, dtype, pdtype,
                                 name="attention")(x, mask, deterministic)
        x = layers.layer_norm(c.layer_norm_eps, dtype, pdtype, name="attention_layer_norm")(x + a)
        h = layers.Mlp(c.intermediate_size, c.hidden_act, c.initializer_range, dtype, pdtype,
                       name="mlp")(x)
        h = layers.Dropout(c.hidden_dropout_prob)(h, deterministic=deterministic)
        x = layers.layer_norm(c.layer_norm_eps, dtype, pdtype, name="output_layer_norm")(x + h)
        return layers.constrain(x, layers.ACT_BTE)


class DistilBert(Model):
    """DistilBERT encoder with an optional task head (see HEADS). `token_type_ids` is accepted
    and ignored (DistilBERT has no token types).

    `segment_ids` ([B, T], 0 = padding, k = k-th packed document) replaces `attention_mask`;
    `mlm_positions` ([B, P]) runs the MLM head at those positions only."""

    config: DistilBertConfig
    arch = "distilbert"
    HEADS = HEADS

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, segment_ids=None,
                 mlm_positions=None) -> BertOutput:
        c = self.config
        _, position_ids, mask = encoder_inputs(input_ids, attention_mask, None, position_ids,
                                               segment_ids)
        embeddings = BertEmbeddings(c, name="embeddings")  # no token types
        x = embeddings(input_ids, None, position_ids, deterministic)
        layer = layer_class(DistilBertLayer, c.remat)
        for i in range(c.num_hidden_layers):
            x = layer(c, name=f"layer_{i}")(x, mask, deterministic)
        out = BertOutput(last_hidden_state=x)
        return apply_head(self.head, c, self.num_labels, out, embeddings, deterministic,
                          mlm_positions)


def apply_head(head, c, num_labels, out, embeddings, deterministic, mlm_positions):
    """`out` with DistilBERT's `head` filled in, as HF's DistilBertFor* compute it (called
    inside DistilBert's compact __call__, so the modules made here are its children).
    Logits are float32."""
    kw = _kw(c)
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731  (losses and metrics want float32)
    x = out.last_hidden_state
    if head == "mlm":  # vocab_transform, activation, vocab_layer_norm, tied vocab_projector
        return out.replace(logits=f32(MlmHead(c, name="mlm")(at_positions(x, mlm_positions),
                                                             embeddings)))
    if head == "classification":  # token 0 -> pre_classifier -> ReLU -> dropout -> classifier
        h = layers.dense(c.hidden_size, ("embed", "embed_out"), name="pre_classifier",
                         **kw)(x[:, 0])
        h = layers.Dropout(c.seq_classif_dropout)(nn.relu(h), deterministic=deterministic)
        return out.replace(logits=f32(layers.dense(
            num_labels, ("embed", "labels"), name="classifier", **kw)(h)))
    if head == "token_classification":  # HF uses the model's `dropout` here
        h = layers.Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)
        return out.replace(logits=f32(layers.dense(
            num_labels, ("embed", "labels"), name="classifier", **kw)(h)))
    if head == "qa":
        h = layers.Dropout(c.qa_dropout)(x, deterministic=deterministic)
        logits = f32(layers.dense(2, ("embed", "labels"), name="qa_outputs", **kw)(h))
        return out.replace(start_logits=logits[..., 0], end_logits=logits[..., 1])
    return out
