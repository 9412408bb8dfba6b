"""ELECTRA encoder (Clark et al. 2020) in functional Flax linen, numerically equal to HF's
ElectraModel, ElectraForMaskedLM (generator), ElectraForPreTraining (discriminator),
ElectraForSequenceClassification, ElectraForTokenClassification and
ElectraForQuestionAnswering.

ELECTRA is BERT with factorized embeddings: the tables are `embedding_size` wide and
`embeddings_project` maps them to `hidden_size` (only when the two differ, as in HF). The
layers are BERT's (`lmtransfer.models.bert.BertLayer`). There is no pooler.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from lmtransfer.models import layers
from lmtransfer.models.base import ConfigBase, Model, at_positions, encoder_inputs
from lmtransfer.models.bert import BertEmbeddings, BertLayer, BertOutput, layer_class
from lmtransfer.models.heads import MlmHead

HEADS = (None, "mlm", "pretraining", "classification", "token_classification", "qa")


@dataclasses.dataclass(frozen=True)
class ElectraConfig(ConfigBase):
    """Architecture (HF `ElectraConfig` field names and defaults) plus lmtransfer's compute
    settings (the same as BertConfig's)."""

    vocab_size: int = 30522
    embedding_size: int = 128
    hidden_size: int = 256
    num_hidden_layers: int = 12
    num_attention_heads: int = 4
    intermediate_size: int = 1024
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
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention: str = "auto"
    remat: bool = False





def _kw(c) -> dict:
    return dict(init_std=c.initializer_range, dtype=jnp.dtype(c.dtype),
                param_dtype=jnp.dtype(c.param_dtype))


class DiscriminatorHead(nn.Module):
    """HF ElectraDiscriminatorPredictions: dense, hidden_act, dense_prediction -> [B, T]."""

    config: ElectraConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        h = layers.dense(c.hidden_size, ("embed", "embed_out"), name="dense", **_kw(c))(x)
        h = layers.ACTIVATIONS[c.hidden_act](h)
        return layers.dense(1, ("embed", "labels"), name="dense_prediction", **_kw(c))(h)[..., 0]


class ClassificationHead(nn.Module):
    """HF ElectraClassificationHead on token 0: dropout, dense, gelu (erf; BERT has tanh
    here), dropout, out_proj."""

    config: ElectraConfig
    num_labels: int
    rate: float

    @nn.compact
    def __call__(self, x, deterministic):
        c = self.config
        drop = layers.Dropout(self.rate)
        h = drop(x[:, 0], deterministic=deterministic)
        h = layers.dense(c.hidden_size, ("embed", "embed_out"), name="dense", **_kw(c))(h)
        h = drop(layers.ACTIVATIONS["gelu"](h), deterministic=deterministic)
        return layers.dense(self.num_labels, ("embed", "labels"), name="out_proj", **_kw(c))(h)


class Electra(Model):
    """ELECTRA encoder with an optional task head (see HEADS): "mlm" is the generator's head,
    "pretraining" the discriminator's replaced-token scores (`logits` [B, T]).

    `segment_ids` ([B, T], 0 = padding, k = k-th packed document) replaces `attention_mask`;
    `mlm_positions` ([B, P]) runs the MLM decoder at those positions only."""

    config: ElectraConfig
    arch = "electra"
    HEADS = HEADS

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, segment_ids=None,
                 mlm_positions=None) -> BertOutput:
        c = self.config
        kw = _kw(c)
        token_type_ids, position_ids, mask = encoder_inputs(
            input_ids, attention_mask, token_type_ids, position_ids, segment_ids)
        embeddings = BertEmbeddings(c, name="embeddings")  # embedding_size wide
        x = embeddings(input_ids, token_type_ids, position_ids, deterministic)
        if c.embedding_size != c.hidden_size:  # HF has the projection only then
            x = layers.dense(c.hidden_size, ("embed_out", "embed"), name="embeddings_project",
                             **kw)(x)
            x = layers.constrain(x, layers.ACT_BTE)
        layer = layer_class(BertLayer, c.remat)
        for i in range(c.num_hidden_layers):
            x = layer(c, name=f"layer_{i}")(x, mask, deterministic)
        out = BertOutput(last_hidden_state=x)
        return apply_head(self.head, c, self.num_labels, out, embeddings, deterministic,
                          mlm_positions)


def apply_head(head, c, num_labels, out, embeddings, deterministic, mlm_positions):
    """`out` with ELECTRA's `head` filled in (called inside Electra's compact __call__, so
    the modules made here are its children). Logits are float32."""
    kw = _kw(c)
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731  (losses and metrics want float32)
    x = out.last_hidden_state
    rate = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
    if head == "mlm":  # the generator head: its activation is always (erf) gelu in HF
        h = at_positions(x, mlm_positions)
        return out.replace(logits=f32(MlmHead(
            c, c.embedding_size, "gelu", name="generator_predictions")(h, embeddings)))
    if head == "pretraining":  # discriminator: one replaced-token score per position
        score = DiscriminatorHead(c, name="discriminator_predictions")(x)
        return out.replace(logits=f32(score))
    if head == "classification":
        return out.replace(logits=f32(ClassificationHead(
            c, num_labels, rate, name="classifier")(x, deterministic)))
    if head == "token_classification":
        h = layers.Dropout(rate)(x, deterministic=deterministic)
        return out.replace(logits=f32(layers.dense(
            num_labels, ("embed", "labels"), name="classifier", **kw)(h)))
    if head == "qa":
        logits = f32(layers.dense(2, ("embed", "labels"), name="qa_outputs", **kw)(x))
        return out.replace(start_logits=logits[..., 0], end_logits=logits[..., 1])
    return out
