"""ModernBERT <-> HF `ModernBert*` (ModernBertModel, ModernBertForMaskedLM,
ModernBertForSequenceClassification, ModernBertForTokenClassification,
ModernBertForQuestionAnswering).

HF fuses q/k/v into `attn.Wqkv` ([3 * hidden, hidden], q rows first) and the GeGLU halves into
`mlp.Wi` ([2 * intermediate, hidden], the activated `input` half first); `split` cuts them into
the `Wqkv.q|k|v` and `Wi.input|gate` names the table uses and `merge` joins them again.
"""

from __future__ import annotations

import re

import numpy as np

from lmtransfer.errors import ConfigError
from lmtransfer.hf.convert import Family, require
from lmtransfer.models import layers
from lmtransfer.models.modernbert import (
    LAYER_TYPES,
    POOLING,
    ModernBert,
    ModernBertConfig,
    default_layer_types,
)

_LAYER = "layers.{i}"
MODULES = (
    ("embeddings/tok_embeddings", "embeddings.tok_embeddings", "embed"),
    ("embeddings/norm", "embeddings.norm", "norm"),
    ("layer_{i}/attn_norm", f"{_LAYER}.attn_norm", "norm"),  # none on layer 0
    ("layer_{i}/attention/query", f"{_LAYER}.attn.Wqkv.q", "split_heads"),
    ("layer_{i}/attention/key", f"{_LAYER}.attn.Wqkv.k", "split_heads"),
    ("layer_{i}/attention/value", f"{_LAYER}.attn.Wqkv.v", "split_heads"),
    ("layer_{i}/attention/out", f"{_LAYER}.attn.Wo", "merge_heads"),
    ("layer_{i}/mlp_norm", f"{_LAYER}.mlp_norm", "norm"),
    ("layer_{i}/mlp/wi", f"{_LAYER}.mlp.Wi.input", "dense"),
    ("layer_{i}/mlp/gate", f"{_LAYER}.mlp.Wi.gate", "dense"),
    ("layer_{i}/mlp/wo", f"{_LAYER}.mlp.Wo", "dense"),
    ("final_norm", "final_norm", "norm"),
    # Heads: top-level in HF (never under `model.`); may be created fresh.
    ("prediction_head/dense", "head.dense", "dense"),
    ("prediction_head/norm", "head.norm", "norm"),
    ("decoder", "decoder", "bias"),  # its weight: the token table (tied)
    ("classifier", "classifier", "dense"),
    ("qa_outputs", "classifier", "dense", ("qa",)),  # HF's QA head is `classifier` too
)
HEAD_MODULES = ("prediction_head", "decoder", "classifier", "qa_outputs")
ARCHITECTURES = {
    None: "ModernBertModel", "mlm": "ModernBertForMaskedLM",
    "classification": "ModernBertForSequenceClassification",
    "token_classification": "ModernBertForTokenClassification",
    "qa": "ModernBertForQuestionAnswering",
}
# our field -> config.json key, where they differ.
RENAMED = {"hidden_act": "hidden_activation", "attention_probs_dropout_prob": "attention_dropout",
           "hidden_dropout_prob": "mlp_dropout"}
SAME = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "max_position_embeddings", "initializer_range",
        "initializer_cutoff_factor", "norm_eps", "norm_bias", "pad_token_id", "eos_token_id",
        "bos_token_id", "cls_token_id", "sep_token_id", "attention_bias", "local_attention",
        "mlp_bias", "decoder_bias", "classifier_pooling", "classifier_dropout",
        "classifier_bias", "classifier_activation")
# HF 5 `rope_parameters` layer type -> our theta field (also the legacy config.json key) and
# HF's default.
ROPE = {"full_attention": ("global_rope_theta", 160000.0),
        "sliding_attention": ("local_rope_theta", 10000.0)}


def _rope_thetas(hf, source) -> dict:
    """Our theta fields from `rope_parameters` (transformers 5) or the legacy
    `global_rope_theta` / `local_rope_theta` (+ `rope_scaling`), read as HF 5.24 does."""
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    out = {}
    for kind, (ours, default) in ROPE.items():
        params = {**(rope.get(kind) or {}), **scaling}
        key = "rope_scaling" if scaling else f"rope_parameters.{kind}"
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type != "default":
            raise ConfigError(f"{source}: {key}.rope_type={rope_type!r} is not supported "
                              "(only 'default')")
        if params.get("partial_rotary_factor", 1.0) != 1.0:
            raise ConfigError(f"{source}: {key}.partial_rotary_factor="
                              f"{params['partial_rotary_factor']} is not supported")
        out[ours] = float(params.get("rope_theta", hf.get(ours, default)))
    return out


def _layer_types(hf, source) -> tuple[str, ...]:
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types")
    if types is None:
        return default_layer_types(n, hf.get("global_attn_every_n_layers") or 3)
    if len(types) != n or set(types) - set(LAYER_TYPES):
        raise ConfigError(f"{source}: layer_types={types} must give one of {LAYER_TYPES} for "
                          f"each of the num_hidden_layers={n} layers")
    return tuple(types)


