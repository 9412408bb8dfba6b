"""DeBERTa-v2 / v3 <-> HF `DebertaV2*` (model_type "deberta-v2"): DebertaV2Model,
DebertaV2ForMaskedLM (both `legacy` head layouts), DebertaV2ForSequenceClassification,
DebertaV2ForTokenClassification, DebertaV2ForQuestionAnswering."""

from __future__ import annotations

from lmtransfer.errors import ConfigError
from lmtransfer.hf.convert import Family, require
from lmtransfer.models.deberta_v2 import DebertaV2, DebertaV2Config

_ATT = "encoder.layer.{i}.attention"
MODULES = (
    ("embeddings/word_embeddings", "embeddings.word_embeddings", "embed"),
    ("embeddings/position_embeddings", "embeddings.position_embeddings", "embed"),
    ("embeddings/token_type_embeddings", "embeddings.token_type_embeddings", "embed"),
    ("embeddings/embed_proj", "embeddings.embed_proj", "dense"),
    ("embeddings/layer_norm", "embeddings.LayerNorm", "norm"),
    ("rel_embeddings", "encoder.rel_embeddings", "embed"),
    ("rel_layer_norm", "encoder.LayerNorm", "norm"),
    ("layer_{i}/attention/query", _ATT + ".self.query_proj", "split_heads"),
    ("layer_{i}/attention/key", _ATT + ".self.key_proj", "split_heads"),
    ("layer_{i}/attention/value", _ATT + ".self.value_proj", "split_heads"),
    ("layer_{i}/attention/pos_key", _ATT + ".self.pos_key_proj", "split_heads"),
    ("layer_{i}/attention/pos_query", _ATT + ".self.pos_query_proj", "split_heads"),
    ("layer_{i}/attention/out", _ATT + ".output.dense", "merge_heads"),
    ("layer_{i}/attention_layer_norm", _ATT + ".output.LayerNorm", "norm"),
    ("layer_{i}/mlp/wi", "encoder.layer.{i}.intermediate.dense", "dense"),
    ("layer_{i}/mlp/wo", "encoder.layer.{i}.output.dense", "dense"),
    ("layer_{i}/output_layer_norm", "encoder.layer.{i}.output.LayerNorm", "norm"),
    # Heads: top-level in HF (never under `deberta.`); may be created fresh. Both MLM
    # layouts are listed, so a checkpoint with the other one's tensors drops them (as HF does).
    ("mlm/transform", "cls.predictions.transform.dense", "dense"),
    ("mlm/transform_layer_norm", "cls.predictions.transform.LayerNorm", "norm"),
    ("mlm", "cls.predictions", "bias"),
    ("lm_predictions/transform", "lm_predictions.lm_head.dense", "dense"),
    ("lm_predictions/transform_layer_norm", "lm_predictions.lm_head.LayerNorm", "norm"),
    ("lm_predictions", "lm_predictions.lm_head", "bias"),
    ("pooler", "pooler.dense", "dense"),
    ("classifier", "classifier", "dense"),
    ("qa_outputs", "qa_outputs", "dense"),
)
HEAD_MODULES = ("mlm", "lm_predictions", "pooler", "classifier", "qa_outputs")
ARCHITECTURES = {
    None: "DebertaV2Model", "mlm": "DebertaV2ForMaskedLM",
    "classification": "DebertaV2ForSequenceClassification",
    "token_classification": "DebertaV2ForTokenClassification",
    "qa": "DebertaV2ForQuestionAnswering",
}
# HF fields read as they are (the rest are mapped or refused below).
FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
          "intermediate_size", "hidden_act", "hidden_dropout_prob", "attention_probs_dropout_prob",
          "max_position_embeddings", "type_vocab_size", "initializer_range", "layer_norm_eps",
          "pad_token_id", "embedding_size", "relative_attention", "max_relative_positions",
          "position_buckets", "position_biased_input", "pos_att_type", "share_att_key",
          "norm_rel_ebd", "pooler_dropout", "pooler_hidden_act", "legacy")


def config_from_hf(hf, source="config.json", **overrides) -> DebertaV2Config:
    require(hf, ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size"), source)
    if hf.get("model_type") != "deberta-v2":
        raise ConfigError(f"{source}: model_type is {hf.get('model_type')!r}, but this reads "
                          "DeBERTa-v2/v3 checkpoints (model_type 'deberta-v2')")
    if (hf.get("conv_kernel_size") or 0) > 0:
        raise ConfigError(f"{source}: conv_kernel_size={hf['conv_kernel_size']} (DeBERTa-v2's "
                          "ConvLayer after the first layer) is not supported; lmtransfer reads "
                          "conv_kernel_size=0 (DeBERTa-v3, deberta-v2 without conv)")
    head_dim = hf["hidden_size"] // hf["num_attention_heads"]
    if hf.get("attention_head_size", head_dim) != head_dim:
        raise ConfigError(f"{source}: attention_head_size={hf['attention_head_size']} is not "
                          f"supported; only hidden_size / num_attention_heads = {head_dim}")
    if hf.get("pooler_hidden_size", hf["hidden_size"]) != hf["hidden_size"]:
        raise ConfigError(f"{source}: pooler_hidden_size={hf['pooler_hidden_size']} is not "
                          f"supported; only hidden_size={hf['hidden_size']}")
    if hf.get("tie_word_embeddings", True) is False:
        raise ConfigError(f"{source}: tie_word_embeddings=false is not supported; the MLM "
                          "decoder is always the word embeddings")
    kw = {f: hf[f] for f in FIELDS if hf.get(f) is not None}
    if kw.get("embedding_size") == hf["hidden_size"]:
        kw.pop("embedding_size")
    kw["classifier_dropout"] = hf.get("cls_dropout")
    try:
        return DebertaV2Config(**{**kw, **overrides})
    except ValueError as e:  # the config's own checks, named after the file
        raise ConfigError(f"{source}: {e}") from None


def config_to_hf(model) -> dict:
    c = model.config
    out = {f: getattr(c, f) for f in FIELDS}
    out.update(model_type="deberta-v2", embedding_size=c.embed_dim,
               pos_att_type=list(c.pos_att_type), pooler_hidden_size=c.hidden_size,
               conv_kernel_size=0, tie_word_embeddings=True)
    if c.classifier_dropout is not None:
        out["cls_dropout"] = c.classifier_dropout
    return out


def _split(tensors, config):
    """The legacy MLM bias stored only as its decoder's tied copy."""
    if "cls.predictions.bias" not in tensors and "cls.predictions.decoder.bias" in tensors:
        tensors["cls.predictions.bias"] = tensors["cls.predictions.decoder.bias"]
    return tensors


FAMILY = Family(
    name="DeBERTa-v2", model_types=("deberta-v2",), modules=MODULES, head_modules=HEAD_MODULES,
    fresh_ok=HEAD_MODULES, prefixes=("deberta.",), architectures=ARCHITECTURES,
    config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    make_model=lambda config, head, num_labels: DebertaV2(config, head=head,
                                                          num_labels=num_labels),
    # HF ignores these too: absolute positions of position_biased_input=false checkpoints,
    # the tied decoder copy, and DeBERTa-v3's replaced-token-detection head.
    ignored=(r"(deberta\.)?embeddings\.(position_ids|position_embeddings\.weight)"
             r"|cls\.predictions\.decoder\.(weight|bias)|mask_predictions\..*"),
    split=_split, arch="deberta_v2")
