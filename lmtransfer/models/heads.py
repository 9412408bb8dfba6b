"""Task heads on the BERT encoder and the decoders, laid out like HF's *For* heads.

Called from inside the model's `__call__` (a compact method), so the modules created here
become children of the model under the names used in the parameter tree (and in
lmtransfer.hf's tables).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from lmtransfer.models import layers
from lmtransfer.models.base import at_positions


class MlmHead(nn.Module):
    """transform (dense + act + LayerNorm) -> decoder tied to the word embeddings + bias:
    BERT's, and every encoder family's MLM head (`features`: the transform's width, the
    word table's when the family factorizes it; `activation`: where the family fixes one
    rather than taking hidden_act)."""

    config: Any
    features: int | None = None  # None: hidden_size
    activation: str | None = None  # None: config.hidden_act

    @nn.compact
    def __call__(self, x, embeddings):
        c = self.config
        dtype, pdtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        h = layers.dense(self.features or c.hidden_size, ("embed", "embed_out"),
                         init_std=c.initializer_range, dtype=dtype, param_dtype=pdtype,
                         name="transform")(x)
        h = layers.ACTIVATIONS[self.activation or c.hidden_act](h)
        h = layers.layer_norm(c.layer_norm_eps, dtype, pdtype, name="transform_layer_norm")(h)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                               ("vocab",)),
                          (c.vocab_size,), pdtype)
        logits = embeddings.attend(h.astype(dtype)) + bias.astype(dtype)
        return nn.with_logical_constraint(
            logits, ("activation_batch", "activation_length", "activation_vocab"))


def _classifier(c, num_labels: int, name: str, use_bias: bool = True):
    return layers.dense(num_labels, ("embed", "labels"), init_std=c.initializer_range,
                        dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype),
                        name=name, use_bias=use_bias)


def _classifier_dropout(c):
    rate = c.classifier_dropout if c.classifier_dropout is not None else c.hidden_dropout_prob
    return layers.Dropout(rate)


def apply_head(head: str, c, num_labels: int, out, embeddings, deterministic: bool,
               mlm_positions=None):
    """Returns `out` (a BertOutput) with the head's logits filled in. Logits are float32.
    MLM logits are at `mlm_positions` ([B, P]) only when given."""
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731  (losses and metrics want float32)
    x = out.last_hidden_state
    if head in ("mlm", "pretraining"):
        out = out.replace(logits=f32(MlmHead(c, name="mlm")(at_positions(x, mlm_positions),
                                                             embeddings)))
    if head in ("nsp", "pretraining"):
        out = out.replace(seq_relationship_logits=f32(_classifier(c, 2, "nsp")(out.pooler_output)))
    if head == "classification":
        pooled = _classifier_dropout(c)(out.pooler_output, deterministic=deterministic)
        out = out.replace(logits=f32(_classifier(c, num_labels, "classifier")(pooled)))
    if head == "token_classification":
        h = _classifier_dropout(c)(x, deterministic=deterministic)
        out = out.replace(logits=f32(_classifier(c, num_labels, "classifier")(h)))
    if head == "qa":
        logits = f32(_classifier(c, 2, "qa_outputs")(x))
        out = out.replace(start_logits=logits[..., 0], end_logits=logits[..., 1])
    return out


def last_token(x, valid):
    """[B, T, E] -> [B, E] at each row's last valid position (padding on either side)."""
    index = jnp.argmax(jnp.where(valid, jnp.arange(valid.shape[-1]), -1), axis=-1)
    return jnp.take_along_axis(x, index[:, None, None], axis=1)[:, 0]


def apply_decoder_head(head: str, c, num_labels: int, out, valid, deterministic: bool):
    """A decoder's task head (HF GPT2/LlamaFor*): `score` (no bias) at the last real token,
    a per-token `classifier`, or `qa_outputs` start/end logits. `valid` [B, T] is True at
    real tokens."""
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    x = out.last_hidden_state
    if head == "classification":
        return out.replace(logits=f32(_classifier(c, num_labels, "score", use_bias=False)(
            last_token(x, valid))))
    if head == "token_classification":
        h = _classifier_dropout(c)(x, deterministic=deterministic)
        return out.replace(logits=f32(_classifier(c, num_labels, "classifier")(h)))
    if head == "qa":
        logits = f32(_classifier(c, 2, "qa_outputs")(x))
        return out.replace(start_logits=logits[..., 0], end_logits=logits[..., 1])
    raise ValueError(f"decoder head {head!r}")
