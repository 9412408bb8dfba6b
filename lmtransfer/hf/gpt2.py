"""Our GPT (learned positions) <-> HF `GPT2*` (GPT2Model, LMHead, sequence/token
classification, question answering).

GPT-2 stores its projections as Conv1D ([in, out]) and q, k, v fused in `c_attn`; `_split`
turns them into Linear-layout q_proj/k_proj/v_proj rows for the table, `_merge` back.
"""

from __future__ import annotations

import re

import numpy as np

from lmtransfer.errors import ConfigError
from lmtransfer.hf.convert import Family, require
from lmtransfer.models.gpt import Gpt, GptConfig

MODULES = (
    ("token_embeddings", "wte", "embed"),
    ("position_embeddings", "wpe", "embed"),
    ("layer_{i}/attention_layer_norm", "h.{i}.ln_1", "norm"),
    ("layer_{i}/attention/query", "h.{i}.attn.q_proj", "split_heads"),
    ("layer_{i}/attention/key", "h.{i}.attn.k_proj", "split_heads"),
    ("layer_{i}/attention/value", "h.{i}.attn.v_proj", "split_heads"),
    ("layer_{i}/attention/out", "h.{i}.attn.c_proj", "merge_heads"),
    ("layer_{i}/mlp_layer_norm", "h.{i}.ln_2", "norm"),
    ("layer_{i}/mlp/wi", "h.{i}.mlp.c_fc", "dense"),
    ("layer_{i}/mlp/wo", "h.{i}.mlp.c_proj", "dense"),
    ("final_layer_norm", "ln_f", "norm"),
    ("score", "score", "dense"),
    ("classifier", "classifier", "dense"),
    ("qa_outputs", "qa_outputs", "dense"),
)
HEAD_MODULES = ("score", "classifier", "qa_outputs")
ARCHITECTURES = {None: "GPT2Model", "lm": "GPT2LMHeadModel",
                 "classification": "GPT2ForSequenceClassification",
                 "token_classification": "GPT2ForTokenClassification",
                 "qa": "GPT2ForQuestionAnswering"}
_CONV = re.compile(r"(.*h\.\d+\.(attn\.c_proj|mlp\.c_fc|mlp\.c_proj))\.weight")
_FUSED = re.compile(r"(.*h\.\d+\.attn)\.c_attn\.(weight|bias)")


def _split(tensors, config):
    out = {}
    for k, v in tensors.items():
        fused = _FUSED.fullmatch(k)
        if fused:
            v = v.T if fused[2] == "weight" else v  # Conv1D [E, 3E] -> Linear [3E, E]
            for name, part in zip(("q_proj", "k_proj", "v_proj"), np.split(v, 3), strict=True):
                out[f"{fused[1]}.{name}.{fused[2]}"] = part
        else:
            out[k] = v.T if _CONV.fullmatch(k) else v
    return out


def _merge(tensors, config):
    out = {}
    for k, v in tensors.items():
        m = re.fullmatch(r"(.*h\.\d+\.attn)\.q_proj\.(weight|bias)", k)
        if m:
            parts = [tensors[f"{m[1]}.{n}.{m[2]}"] for n in ("q_proj", "k_proj", "v_proj")]
            fused = np.concatenate(parts)
            out[f"{m[1]}.c_attn.{m[2]}"] = fused.T if m[2] == "weight" else fused
        elif not re.fullmatch(r".*h\.\d+\.attn\.[kv]_proj\.(weight|bias)", k):
            out[k] = np.ascontiguousarray(v.T) if _CONV.fullmatch(k) else v
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def config_from_hf(hf, source="config.json", **overrides) -> GptConfig:
    require(hf, ("vocab_size", "n_embd", "n_layer", "n_head"), source)
    refused = {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
               "add_cross_attention": False}
    for key, expected in refused.items():
        if hf.get(key, expected) != expected:
            raise ConfigError(f"{source}: {key}={hf[key]!r} is not supported (GPT-2 with "
                              f"{key}={expected})")
    kw = dict(vocab_size=hf["vocab_size"], hidden_size=hf["n_embd"],
              num_hidden_layers=hf["n_layer"], num_attention_heads=hf["n_head"],
              intermediate_size=hf.get("n_inner") or 4 * hf["n_embd"],
              hidden_act=hf.get("activation_function", "gelu_new"),
              hidden_dropout_prob=hf.get("resid_pdrop", 0.1),
              attention_probs_dropout_prob=hf.get("attn_pdrop", 0.1),
              max_position_embeddings=hf.get("n_positions", 1024),
              layer_norm_eps=hf.get("layer_norm_epsilon", 1e-5),
              initializer_range=hf.get("initializer_range", 0.02),
              classifier_dropout=hf.get("classifier_dropout"),
              bos_token_id=hf.get("bos_token_id"), eos_token_id=_one(hf.get("eos_token_id")),
              pad_token_id=hf.get("pad_token_id"), family="gpt2")
    return GptConfig(**{**kw, **overrides})


def _one(x):
    return x[0] if isinstance(x, list) else x


def config_to_hf(model) -> dict:
    c = model.config
    if c.family != "gpt2" or c.positions != "learned" or c.norm != "layernorm" or \
            c.mlp != "standard" or c.kv_heads != c.num_attention_heads or \
            not (c.qkv_bias and c.out_bias and c.mlp_bias and c.tie_word_embeddings):
        raise ValueError(
            "this GPT has no GPT-2 layout (GPT-2 has learned positions, LayerNorm, a GELU MLP, "
            "biases and tied embeddings; this one has positions="
            f"{c.positions!r}, norm={c.norm!r}, mlp={c.mlp!r}). Rotary decoders export in the "
            "Llama layout: pretrain a llama preset (config.model.preset=llama-tiny, ...)")
    return dict(model_type="gpt2", vocab_size=c.vocab_size, n_embd=c.hidden_size,
                n_layer=c.num_hidden_layers, n_head=c.num_attention_heads,
                n_inner=c.intermediate_size, activation_function=c.hidden_act,
                resid_pdrop=c.hidden_dropout_prob, embd_pdrop=c.hidden_dropout_prob,
                attn_pdrop=c.attention_probs_dropout_prob, n_positions=c.max_position_embeddings,
                layer_norm_epsilon=c.layer_norm_eps, initializer_range=c.initializer_range,
                classifier_dropout=c.classifier_dropout, bos_token_id=c.bos_token_id,
                eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id,
                tie_word_embeddings=True)


FAMILY = Family(
    name="GPT-2", model_types=("gpt2",), modules=MODULES, head_modules=HEAD_MODULES,
    fresh_ok=HEAD_MODULES, prefixes=("transformer.",), architectures=ARCHITECTURES,
    config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    make_model=lambda config, head, num_labels: Gpt(config, head=head, num_labels=num_labels),
    ignored=r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias|lm_head\.weight",
    split=_split, merge=_merge, arch="gpt", accepts=lambda model: model.config.family == "gpt2")
