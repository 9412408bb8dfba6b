"""RoBERTa and XLM-RoBERTa (Liu et al. 2019; Conneau et al. 2020) in functional Flax linen,
numerically equal to HF's (XLM)RobertaModel, ...ForMaskedLM, ...ForSequenceClassification,
...ForTokenClassification and ...ForQuestionAnswering.

The encoder is BERT's (`BertEmbeddings`, `BertLayer`); what differs is around it:
positions count from `pad_token_id + 1` and skip padding (fairseq's scheme), there is one
token type, the classification head is dense + tanh + out_proj on `<s>` (no pooler), and the
MLM head is `lm_head` (dense, gelu, LayerNorm, decoder tied to the word table + bias).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from lmtransfer.models import layers
from lmtransfer.models.base import Model, at_positions, encoder_inputs
from lmtransfer.models.bert import BertConfig, BertEmbeddings, BertLayer, BertOutput, layer_class
from lmtransfer.models.heads import MlmHead

HEADS = (None, "mlm", "classification", "token_classification", "qa")


@dataclasses.dataclass(frozen=True)
class RobertaConfig(BertConfig):
    """BertConfig's fields with HF RobertaConfig's defaults (the checkpoints' config.json
    set the rest: 514 positions, one token type, eps 1e-5); `model_type` says which HF
    family (roberta or xlm-roberta: the same layout) an export writes."""

    vocab_size: int = 50265
    pad_token_id: int = 1
    model_type: str = "roberta"

    @property
    def max_positions(self) -> int:
        """The longest input: rows 0..pad_token_id of the position table are never used."""
        return self.max_position_embeddings - self.pad_token_id - 1


def _kw(c) -> dict:
    return dict(init_std=c.initializer_range, dtype=jnp.dtype(c.dtype),
                param_dtype=jnp.dtype(c.param_dtype))


class ClassificationHead(nn.Module):
    """HF RobertaClassificationHead on `<s>`: dropout, dense, tanh, dropout, out_proj."""

    config: RobertaConfig
    num_labels: int
    rate: float

    @nn.compact
    def __call__(self, x, deterministic):
        c = self.config
        drop = layers.Dropout(self.rate)
        h = drop(x[:, 0], deterministic=deterministic)
        h = jnp.tanh(layers.dense(c.hidden_size, ("embed", "embed_out"), name="dense",
                                  **_kw(c))(h))
        h = drop(h, deterministic=deterministic)
        return layers.dense(self.num_labels, ("embed", "labels"), name="out_proj", **_kw(c))(h)


def padding_positions(input_ids, pad_token_id: int):
    """0-based positions that skip padding (padding itself gets -1, i.e. the pad row): HF's
    `create_position_ids_from_input_ids` minus its `pad_token_id + 1` offset."""
    real = (input_ids != pad_token_id).astype(jnp.int32)
    return jnp.cumsum(real, axis=-1) * real - 1


class Roberta(Model):
    """RoBERTa / XLM-R encoder with an optional task head (see HEADS).

    `position_ids`, when given (packed pretraining rows), are 0-based like every lmtransfer
    model's; the `pad_token_id + 1` offset into HF's table is added here. `token_type_ids`
    are used only by checkpoints with more than one token type. `segment_ids` and
    `mlm_positions` as in Bert."""

    config: RobertaConfig
    arch = "roberta"
    HEADS = HEADS

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
                 deterministic: bool = True, segment_ids=None,
                 mlm_positions=None) -> BertOutput:
        c = self.config
        if position_ids is None:
            position_ids = padding_positions(input_ids, c.pad_token_id)
        if token_type_ids is None or c.type_vocab_size == 1:
            token_type_ids = jnp.zeros_like(input_ids)
        token_type_ids, position_ids, mask = encoder_inputs(
            input_ids, attention_mask, token_type_ids, position_ids, segment_ids)
        embeddings = BertEmbeddings(c, name="embeddings")
        x = embeddings(input_ids, token_type_ids, position_ids + c.pad_token_id + 1,
                       deterministic)
        layer = layer_class(BertLayer, c.remat)
        for i in range(c.num_hidden_layers):
            x = layer(c, name=f"layer_{i}")(x, mask, deterministic)
        out = BertOutput(last_hidden_state=x)
        if self.head is None:  # HF's RobertaModel has a pooler; its head classes do not
            pooled = jnp.tanh(layers.dense(c.hidden_size, ("embed", "embed_out"), name="pooler",
                                           **_kw(c))(x[:, 0]))
            return out.replace(pooler_output=pooled)
        return apply_head(self.head, c, self.num_labels, out, embeddings, deterministic,
                          mlm_positions)


def apply_head(head, c, num_labels, out, embeddings, deterministic, mlm_positions):
    """`out` with RoBERTa's `head` filled in (inside Roberta's compact __call__, so the
    modules made here are its children). Logits are float32."""
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731  (losses and metrics want float32)
    x = out.last_hidden_state
    rate = c.hidden_dropout_prob if c.classifier_dropout is None else c.classifier_dropout
    if head == "mlm":
        h = at_positions(x, mlm_positions)
        return out.replace(logits=f32(MlmHead(c, activation="gelu", name="lm_head")(h, embeddings)))
    if head == "classification":
        return out.replace(logits=f32(ClassificationHead(c, num_labels, rate,
                                                         name="classifier")(x, deterministic)))
    if head == "token_classification":
        h = layers.Dropout(rate)(x, deterministic=deterministic)
        return out.replace(logits=f32(layers.dense(num_labels, ("embed", "labels"),
                                                   name="classifier", **_kw(c))(h)))
    logits = f32(layers.dense(2, ("embed", "labels"), name="qa_outputs", **_kw(c))(x))
    return out.replace(start_logits=logits[..., 0], end_logits=logits[..., 1])
