"""HF checkpoint directories on disk: config.json and weights in (safetensors, sharded
safetensors, pytorch_model.bin, flax_model.msgpack), an export directory out (atomically)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from lmtransfer.errors import ConfigError, NotFound

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "flax_model.msgpack")
LEAF_TO_HF = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}


def check_dir(path: str) -> None:
    if not os.path.isdir(path):
        raise NotFound(f"{path}: not a directory; expected an HF checkpoint directory "
                       "with config.json and model weights")
    if not os.path.exists(os.path.join(path, "config.json")):
        raise NotFound(f"{path}: no config.json; is this an HF checkpoint directory?")


def read_config(path: str) -> dict[str, Any]:
    check_dir(path)
    cfg_path = os.path.join(path, "config.json")
    try:
        with open(cfg_path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cfg_path}: not valid JSON ({e})") from e


def _flax_to_torch_names(tree: Mapping) -> dict[str, np.ndarray]:
    """HF Flax msgpack params -> HF torch-style names and layouts."""
    out = {}
    for path, x in traverse_util.flatten_dict(tree).items():
        *mod, leaf = (str(p) for p in path)
        x = np.asarray(x)
        if leaf == "kernel":
            x = x.T
        out[".".join(mod + [LEAF_TO_HF.get(leaf, leaf)])] = x
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
    check_dir(path)
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
    raise NotFound(f"{path}: no weights found; expected one of {', '.join(WEIGHT_FILES)}")


def atomic_dir(out_dir: str, last: tuple[str, ...] = ("config.json",)):
    """A temporary directory that replaces `out_dir` (local or a URL) on success, so a crash
    never leaves a half-written export (nor temp files); see lmtransfer.paths."""
    from lmtransfer import paths

    return paths.local_dir_for(out_dir, last)
