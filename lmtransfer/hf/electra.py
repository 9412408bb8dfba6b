"""ELECTRA <-> HF `Electra*` (ElectraModel, ElectraForMaskedLM, ElectraForPreTraining,
ElectraForSequenceClassification, ElectraForTokenClassification, ElectraForQuestionAnswering).
"""

from __future__ import annotations

import dataclasses

from lmtransfer.errors import ConfigError
from lmtransfer.hf import bert
from lmtransfer.hf.convert import Family, require
from lmtransfer.models.electra import Electra, ElectraConfig

MODULES = bert.EMBEDDING_ROWS + (
    ("embeddings_project", "embeddings_project", "dense"),
) + bert.LAYER_ROWS + (
    # Heads: top-level in HF (never under `electra.`); may be created fresh.
    ("generator_predictions/transform", "generator_predictions.dense", "dense"),
    ("generator_predictions/transform_layer_norm", "generator_predictions.LayerNorm", "norm"),
    ("generator_predictions", "generator_lm_head", "bias"),  # its weight: the word table
    ("discriminator_predictions/dense", "discriminator_predictions.dense", "dense"),
    ("discriminator_predictions/dense_prediction", "discriminator_predictions.dense_prediction",
     "dense"),
    ("classifier/dense", "classifier.dense", "dense"),  # sequence classification
    ("classifier/out_proj", "classifier.out_proj", "dense"),
    ("classifier", "classifier", "dense"),  # token classification
    ("qa_outputs", "qa_outputs", "dense"),
)
HEAD_MODULES = ("generator_predictions", "discriminator_predictions", "classifier",
                "qa_outputs")

ARCHITECTURES = {
    None: "ElectraModel", "mlm": "ElectraForMaskedLM", "pretraining": "ElectraForPreTraining",
    "classification": "ElectraForSequenceClassification",
    "token_classification": "ElectraForTokenClassification",
    "qa": "ElectraForQuestionAnswering",
}
# config.json keys that are our config's fields, name for name.
FIELDS = tuple(f.name for f in dataclasses.fields(ElectraConfig)
               if f.name not in ("dtype", "param_dtype", "attention", "remat"))


def config_from_hf(hf, source="config.json", **overrides) -> ElectraConfig:
    if hf.get("model_type") != "electra":
        raise ConfigError(f"{source}: model_type is {hf.get('model_type')!r}, not 'electra'")
    require(hf, ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers",
                 "num_attention_heads", "intermediate_size"), source)
    bert.refuse_unsupported(hf, source)
    kw = {f: hf[f] for f in FIELDS if hf.get(f) is not None}
    return ElectraConfig(**{**kw, **overrides})


def config_to_hf(model) -> dict:
    c = model.config
    return dict({f: getattr(c, f) for f in FIELDS}, model_type="electra",
                position_embedding_type="absolute", tie_word_embeddings=True)


FAMILY = Family(
    name="ELECTRA", model_types=("electra",), modules=MODULES, head_modules=HEAD_MODULES,
    fresh_ok=HEAD_MODULES, prefixes=("electra.",), architectures=ARCHITECTURES,
    config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    make_model=lambda config, head, num_labels: Electra(config, head=head,
                                                        num_labels=num_labels),
    # Buffers, and the generator decoder's copy of the (tied) word embeddings.
    ignored=r"(electra\.)?embeddings\.(position_ids|token_type_ids)|generator_lm_head\.weight",
    arch="electra")
