"""ALBERT encoder (Lan et al. 2020) in functional Flax linen, numerically equal to HF's
AlbertModel, AlbertForMaskedLM, AlbertForPreTraining (MLM + sentence-order prediction),
AlbertForSequenceClassification, AlbertForTokenClassification and AlbertForQuestionAnswering.

ALBERT is BERT with factorized embeddings (tables `embedding_size` wide, always projected to
`hidden_size` by `embedding_hidden_mapping_in`) and cross-layer parameter sharing: there are
`num_hidden_groups` groups of `inner_group_num` layers; depth i runs all the layers of group
int(i / (num_hidden_layers / num_hidden_groups)), as in HF. Each shared layer is one module
(`shared_layer_{g * inner_group_num + j}`, BERT's `BertLayer`) called at every depth its
group serves, so the parameter tree holds one set of weights per (group, inner layer).

Inference is exact. In training, BertLayer also drops out the feed-forward output with
`hidden_dropout_prob`, which HF's AlbertLayer does not (ALBERT v2 configs set it to 0).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from lmtransfer.models import layers
from lmtransfer.models.base import ConfigBase, Model, at_positions, check_config, encoder_inputs
from lmtransfer.models.bert import BertEmbeddings, BertLayer, BertOutput, layer_class
from lmtransfer.models.heads import MlmHead

HEADS = (None, "mlm", "pretraining", "classification", "token_classification", "qa")
# HF builds these heads on an AlbertModel without a pooler (add_pooling_layer=False).
_NO_POOLER = ("mlm", "token_classification", "qa")


@dataclasses.dataclass(frozen=True)
class AlbertConfig(ConfigBase):
    """Architecture (HF `AlbertConfig` field names and defaults) plus lmtransfer's compute
    settings (the same as BertConfig's)."""

    vocab_size: int = 30000
    embedding_size: int = 128
    hidden_size: int = 4096
    num_hidden_layers: int = 12
    num_hidden_groups: int = 1
    num_attention_heads: int = 64
    intermediate_size: int = 16384
    inner_group_num: int = 1
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    classifier_dropout_prob: float | None = 0.1
    pad_token_id: int = 0
    bos_token_id: int | None = 2
    eos_token_id: int | None = 3
    # lmtransfer-only: not part of the HF architecture.
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention: str = "auto"
    remat: bool = False

    def __post_init__(self):
        check_config(self)
        if not 1 <= self.num_hidden_groups <= self.num_hidden_layers:
            raise ValueError(f"num_hidden_groups={self.num_hidden_groups} must be in 1.."
                             f"num_hidden_layers={self.num_hidden_layers}")
        if self.inner_group_num < 1:
            raise ValueError(f"inner_group_num={self.inner_group_num} must be >= 1")

    def group_of(self, depth: int) -> int:
        """The layer group depth `depth` runs (HF's AlbertTransformer indexing)."""
        return int(depth / (self.num_hidden_layers / self.num_hidden_groups))


def _kw(c) -> dict:
    return dict(init_std=c.initializer_range, dtype=jnp.dtype(c.dtype),
                param_dtype=jnp.dtype(c.param_dtype))


class Albert(Model):
    """ALBERT encoder with an optional task head (see HEADS): "pretraining" fills `logits`
    (MLM) and `seq_relationship_logits` (sentence order, `num_labels` wide as in HF).

    `segment_ids` ([B, T], 0 = padding, k = k-th packed document) replaces `attention_mask`;
    `mlm_positions` ([B, P]) runs the MLM decoder at those positions only."""

    config: AlbertConfig
    arch = "albert"
    HEADS = HEADS

    @property
    def has_pooler(self) -> bool:
        return self.head not in _NO_POOLER

    def module_uses(self) -> dict[str, int]:
        """How often each shared layer runs per forward: the weights are shared, the compute
        is not (lmtransfer.perf counts FLOPs with it)."""
        c, uses = self.config, {}
        for depth in range(c.num_hidden_layers):
            for j in range(c.inner_group_num):
                name = f"shared_layer_{c.group_of(depth) * c.inner_group_num + j}"
                uses[name] = uses.get(name, 0) + 1
        return uses

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
        x = layers.dense(c.hidden_size, ("embed_out", "embed"),
                         name="embedding_hidden_mapping_in", **kw)(x)
        x = layers.constrain(x, layers.ACT_BTE)
        layer = layer_class(BertLayer, c.remat)
        inner = c.inner_group_num
        groups = [[layer(c, name=f"shared_layer_{g * inner + j}") for j in range(inner)]
                  for g in range(c.num_hidden_groups)]
        for depth in range(c.num_hidden_layers):
            for shared in groups[c.group_of(depth)]:
                x = shared(x, mask, deterministic)
        out = BertOutput(last_hidden_state=x)
        if self.has_pooler:
            out = out.replace(pooler_output=jnp.tanh(layers.dense(
                c.hidden_size, ("embed", "embed_out"), name="pooler", **kw)(x[:, 0])))
        if self.head is None:
            return out
        return apply_head(self.head, c, self.num_labels, out, embeddings, deterministic,
                          mlm_positions)


def apply_head(head, c, num_labels, out, embeddings, deterministic, mlm_positions):
    """`out` with ALBERT's `head` filled in (called inside Albert's compact __call__, so the
    modules made here are its children). Logits are float32."""
    kw = _kw(c)
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731  (losses and metrics want float32)
    x = out.last_hidden_state

    def classifier(h, n, name):
        return f32(layers.dense(n, ("embed", "labels"), name=name, **kw)(h))

    if head in ("mlm", "pretraining"):
        h = at_positions(x, mlm_positions)
        out = out.replace(logits=f32(MlmHead(c, c.embedding_size, name="predictions")(
            h, embeddings)))
    if head == "pretraining":  # AlbertSOPHead: dropout + classifier on the pooled output
        pooled = layers.Dropout(c.classifier_dropout_prob or 0.0)(
            out.pooler_output, deterministic=deterministic)
        out = out.replace(seq_relationship_logits=classifier(pooled, num_labels,
                                                             "sop_classifier"))
    if head == "classification":
        pooled = layers.Dropout(c.classifier_dropout_prob or 0.0)(
            out.pooler_output, deterministic=deterministic)
        out = out.replace(logits=classifier(pooled, num_labels, "classifier"))
    if head == "token_classification":
        rate = (c.hidden_dropout_prob if c.classifier_dropout_prob is None
                else c.classifier_dropout_prob)
        h = layers.Dropout(rate)(x, deterministic=deterministic)
        out = out.replace(logits=classifier(h, num_labels, "classifier"))
    if head == "qa":
        logits = classifier(x, 2, "qa_outputs")
        out = out.replace(start_logits=logits[..., 0], end_logits=logits[..., 1])
    return out
