"""RoBERTa and XLM-RoBERTa <-> HF `Roberta*` / `XLMRoberta*` (the Model and its MLM, sequence
classification, token classification and QA heads; both families share one layout)."""

from __future__ import annotations

import dataclasses

from lmtransfer.errors import ConfigError
from lmtransfer.hf import bert
from lmtransfer.hf.convert import Family, require
from lmtransfer.models.roberta import Roberta, RobertaConfig

MODULES = bert.EMBEDDING_ROWS + bert.LAYER_ROWS + (
    ("pooler", "pooler.dense", "dense"),
    # Heads: top-level in HF (never under `roberta.`); may be created fresh.
    ("lm_head/transform", "lm_head.dense", "dense"),
    ("lm_head/transform_layer_norm", "lm_head.layer_norm", "norm"),
    ("lm_head", "lm_head", "bias"),  # its decoder weight: the word table
    ("classifier/dense", "classifier.dense", "dense"),  # sequence classification
    ("classifier/out_proj", "classifier.out_proj", "dense"),
    ("classifier", "classifier", "dense"),  # token classification
    ("qa_outputs", "qa_outputs", "dense"),
)
HEAD_MODULES = ("lm_head", "classifier", "qa_outputs")
_CLASSES = {None: "Model", "mlm": "ForMaskedLM", "classification": "ForSequenceClassification",
            "token_classification": "ForTokenClassification", "qa": "ForQuestionAnswering"}
_PREFIX = {"roberta": "Roberta", "xlm-roberta": "XLMRoberta"}
# config.json keys that are our config's fields, name for name.
FIELDS = tuple(f.name for f in dataclasses.fields(RobertaConfig)
               if f.name not in ("dtype", "param_dtype", "attention", "remat"))


def config_from_hf(hf, source="config.json", **overrides) -> RobertaConfig:
    if hf.get("model_type") not in _PREFIX:
        raise ConfigError(f"{source}: model_type is {hf.get('model_type')!r}, not one of "
                          f"{sorted(_PREFIX)}")
    require(hf, ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "max_position_embeddings"), source)
    bert.refuse_unsupported(hf, source)
    kw = {f: hf[f] for f in FIELDS if hf.get(f) is not None}
    config = RobertaConfig(**{**kw, **overrides})
    if config.max_positions < 1:
        raise ConfigError(f"{source}: max_position_embeddings={config.max_position_embeddings} "
                          f"leaves no positions after RoBERTa's offset of pad_token_id + 1 = "
                          f"{config.pad_token_id + 1}")
    return config


def config_to_hf(model) -> dict:
    c = model.config
    return dict({f: getattr(c, f) for f in FIELDS}, position_embedding_type="absolute",
                tie_word_embeddings=True)


FAMILY = Family(
    name="RoBERTa", model_types=tuple(_PREFIX), modules=MODULES, head_modules=HEAD_MODULES,
    fresh_ok=HEAD_MODULES + ("pooler",), prefixes=("roberta.",),
    architectures=lambda model: _PREFIX[model.config.model_type] + _CLASSES[model.head],
    config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    make_model=lambda config, head, num_labels: Roberta(config, head=head,
                                                        num_labels=num_labels),
    # Buffers, and the MLM decoder's copies of the (tied) word table and of lm_head.bias.
    ignored=r"(roberta\.)?embeddings\.(position_ids|token_type_ids)|lm_head\.decoder\.(weight|bias)",
    arch="roberta")