def refuse_unsupported(hf: dict, source: str) -> None:
    for key in ("hidden_activation", "classifier_activation"):
        act = hf.get(key, "gelu")
        if act not in layers.ACTIVATIONS:
            raise ConfigError(f"{source}: {key}={act!r} is not supported; lmtransfer has "
                              f"{sorted(layers.ACTIVATIONS)}")
    pooling = hf.get("classifier_pooling", "cls")
    if pooling not in POOLING:
        raise ConfigError(f"{source}: classifier_pooling={pooling!r} is not supported; use one "
                          f"of {POOLING}")
    if hf.get("tie_word_embeddings", True) is False:
        raise ConfigError(f"{source}: tie_word_embeddings=false is not supported (the MLM "
                          "decoder is the token embedding table)")
    head_dim = hf.get("head_dim")
    if head_dim and head_dim != hf["hidden_size"] // hf["num_attention_heads"]:
        raise ConfigError(f"{source}: head_dim={head_dim} is not supported (ModernBERT's heads "
                          "are hidden_size / num_attention_heads wide)")


def config_from_hf(hf, source="config.json", **overrides) -> ModernBertConfig:
    if hf.get("model_type") != "modernbert":
        raise ConfigError(f"{source}: model_type is {hf.get('model_type')!r}, not 'modernbert'")
    require(hf, ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size"), source)
    refuse_unsupported(hf, source)
    kw = {f: hf[f] for f in SAME if f in hf}
    kw.update({ours: hf[theirs] for ours, theirs in RENAMED.items() if theirs in hf})
    if "embedding_dropout" in hf and hf["embedding_dropout"] != kw.get("hidden_dropout_prob"):
        kw["embedding_dropout"] = hf["embedding_dropout"]
    kw.update(_rope_thetas(hf, source), layer_types=_layer_types(hf, source))
    return ModernBertConfig(**{**kw, **overrides})


def _every_n(types: tuple[str, ...]) -> int | None:
    """The legacy global_attn_every_n_layers that gives `types`, if one does."""
    return next((n for n in range(1, len(types) + 1)
                 if default_layer_types(len(types), n) == types), None)


def config_to_hf(model) -> dict:
    c = model.config
    out = {f: getattr(c, f) for f in SAME}
    out.update({theirs: getattr(c, ours) for ours, theirs in RENAMED.items()})
    embedding_dropout = c.hidden_dropout_prob if c.embedding_dropout is None else \
        c.embedding_dropout
    out.update(model_type="modernbert", embedding_dropout=embedding_dropout,
               layer_types=list(c.layer_types), tie_word_embeddings=True,
               rope_parameters={kind: {"rope_type": "default", "rope_theta": getattr(c, ours)}
                                for kind, (ours, _) in ROPE.items()},
               # Legacy keys, for transformers 4 (5 reads the two above).
               global_rope_theta=c.global_rope_theta, local_rope_theta=c.local_rope_theta)
    if _every_n(c.layer_types):
        out["global_attn_every_n_layers"] = _every_n(c.layer_types)
    return out


_FUSED = re.compile(r"(?P<pre>.*\.)(?P<mod>attn\.Wqkv|mlp\.Wi)\.(?P<leaf>weight|bias)")
PARTS = {"attn.Wqkv": ("q", "k", "v"), "mlp.Wi": ("input", "gate")}


def _split(tensors, config):
    """Cuts each fused Wqkv / Wi into its parts; a fused tensor of the wrong shape (which
    would otherwise cut into wrong-shaped parts under names not in the checkpoint) is refused
    here, by its own name."""
    out, bad = {}, []
    for key, x in tensors.items():
        m = _FUSED.fullmatch(key)
        if not m:
            out[key] = x
            continue
        parts = PARTS[m["mod"]]
        width = config.hidden_size if m["mod"] == "attn.Wqkv" else config.intermediate_size
        want = (len(parts) * width,) + ((config.hidden_size,) if m["leaf"] == "weight" else ())
        if tuple(x.shape) != want:
            bad.append(f"{key}: checkpoint {tuple(x.shape)}, model expects {want} "
                       f"({' + '.join(parts)} fused)")
            continue
        for part, piece in zip(parts, np.split(np.asarray(x), len(parts)), strict=True):
            out[f"{m['pre']}{m['mod']}.{part}.{m['leaf']}"] = piece
    if bad:
        raise ValueError(f"checkpoint does not match ModernBERT (layers="
                         f"{config.num_hidden_layers}, hidden={config.hidden_size}):\n- wrong "
                         f"shapes ({len(bad)}):\n  " + "\n  ".join(bad))
    return out


def _merge(tensors, config):
    out = {}
    for key, x in tensors.items():
        m = re.fullmatch(r"(?P<pre>.*\.)(?P<mod>attn\.Wqkv|mlp\.Wi)\.(?P<part>\w+)\.(?P<leaf>"
                         r"weight|bias)", key)
        if not m:
            out[key] = x
        elif m["part"] == PARTS[m["mod"]][0]:  # the first part gathers all of them
            name = f"{m['pre']}{m['mod']}"
            out[f"{name}.{m['leaf']}"] = np.concatenate(
                [tensors[f"{name}.{p}.{m['leaf']}"] for p in PARTS[m["mod"]]])
    return out


FAMILY = Family(
    name="ModernBERT", model_types=("modernbert",), modules=MODULES, head_modules=HEAD_MODULES,
    fresh_ok=HEAD_MODULES, prefixes=("model.",), architectures=ARCHITECTURES,
    config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    make_model=lambda config, head, num_labels: ModernBert(config, head=head,
                                                           num_labels=num_labels),
    ignored=r"decoder\.weight",  # the tied copy of the token table
    split=_split, merge=_merge, arch="modernbert")
