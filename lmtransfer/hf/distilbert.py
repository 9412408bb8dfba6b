"""DistilBERT <-> HF `DistilBert*` (DistilBertModel, DistilBertForMaskedLM,
DistilBertForSequenceClassification, DistilBertForTokenClassification,
DistilBertForQuestionAnswering).

HF's config names (dim, n_layers, n_heads, hidden_dim, activation, dropout,
attention_dropout) become BERT's names in `DistilBertConfig` and are written back on export.
"""

from __future__ import annotations

from lmtransfer.errors import ConfigError
from lmtransfer.hf.convert import Family, require
from lmtransfer.models import layers
from lmtransfer.models.distilbert import DistilBert, DistilBertConfig

_LAYER = "transformer.layer.{i}"
MODULES = (
    ("embeddings/word_embeddings", "embeddings.word_embeddings", "embed"),
    ("embeddings/position_embeddings", "embeddings.position_embeddings", "embed"),
    ("embeddings/layer_norm", "embeddings.LayerNorm", "norm"),
    ("layer_{i}/attention/query", f"{_LAYER}.attention.q_lin", "split_heads"),
    ("layer_{i}/attention/key", f"{_LAYER}.attention.k_lin", "split_heads"),
    ("layer_{i}/attention/value", f"{_LAYER}.attention.v_lin", "split_heads"),
    ("layer_{i}/attention/out", f"{_LAYER}.attention.out_lin", "merge_heads"),
    ("layer_{i}/attention_layer_norm", f"{_LAYER}.sa_layer_norm", "norm"),
    ("layer_{i}/mlp/wi", f"{_LAYER}.ffn.lin1", "dense"),
    ("layer_{i}/mlp/wo", f"{_LAYER}.ffn.lin2", "dense"),
    ("layer_{i}/output_layer_norm", f"{_LAYER}.output_layer_norm", "norm"),
    # Heads: top-level in HF (never under `distilbert.`); may be created fresh.
    ("mlm/transform", "vocab_transform", "dense"),
    ("mlm/transform_layer_norm", "vocab_layer_norm", "norm"),
    ("mlm", "vocab_projector", "bias"),  # its weight: the word table
    ("pre_classifier", "pre_classifier", "dense"),
    ("classifier", "classifier", "dense"),
    ("qa_outputs", "qa_outputs", "dense"),
)
HEAD_MODULES = ("mlm", "pre_classifier", "classifier", "qa_outputs")

ARCHITECTURES = {
    None: "DistilBertModel", "mlm": "DistilBertForMaskedLM",
    "classification": "DistilBertForSequenceClassification",
    "token_classification": "DistilBertForTokenClassification",
    "qa": "DistilBertForQuestionAnswering",
}
# config.json key -> our config field (the same name where not listed).
RENAMED = {"dim": "hidden_size", "n_layers": "num_hidden_layers",
           "n_heads": "num_attention_heads", "hidden_dim": "intermediate_size",
           "activation": "hidden_act", "dropout": "hidden_dropout_prob",
           "attention_dropout": "attention_probs_dropout_prob"}
SAME = ("vocab_size", "max_position_embeddings", "initializer_range", "pad_token_id",
        "seq_classif_dropout", "qa_dropout")
HF_KEYS = tuple(RENAMED) + SAME


def config_from_hf(hf, source="config.json", **overrides) -> DistilBertConfig:
    if hf.get("model_type") != "distilbert":
        raise ConfigError(f"{source}: model_type is {hf.get('model_type')!r}, not 'distilbert'")
    require(hf, ("vocab_size", "dim", "n_layers", "n_heads", "hidden_dim"), source)
    if hf.get("sinusoidal_pos_embds"):
        raise ConfigError(f"{source}: sinusoidal_pos_embds=true is not supported (lmtransfer's "
                          "DistilBERT learns its position table)")
    if hf.get("tie_word_embeddings", True) is False:
        raise ConfigError(f"{source}: tie_word_embeddings=false is not supported (the MLM "
                          "vocab_projector is the word embedding table)")
    act = hf.get("activation", "gelu")
    if act not in layers.ACTIVATIONS:
        raise ConfigError(f"{source}: activation={act!r} is not supported; lmtransfer has "
                          f"{sorted(layers.ACTIVATIONS)}")
    if hf["dim"] % hf["n_heads"]:
        raise ConfigError(f"{source}: dim={hf['dim']} is not divisible by "
                          f"n_heads={hf['n_heads']}")
    kw = {RENAMED.get(k, k): hf[k] for k in HF_KEYS if hf.get(k) is not None}
    return DistilBertConfig(**{**kw, **overrides})


def config_to_hf(model) -> dict:
    c = model.config
    return dict({k: getattr(c, RENAMED.get(k, k)) for k in HF_KEYS}, model_type="distilbert",
                sinusoidal_pos_embds=False, tie_word_embeddings=True)


FAMILY = Family(
    name="DistilBERT", model_types=("distilbert",), modules=MODULES, head_modules=HEAD_MODULES,
    fresh_ok=HEAD_MODULES, prefixes=("distilbert.",), architectures=ARCHITECTURES,
    config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    make_model=lambda config, head, num_labels: DistilBert(config, head=head,
                                                           num_labels=num_labels),
    # The position-id buffer, and older checkpoints' copy of the (tied) word embeddings.
    ignored=r"(distilbert\.)?embeddings\.position_ids|vocab_projector\.weight",
    arch="distilbert")
