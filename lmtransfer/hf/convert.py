"""The strict, table-driven converter every model family shares.

A `Family` is data: its table of (lmtransfer module, HF module, layout[, heads]) rows, the
prefix HF puts before the base model in its head classes, which of our modules are heads,
and how its config maps. `from_hf` and `to_hf` here do the reading, writing and strictness
for all of them: missing, unexpected and mis-shaped tensors are listed in one error.

Layouts (HF tensors in torch `Linear` layout; a family's `split`/`merge` bring other layouts,
e.g. GPT-2's fused Conv1D, to and from it):
  embed: embedding <-> weight            norm: scale <-> weight, bias <-> bias
  dense: kernel [in, out] <-> weight [out, in]
  split_heads / split_kv: kernel [embed, heads|kv_heads, head_dim] <-> weight [h*hd, embed]
  merge_heads: kernel [heads, head_dim, embed] <-> weight [embed, heads*head_dim]
  bias: a bare bias vector
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from typing import Any

import numpy as np
from flax import traverse_util

from lmtransfer.errors import ConfigError
from lmtransfer.hf.files import LEAF_TO_HF

log = logging.getLogger(__name__)


def _same(tensors, config):
    return tensors


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # HF config.json model_type values this family reads
    modules: tuple[tuple, ...]  # (ours, hf, layout) or (ours, hf, layout, heads)
    head_modules: tuple[str, ...]  # our top-level modules that are heads (no HF prefix)
    fresh_ok: tuple[str, ...]  # modules a checkpoint may lack: created fresh
    prefixes: tuple[str, ...]  # HF base-model prefixes, the first is the one written
    architectures: dict  # head -> HF class name; may be a callable(model) -> name
    config_from_hf: Callable  # (hf dict, source, **overrides) -> model config
    config_to_hf: Callable  # model -> hf dict (without architectures/labels)
    make_model: Callable  # (config, head, num_labels) -> flax module
    ignored: str = r"$^"  # HF tensors that carry no parameters (buffers, tied copies)
    split: Callable = _same  # HF state dict -> Linear-layout names the table uses
    merge: Callable = _same  # the reverse, for writing
    prefix_for: Callable | None = None  # head -> prefix written (default: prefixes[0])
    arch: str = "bert"  # the lmtransfer model (`model.arch`) this family builds
    accepts: Callable | None = None  # model -> bool, when several families share one arch

    def architecture(self, model) -> str:
        arch = self.architectures
        return arch(model) if callable(arch) else arch[model.head]

    def prefix(self, head) -> str:
        if head is None:
            return ""
        return self.prefix_for(head) if self.prefix_for else self.prefixes[0]


def require(hf: dict, keys, source: str) -> None:
    """A config.json must name what the architecture is built from."""
    missing = [k for k in keys if hf.get(k) is None]
    if missing:
        raise ConfigError(f"{source}: a {hf.get('model_type')!r} config needs "
                          f"{', '.join(missing)}; is this file from another model?")


def _module_regex(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)") + "$")


def hf_name(family: Family, path: str, head, prefixed: bool = True) -> tuple[str, str]:
    """lmtransfer param path ('layer_0/mlp/wi/kernel') -> (HF tensor name in `head`'s HF
    class, with its base-model prefix when `prefixed`; layout)."""
    module, leaf = path.rsplit("/", 1)
    for row in family.modules:
        ours, theirs, layout = row[:3]
        if len(row) > 3 and head not in row[3]:
            continue
        m = _module_regex(ours).match(module)
        if m:
            name = theirs.format(**m.groupdict()) + "." + LEAF_TO_HF[leaf]
            top_level = module.split("/")[0] in family.head_modules or not prefixed
            return ("" if top_level else family.prefix(head)) + name, layout
    raise KeyError(f"no HF name for lmtransfer parameter {path!r} (extend the {family.name} "
                   "table in lmtransfer.hf)")


def _heads(c) -> tuple[int, int, int]:
    n = c.num_attention_heads
    return n, getattr(c, "kv_heads", n), c.head_dim


def to_ours(x: np.ndarray, layout: str, leaf: str, c) -> np.ndarray:
    n, k, d = _heads(c)
    heads = k if layout == "split_kv" else n
    if leaf == "kernel":
        if layout in ("split_heads", "split_kv"):
            return x.T.reshape(x.shape[1], heads, d)
        if layout == "merge_heads":
            return x.T.reshape(n, d, x.shape[0])
        return x.T
    if leaf == "bias" and layout in ("split_heads", "split_kv"):
        return x.reshape(heads, d)
    return x


def to_theirs(x: np.ndarray, layout: str, leaf: str) -> np.ndarray:
    if leaf == "kernel":
        if layout in ("split_heads", "split_kv"):
            return x.reshape(x.shape[0], -1).T
        if layout == "merge_heads":
            return x.reshape(-1, x.shape[-1]).T
        return x.T
    if leaf == "bias" and layout in ("split_heads", "split_kv"):
        return x.reshape(-1)
    return x


def _is_head(family: Family, key: str) -> bool:
    """Is this HF tensor part of a head (or other fresh-ok module) of any head class?"""
    for p in family.prefixes:
        key = key.removeprefix(p)
    module = key.rsplit(".", 1)[0]
    return any(_module_regex(row[1]).match(module) and row[0].split("/")[0] in family.fresh_ok
               for row in family.modules)


def from_hf(family: Family, tensors: dict[str, np.ndarray], model, abstract_params,
            source: str = "checkpoint") -> tuple[dict[str, Any], list[str]]:
    """HF tensors -> flat lmtransfer params (numpy, by 'a/b/kernel' path) for `model`;
    returns (params, paths to initialise fresh). `abstract_params` (from `jax.eval_shape`)
    gives every expected path and shape."""
    tensors = family.split(dict(tensors), model.config)
    has_prefix = any(k.startswith(family.prefixes) for k in tensors)
    flat = traverse_util.flatten_dict(abstract_params, sep="/")
    params, fresh, missing, bad_shape, used = {}, [], [], [], set()
    for path, spec in flat.items():
        name, layout = hf_name(family, path, model.head, prefixed=False)
        top = path.split("/")[0]
        candidates = ([name] if top in family.head_modules or not has_prefix
                      else [p + name for p in family.prefixes] + [name])
        key = next((k for k in candidates if k in tensors), None)
        if key is None and top in family.fresh_ok:
            fresh.append(path)
        elif key is None:
            missing.append(candidates[0])
        if key is None:
            continue
        used.add(key)
        try:
            x = to_ours(tensors[key], layout, path.rsplit("/", 1)[1], model.config)
        except ValueError:  # cannot even be reshaped into the model's heads
            x = None
        if x is None or x.shape != tuple(spec.shape):
            got = "does not fit" if x is None else f"gives {x.shape}"
            bad_shape.append(f"{key}: checkpoint {tuple(tensors[key].shape)} {got}, "
                             f"model expects {tuple(spec.shape)} (lmtransfer {path})")
            continue
        params[path] = x.astype(spec.dtype)
    ignored = re.compile(family.ignored)
    leftover = [k for k in tensors if k not in used and not ignored.fullmatch(k)]
    unused = [k for k in leftover if _is_head(family, k)]
    unexpected = [k for k in leftover if not _is_head(family, k)]
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors ({len(unexpected)}): {', '.join(unexpected)}")
    if bad_shape:
        problems.append(f"wrong shapes ({len(bad_shape)}):\n  " + "\n  ".join(bad_shape))
    if problems:
        c = model.config
        raise ConfigError(f"{source} does not match {family.name} (layers="
                          f"{c.num_hidden_layers}, hidden={c.hidden_size}, head={model.head!r}):"
                          "\n- " + "\n- ".join(problems))
    if unused:
        log.info("%s: not used by head=%r (dropped): %s", source, model.head, ", ".join(unused))
    if fresh:
        log.info("%s: initialised fresh (not in checkpoint): %s", source, ", ".join(fresh))
    return params, fresh


def to_hf(family: Family, model, flat_params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Flat lmtransfer params (numpy) -> HF state dict named as HF's class for `model.head`."""
    out = {}
    for path, x in flat_params.items():
        name, layout = hf_name(family, path, model.head)
        out[name] = np.ascontiguousarray(to_theirs(np.asarray(x), layout, path.rsplit("/", 1)[1]))
    return family.merge(out, model.config)
