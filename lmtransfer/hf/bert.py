"""BERT <-> HF `Bert*` (BertModel and its six heads), and what the families with BERT's
layout share: its embedding and layer rows, the refusal of the options none implements."""

from __future__ import annotations

import re

from lmtransfer.errors import ConfigError
from lmtransfer.hf.convert import Family
from lmtransfer.models import layers
from lmtransfer.models.bert import Bert, BertConfig

# BERT's embeddings and layers, shared by the families with its layout (RoBERTa, ELECTRA).
EMBEDDING_ROWS = (
    ("embeddings/word_embeddings", "embeddings.word_embeddings", "embed"),
    ("embeddings/position_embeddings", "embeddings.position_embeddings", "embed"),
    ("embeddings/token_type_embeddings", "embeddings.token_type_embeddings", "embed"),
    ("embeddings/layer_norm", "embeddings.LayerNorm", "norm"),
)
_L = "encoder.layer.{i}"
LAYER_ROWS = (
    ("layer_{i}/attention/query", f"{_L}.attention.self.query", "split_heads"),
    ("layer_{i}/attention/key", f"{_L}.attention.self.key", "split_heads"),
    ("layer_{i}/attention/value", f"{_L}.attention.self.value", "split_heads"),
    ("layer_{i}/attention/out", f"{_L}.attention.output.dense", "merge_heads"),
    ("layer_{i}/attention_layer_norm", f"{_L}.attention.output.LayerNorm", "norm"),
    ("layer_{i}/mlp/wi", f"{_L}.intermediate.dense", "dense"),
    ("layer_{i}/mlp/wo", f"{_L}.output.dense", "dense"),
    ("layer_{i}/output_layer_norm", f"{_L}.output.LayerNorm", "norm"),
)
MODULES = EMBEDDING_ROWS + LAYER_ROWS + (
    ("pooler", "pooler.dense", "dense"),
    # Heads: top-level in HF (never under the `bert.` prefix); may be created fresh.
    ("mlm/transform", "cls.predictions.transform.dense", "dense"),
    ("mlm/transform_layer_norm", "cls.predictions.transform.LayerNorm", "norm"),
    ("mlm", "cls.predictions", "bias"),
    ("nsp", "cls.seq_relationship", "dense"),
    ("classifier", "classifier", "dense"),
    ("qa_outputs", "qa_outputs", "dense"),
)
HEAD_MODULES = ("mlm", "nsp", "classifier", "qa_outputs")

ARCHITECTURES = {
    None: "BertModel", "mlm": "BertForMaskedLM", "nsp": "BertForNextSentencePrediction",
    "pretraining": "BertForPreTraining", "classification": "BertForSequenceClassification",
    "token_classification": "BertForTokenClassification", "qa": "BertForQuestionAnswering",
}


def _split(tensors, config):
    """Old TF-converted names (LayerNorm.gamma/beta) and the MLM decoder-only bias."""
    out = {}
    for k, v in tensors.items():
        k = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", k)
        out[re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)] = v
    if "cls.predictions.bias" not in out and "cls.predictions.decoder.bias" in out:
        out["cls.predictions.bias"] = out["cls.predictions.decoder.bias"]
    return out


def refuse_unsupported(hf: dict, source: str) -> None:
    """The BERT-style options lmtransfer's BERT-layout families (RoBERTa, ELECTRA, ALBERT)
    do not implement."""
    pos = hf.get("position_embedding_type", "absolute")
    if pos != "absolute":
        raise ConfigError(f"{source}: position_embedding_type={pos!r} is not supported "
                          "(only 'absolute')")
    for key in ("is_decoder", "add_cross_attention"):
        if hf.get(key):
            raise ConfigError(f"{source}: {key}=true is not supported (encoder only)")
    if hf.get("tie_word_embeddings", True) is False:
        raise ConfigError(f"{source}: tie_word_embeddings=false is not supported (the MLM "
                          "decoder is the word embedding table)")
    act = hf.get("hidden_act", "gelu")
    if act not in layers.ACTIVATIONS:
        raise ConfigError(f"{source}: hidden_act={act!r} is not supported; lmtransfer has "
                          f"{sorted(layers.ACTIVATIONS)}")


FAMILY = Family(
    name="BERT", model_types=("bert",), modules=MODULES, head_modules=HEAD_MODULES,
    fresh_ok=HEAD_MODULES + ("pooler",), prefixes=("bert.",), architectures=ARCHITECTURES,
    config_from_hf=BertConfig.from_hf, config_to_hf=lambda model: model.config.to_hf(),
    make_model=lambda config, head, num_labels: Bert(config, head=head, num_labels=num_labels),
    ignored=r"(bert\.)?embeddings\.position_ids|cls\.predictions\.decoder\.(weight|bias)",
    split=_split)
