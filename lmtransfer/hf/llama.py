"""The Llama family <-> HF `Llama*`, `Mistral*`, `Qwen2*` (Model, ForCausalLM, sequence and
token classification, question answering). One table: the three differ in config only
(Qwen2's q/k/v biases, Mistral's sliding window, rope settings)."""

from __future__ import annotations

from lmtransfer.errors import ConfigError
from lmtransfer.hf.convert import Family, require
from lmtransfer.models import layers
from lmtransfer.models.gpt import Gpt, GptConfig
from lmtransfer.models.llama import LLAMA

MODULES = (
    ("token_embeddings", "embed_tokens", "embed"),
    ("layer_{i}/attention_layer_norm", "layers.{i}.input_layernorm", "norm"),
    ("layer_{i}/attention/query", "layers.{i}.self_attn.q_proj", "split_heads"),
    ("layer_{i}/attention/key", "layers.{i}.self_attn.k_proj", "split_kv"),
    ("layer_{i}/attention/value", "layers.{i}.self_attn.v_proj", "split_kv"),
    ("layer_{i}/attention/out", "layers.{i}.self_attn.o_proj", "merge_heads"),
    ("layer_{i}/mlp_layer_norm", "layers.{i}.post_attention_layernorm", "norm"),
    ("layer_{i}/mlp/gate", "layers.{i}.mlp.gate_proj", "dense"),
    ("layer_{i}/mlp/up", "layers.{i}.mlp.up_proj", "dense"),
    ("layer_{i}/mlp/down", "layers.{i}.mlp.down_proj", "dense"),
    ("final_layer_norm", "norm", "norm"),
    ("lm_head", "lm_head", "dense"),
    ("score", "score", "dense"),
    ("classifier", "score", "dense", ("token_classification",)),  # HF names both `score`
    ("qa_outputs", "qa_outputs", "dense"),
)
HEAD_MODULES = ("lm_head", "score", "classifier", "qa_outputs")
CLASSES = {None: "Model", "lm": "ForCausalLM", "classification": "ForSequenceClassification",
           "token_classification": "ForTokenClassification", "qa": "ForQuestionAnswering"}
