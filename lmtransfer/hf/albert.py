"""ALBERT <-> HF `Albert*` (AlbertModel, AlbertForMaskedLM, AlbertForPreTraining,
AlbertForSequenceClassification, AlbertForTokenClassification, AlbertForQuestionAnswering).

HF indexes a shared layer by (group, inner layer): `encoder.albert_layer_groups.{g}.
albert_layers.{j}`. The table has one index, so `split`/`merge` rename those to and from
`encoder.shared_layer.{g * inner_group_num + j}`, our `shared_layer_{k}`.
"""

from __future__ import annotations

import dataclasses
import re

from lmtransfer.errors import ConfigError
from lmtransfer.hf import bert
from lmtransfer.hf.convert import Family, require
from lmtransfer.models.albert import Albert, AlbertConfig

_LAYER = "encoder.shared_layer.{i}"
MODULES = (
    ("embeddings/word_embeddings", "embeddings.word_embeddings", "embed"),
    ("embeddings/position_embeddings", "embeddings.position_embeddings", "embed"),
    ("embeddings/token_type_embeddings", "embeddings.token_type_embeddings", "embed"),
    ("embeddings/layer_norm", "embeddings.LayerNorm", "norm"),
    ("embedding_hidden_mapping_in", "encoder.embedding_hidden_mapping_in", "dense"),
    ("shared_layer_{i}/attention/query", f"{_LAYER}.attention.query", "split_heads"),
    ("shared_layer_{i}/attention/key", f"{_LAYER}.attention.key", "split_heads"),
    ("shared_layer_{i}/attention/value", f"{_LAYER}.attention.value", "split_heads"),
    ("shared_layer_{i}/attention/out", f"{_LAYER}.attention.dense", "merge_heads"),
    ("shared_layer_{i}/attention_layer_norm", f"{_LAYER}.attention.LayerNorm", "norm"),
    ("shared_layer_{i}/mlp/wi", f"{_LAYER}.ffn", "dense"),
    ("shared_layer_{i}/mlp/wo", f"{_LAYER}.ffn_output", "dense"),
    ("shared_layer_{i}/output_layer_norm", f"{_LAYER}.full_layer_layer_norm", "norm"),
    ("pooler", "pooler", "dense"),
    # Heads: top-level in HF (never under `albert.`); may be created fresh.
    ("predictions/transform", "predictions.dense", "dense"),
    ("predictions/transform_layer_norm", "predictions.LayerNorm", "norm"),
    ("predictions", "predictions", "bias"),  # the decoder's weight is the word table
    ("sop_classifier", "sop_classifier.classifier", "dense"),
    ("classifier", "classifier", "dense"),
    ("qa_outputs", "qa_outputs", "dense"),
)
HEAD_MODULES = ("predictions", "sop_classifier", "classifier", "qa_outputs")

ARCHITECTURES = {
    None: "AlbertModel", "mlm": "AlbertForMaskedLM", "pretraining": "AlbertForPreTraining",
    "classification": "AlbertForSequenceClassification",
    "token_classification": "AlbertForTokenClassification", "qa": "AlbertForQuestionAnswering",
}
FIELDS = tuple(f.name for f in dataclasses.fields(AlbertConfig)
               if f.name not in ("dtype", "param_dtype", "attention", "remat"))

_HF_LAYER = re.compile(r"((?:albert\.)?encoder\.)albert_layer_groups\.(\d+)\.albert_layers\."
                       r"(\d+)\.")
_OUR_LAYER = re.compile(r"((?:albert\.)?encoder\.)shared_layer\.(\d+)\.")


def _split(tensors, config):
    """HF (group, inner) layer names -> one index; an MLM bias stored only as the decoder's."""
    inner = config.inner_group_num

    def rename(m):
        g, j = int(m[2]), int(m[3])
        if j >= inner:  # keep it unmatched: reported as an unexpected tensor
            return m[0]
        return f"{m[1]}shared_layer.{g * inner + j}."

    out = {_HF_LAYER.sub(rename, k, count=1): v for k, v in tensors.items()}
    if "predictions.bias" not in out and "predictions.decoder.bias" in out:
        out["predictions.bias"] = out["predictions.decoder.bias"]
    return out


def _merge(tensors, config):
    inner = config.inner_group_num

    def rename(m):
        k = int(m[2])
        return f"{m[1]}albert_layer_groups.{k // inner}.albert_layers.{k % inner}."

    return {_OUR_LAYER.sub(rename, k, count=1): v for k, v in tensors.items()}


def config_from_hf(hf, source="config.json", **overrides) -> AlbertConfig:
    if hf.get("model_type") != "albert":
        raise ConfigError(f"{source}: model_type is {hf.get('model_type')!r}, not 'albert'")
    require(hf, ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers",
                 "num_attention_heads", "intermediate_size"), source)
    bert.refuse_unsupported(hf, source)
    layers_n = hf["num_hidden_layers"]
    groups = hf.get("num_hidden_groups", 1)
    if not 1 <= groups <= layers_n:
        raise ConfigError(f"{source}: num_hidden_groups={groups} is not supported (1.."
                          f"num_hidden_layers={layers_n}: HF would build groups no layer uses)")
    if hf.get("inner_group_num", 1) < 1:
        raise ConfigError(f"{source}: inner_group_num={hf['inner_group_num']} is not supported "
                          "(>= 1)")
    kw = {f: hf[f] for f in FIELDS if hf.get(f) is not None}
    kw["classifier_dropout_prob"] = hf.get("classifier_dropout_prob", 0.1)
    for key in ("bos_token_id", "eos_token_id"):  # a list of ids: the first
        if isinstance(kw.get(key), list):
            kw[key] = kw[key][0] if kw[key] else None
    return AlbertConfig(**{**kw, **overrides})


def config_to_hf(model) -> dict:
    c = model.config
    out = dict({f: getattr(c, f) for f in FIELDS}, model_type="albert",
               position_embedding_type="absolute", tie_word_embeddings=True)
    if model.head == "pretraining":  # HF's sentence-order head is config.num_labels wide
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(model.num_labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(model.num_labels)}
    return out


FAMILY = Family(
    name="ALBERT", model_types=("albert",), modules=MODULES, head_modules=HEAD_MODULES,
    fresh_ok=HEAD_MODULES + ("pooler",), prefixes=("albert.",), architectures=ARCHITECTURES,
    config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    make_model=lambda config, head, num_labels: Albert(config, head=head, num_labels=num_labels),
    # Buffers, and the MLM decoder's copies of the (tied) word table and bias.
    ignored=r"(albert\.)?embeddings\.(position_ids|token_type_ids)|"
            r"predictions\.decoder\.(weight|bias)",
    split=_split, merge=_merge, arch="albert")