NAMES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}
ROPE_FIELDS = {"default": (), "linear": ("factor",),
               "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                          "original_max_position_embeddings")}


def _rope(hf, source):
    """(theta, scaling pairs) from `rope_parameters` (transformers 5) or the older
    `rope_theta` + `rope_scaling`."""
    rope = dict(hf.get("rope_parameters") or {})
    if not rope:
        rope = {"rope_theta": hf.get("rope_theta", 10000.0), **(hf.get("rope_scaling") or {})}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in ROPE_FIELDS:
        raise ConfigError(f"{source}: rope_type={kind!r} is not supported; lmtransfer reads "
                          f"{sorted(ROPE_FIELDS)}")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError(f"{source}: partial_rotary_factor={rope['partial_rotary_factor']} is "
                          "not supported (rotary on the whole head only)")
    scaling = () if kind == "default" else tuple(sorted(
        [(k, rope[k]) for k in ROPE_FIELDS[kind]] + [("rope_type", kind)]))
    return float(rope.get("rope_theta", 10000.0)), scaling


def _sliding(hf, layers_n):
    model_type = hf["model_type"]
    if model_type == "mistral":
        return hf.get("sliding_window") or 0, ()
    if model_type == "qwen2" and hf.get("use_sliding_window"):
        types = hf.get("layer_types") or [
            "sliding_attention" if i >= hf.get("max_window_layers", layers_n) else
            "full_attention" for i in range(layers_n)]
        return hf["sliding_window"], tuple(i for i, t in enumerate(types)
                                           if t == "sliding_attention")
    return 0, ()


def config_from_hf(hf, source="config.json", **overrides) -> GptConfig:
    require(hf, ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size"), source)
    model_type = hf["model_type"]
    theta, scaling = _rope(hf, source)
    if hf.get("hidden_act", "silu") not in layers.ACTIVATIONS:
        raise ConfigError(f"{source}: hidden_act={hf['hidden_act']!r} is not supported")
    bias = hf.get("attention_bias", False)
    window, sliding_layers = _sliding(hf, hf["num_hidden_layers"])
    eos = hf.get("eos_token_id")
    default_dim = hf["hidden_size"] // hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or default_dim
    kw = dict(LLAMA, family=model_type, vocab_size=hf["vocab_size"],
              hidden_size=hf["hidden_size"], num_hidden_layers=hf["num_hidden_layers"],
              num_attention_heads=hf["num_attention_heads"],
              num_key_value_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
              attention_head_dim=0 if head_dim == default_dim else head_dim,
              intermediate_size=hf["intermediate_size"], hidden_act=hf.get("hidden_act", "silu"),
              max_position_embeddings=hf.get("max_position_embeddings", 2048),
              layer_norm_eps=hf.get("rms_norm_eps", 1e-6),
              initializer_range=hf.get("initializer_range", 0.02),
              attention_probs_dropout_prob=hf.get("attention_dropout", 0.0),
              rotary_base=theta, rope_scaling=scaling,
              qkv_bias=True if model_type == "qwen2" else bias,
              out_bias=False if model_type == "qwen2" else bias,
              mlp_bias=hf.get("mlp_bias", False),
              tie_word_embeddings=hf.get("tie_word_embeddings", False),
              sliding_window=window, sliding_layers=sliding_layers,
              classifier_dropout=hf.get("classifier_dropout"),
              bos_token_id=hf.get("bos_token_id"),
              eos_token_id=eos[0] if isinstance(eos, list) else eos,
              pad_token_id=hf.get("pad_token_id"))
    return GptConfig(**{**kw, **overrides})


def config_to_hf(model) -> dict:
    c = model.config
    if c.family not in NAMES or c.norm != "rmsnorm" or c.mlp != "gated" or \
            c.positions != "rotary":
        raise ValueError(f"family={c.family!r} with norm={c.norm!r}, mlp={c.mlp!r}, "
                         f"positions={c.positions!r} has no Llama-family layout")
    ok = {"qwen2": (c.qkv_bias, c.out_bias) == (True, False), "llama": c.qkv_bias == c.out_bias,
          "mistral": not (c.qkv_bias or c.out_bias)}[c.family]
    if not ok:
        raise ValueError(f"{c.family}: qkv_bias={c.qkv_bias}, out_bias={c.out_bias} has no HF "
                         "layout")
    rope = {"rope_theta": c.rotary_base, "rope_type": "default", **dict(c.rope_scaling)}
    out = dict(model_type=c.family, vocab_size=c.vocab_size, hidden_size=c.hidden_size,
               num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
               num_key_value_heads=c.kv_heads, head_dim=c.head_dim,
               intermediate_size=c.intermediate_size, hidden_act=c.hidden_act,
               max_position_embeddings=c.max_position_embeddings, rms_norm_eps=c.layer_norm_eps,
               initializer_range=c.initializer_range,
               attention_dropout=c.attention_probs_dropout_prob, rope_parameters=rope,
               tie_word_embeddings=c.tie_word_embeddings, bos_token_id=c.bos_token_id,
               eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id)
    if c.family == "llama":
        out.update(attention_bias=c.qkv_bias, mlp_bias=c.mlp_bias)
    elif c.mlp_bias:
        raise ValueError(f"{c.family} has no MLP biases (mlp_bias=True)")
    if c.family == "mistral":
        if c.sliding_layers:
            raise ValueError("mistral: a sliding window applies to every layer")
        out["sliding_window"] = c.sliding_window or None
    elif c.family == "qwen2":
        out.update(use_sliding_window=bool(c.sliding_window),
                   sliding_window=c.sliding_window or None,
                   layer_types=["sliding_attention" if c.window(i) else "full_attention"
                                for i in range(c.num_hidden_layers)])
    elif c.sliding_window:
        raise ValueError("llama has no sliding window; use family='mistral'")
    return out


FAMILY = Family(
    name="Llama", model_types=tuple(NAMES), modules=MODULES, head_modules=HEAD_MODULES,
    fresh_ok=HEAD_MODULES, prefixes=("model.", "transformer."),
    architectures=lambda model: NAMES[model.config.family] + CLASSES[model.head],
    config_from_hf=config_from_hf, config_to_hf=config_to_hf,
    make_model=lambda config, head, num_labels: Gpt(config, head=head, num_labels=num_labels),
    ignored=r"(model\.)?layers\.\d+\.self_attn\.rotary_emb\.inv_freq",
    # HF's *ForQuestionAnswering keep the base model as `transformer` (for BC).
    prefix_for=lambda head: "transformer." if head == "qa" else "model.",
    arch="gpt", accepts=lambda model: model.config.family in NAMES)
