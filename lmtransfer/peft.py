"""Parameter-efficient transfer (`config.peft`): LoRA runs from a frozen base.

A LoRA run trains the adapters (`lmtransfer.models.lora`), the task's head (the modules its
head adds to the bare model; an MLM / LM head is pretrained, so it stays frozen) and what
`peft.train` names; everything else is the frozen base. The train step differentiates and
the optimizer holds only the trained part (`split` / `combine`), and checkpoints store only
it plus a reference to the base (its path, sha256 and the seed of any fresh head), which
`load_frozen` reloads and checks. Exports: `merged` folds the adapters into the kernels (a
plain model, so `hf.save_pretrained` writes ordinary HF weights); `save_adapter` writes a
PEFT adapter directory that `peft.PeftModel.from_pretrained` loads onto the transformers
model of the same base.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from lmtransfer import paths, sharding
from lmtransfer.errors import ConfigError
from lmtransfer.models import lora

log = logging.getLogger(__name__)

METHODS = ("", "lora")
LM_HEADS = (None, "mlm", "lm", "pretraining")  # pretrained with the base: not trained
ADAPTERS = ("lora_a", "lora_b")


def spec_from_config(c) -> lora.LoraSpec | None:
    """`c` = config.peft -> a LoraSpec (None for full fine-tuning); bad values name the key."""
    if c.method not in METHODS:
        raise ConfigError(f"config.peft.method={c.method!r}; use one of {METHODS}")
    if not c.method:
        return None
    if c.rank < 1:
        raise ConfigError(f"config.peft.rank={c.rank} must be >= 1")
    if c.alpha <= 0:
        raise ConfigError(f"config.peft.alpha={c.alpha} must be > 0")
    if not 0 <= c.dropout < 1:
        raise ConfigError(f"config.peft.dropout={c.dropout} must be in [0, 1)")
    for key in ("targets", "train"):
        try:
            re.compile(c[key])
        except re.error as e:
            raise ConfigError(f"config.peft.{key}={c[key]!r} is not a regex: {e}") from None
    return lora.LoraSpec(rank=int(c.rank), alpha=float(c.alpha), dropout=float(c.dropout),
                         targets=c.targets or lora.DEFAULT_TARGETS, train=c.train)


def _abstract(model):
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32))


def attach(model, spec: lora.LoraSpec):
    """`model` with adapters on the dense layers `spec.targets` matches (checked)."""
    paths = lora.dense_paths(model)
    if not any(re.search(spec.targets, p) for p in paths):
        raise ConfigError(f"config.peft.targets={spec.targets!r} matches none of the model's "
                          f"dense layers; they are {', '.join(paths[:8])}, ...")
    model = model.clone(lora=spec)
    _abstract(model)  # a rank larger than a matrix fails here, naming config.peft.rank
    if spec.train:
        flat = traverse_util.flatten_dict(sharding.unbox(_abstract(model))["params"], sep="/")
        if not any(re.search(spec.train, p) for p in flat):
            raise ConfigError(f"config.peft.train={spec.train!r} matches no parameter; paths "
                              f"look like {', '.join(list(flat)[:4])}")
    return model


def add_adapters(model, params, spec: lora.LoraSpec, seed: int, mesh, rules):
    """(model with adapters, params with the adapters added): A drawn like PEFT's, B = 0."""
    model = attach(model, spec)
    abstract = _abstract(model)
    shardings = traverse_util.flatten_dict(
        sharding.param_shardings(abstract, mesh, rules)["params"], sep="/")
    shapes = traverse_util.flatten_dict(sharding.unbox(abstract)["params"], sep="/")
    paths = [p for p in sorted(shapes) if p.endswith(ADAPTERS)]

    def make(key):
        out = {}
        for i, path in enumerate(paths):
            shape = shapes[path].shape
            bound = 1.0 / np.sqrt(np.prod(shape[:-1]))
            out[path] = (jnp.zeros(shape, jnp.float32) if path.endswith("lora_b") else
                         jax.random.uniform(jax.random.fold_in(key, i), shape, jnp.float32,
                                            -bound, bound))
        return out

    flat = traverse_util.flatten_dict(params, sep="/")
    flat.update(jax.jit(make, out_shardings={p: shardings[p] for p in paths})(
        jax.random.key(seed)))
    n = sum(int(np.prod(shapes[p].shape)) for p in shapes if p.endswith(ADAPTERS))
    log.info("LoRA: rank %d, alpha %g on %d layers (%s): %d adapter parameters", spec.rank,
             spec.alpha, sum(p.endswith("lora_a") for p in shapes), spec.targets, n)
    return model, traverse_util.unflatten_dict(flat, sep="/")


@functools.lru_cache(maxsize=32)
def head_modules(model) -> frozenset:
    """Top-level modules the task head adds to the bare model (trained in full)."""
    if model.head in LM_HEADS:
        return frozenset()
    bare = type(model)(model.config, head=None, num_labels=model.num_labels)
    return frozenset(_abstract(model)["params"]) - frozenset(_abstract(bare)["params"])


def trainable(model, path: str) -> bool:
    """Does a LoRA run of `model` train parameter `path` ('layer_0/attention/query/lora_a')?"""
    if model.lora is None:
        return True
    return (path.endswith(ADAPTERS) or path.split("/")[0] in head_modules(model)
            or bool(model.lora.train and re.search(model.lora.train, path)))


def split(model, tree) -> tuple[dict, dict]:
    """A params-shaped tree -> (trained part, frozen part); full fine-tuning freezes none."""
    if model.lora is None:
        return tree, {}
    flat = traverse_util.flatten_dict(tree, sep="/")
    parts = ({}, {})
    for path, x in flat.items():
        parts[not trainable(model, path)][path] = x
    return tuple(traverse_util.unflatten_dict(p, sep="/") for p in parts)


def combine(trained, frozen):
    """The inverse of `split`."""
    if not frozen:
        return trained
    flat = traverse_util.flatten_dict(frozen, sep="/")
    flat.update(traverse_util.flatten_dict(trained, sep="/"))
    return traverse_util.unflatten_dict(flat, sep="/")


def cast(frozen, dtype: str):
    """The frozen base in `dtype` ('' keeps it): a bf16 base halves its memory."""
    if not dtype:
        return frozen
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                        else x, frozen)


def _deltas(model, params):
    """{kernel path: (alpha / r) * A . B} shaped like the kernel, for every adapted layer."""
    flat = traverse_util.flatten_dict(params, sep="/")
    out = {}
    for path in flat:
        if path.endswith("/lora_a"):
            module = path[: -len("/lora_a")]
            a, b = flat[path], flat[module + "/lora_b"]
            out[module + "/kernel"] = jnp.tensordot(a, b, 1) * model.lora.scale
    return out


def merged(model, params):
    """(plain model, params with the adapters folded into their kernels): the same function
    (up to float rounding) with no adapters; kernels come out in float32 (or the kernel's
    wider dtype)."""
    if model.lora is None:
        return model, params
    deltas = _deltas(model, params)
    flat = {}
    for path, x in traverse_util.flatten_dict(params, sep="/").items():
        if path.endswith(ADAPTERS):
            continue
        if path in deltas:
            x = x.astype(jnp.promote_types(x.dtype, jnp.float32)) + deltas[path]
        flat[path] = x
    return model.clone(lora=None), traverse_util.unflatten_dict(flat, sep="/")


# --------------------------------------------------------------------------- the base


def files_sha256(src: str) -> str:
    """sha256 over a base's weight files: an HF dir's weights, or the params of the
    lmtransfer checkpoint a workdir resolves to (file names and contents, sorted)."""
    from lmtransfer import checkpoints
    from lmtransfer.hf.files import WEIGHT_FILES

    if paths.exists(os.path.join(src, "config.json")) and not checkpoints.is_checkpoint(src):
        index = [f for f in WEIGHT_FILES if f.endswith(".index.json")
                 and paths.exists(os.path.join(src, f))]
        files = [f for f in WEIGHT_FILES if paths.exists(os.path.join(src, f))]
        for f in index:  # sharded weights: the shards the index names
            files += sorted(set(paths.read_json(os.path.join(src, f))["weight_map"].values()))
        root = src
    else:
        mngr_dir, step = checkpoints.resolve(src)
        root = os.path.join(mngr_dir, str(step), "params")
        files = paths.files(root)
    h = hashlib.sha256()
    for f in files:
        h.update(f.encode() + b"\0")
        with paths.open(os.path.join(root, f), "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()


def base_reference(init_from: str, src: str, seed: int, dtype: str) -> dict:
    """What a LoRA checkpoint records about its base (instead of storing it)."""
    return {"init_from": init_from, "path": paths.resolve(src), "sha256": files_sha256(src),
            "seed": seed, "dtype": dtype}


def load_frozen(model, ref: dict, mesh, rules, **config_overrides):
    """The frozen part of a LoRA model from its base reference, checked against its hash."""
    from lmtransfer.hf import hub
    from lmtransfer.train import init

    src = ref["path"]
    if not paths.exists(src):  # e.g. a hub id's cache on another machine
        src = hub.resolve(ref["init_from"], "the LoRA checkpoint's base (init_from)")
    digest = files_sha256(src)
    if digest != ref["sha256"]:
        raise ConfigError(f"the base of this LoRA checkpoint, {src}, changed since it was "
                          f"trained (sha256 {digest[:12]}... != recorded {ref['sha256'][:12]}"
                          "...): the adapters belong to the old weights. Restore that base or "
                          "retrain")
    _, params = init.load_source(src, model.head, model.num_labels, ref["seed"], mesh, rules,
                                 config_overrides)
    frozen = split(model, params)[1]
    return cast(frozen, ref.get("dtype", ""))


# --------------------------------------------------------------------------- PEFT export

TASK_TYPES = {"classification": "SEQ_CLS", "token_classification": "TOKEN_CLS",
              "qa": "QUESTION_ANS", "lm": "CAUSAL_LM", None: "FEATURE_EXTRACTION"}


def save_adapter(model, params, out_dir: str, base: str = "") -> str:
    """Writes a PEFT LoRA adapter dir (`adapter_config.json`, `adapter_model.safetensors`):
    `PeftModel.from_pretrained(<transformers model of the base>, out_dir)` then computes what
    this model does. Trained non-adapter modules (the head, `peft.train`) go in
    `modules_to_save`."""
    from safetensors.numpy import save_file

    from lmtransfer import hf
    from lmtransfer.hf import convert

    if model.lora is None:
        raise ConfigError("config.train.export_peft: the model has no adapters (set "
                          "config.peft.method=lora, or export merged weights with "
                          "config.train.export_hf)")
    family = hf.family_of(model)
    flat = traverse_util.flatten_dict(hf._host(params), sep="/")
    tensors, targets, saved = {}, set(), set()
    for path, x in flat.items():
        if not trainable(model, path):
            continue
        module, leaf = path.rsplit("/", 1)
        if leaf in ADAPTERS:
            name, _ = convert.hf_name(family, module + "/kernel", model.head)
            hf_module = name.rsplit(".", 1)[0]
            _refuse_fused(family, model, name)
            r = model.lora.rank
            w = (np.asarray(x).reshape(-1, r).T if leaf == "lora_a"
                 else np.asarray(x).reshape(r, -1).T)
            tensors[f"base_model.model.{hf_module}.{'lora_A' if leaf == 'lora_a' else 'lora_B'}"
                    ".weight"] = w
            targets.add(hf_module)
        else:
            saved.add(module)
    modules_to_save = set()
    for module in saved:  # whole modules, as PEFT's ModulesToSaveWrapper holds them
        part = {p: x for p, x in flat.items() if p.startswith(module + "/")
                and not p.endswith(ADAPTERS)}
        for name, x in convert.to_hf(family, model.clone(lora=None), part).items():
            hf_module = name.rsplit(".", 1)[0]
            if hf_module in targets:
                raise ConfigError(f"PEFT export: {module} is both adapted and trained in full "
                                  "(config.peft.train); PEFT can't hold both. Export merged "
                                  "weights (config.train.export_hf) instead")
            modules_to_save.add(hf_module)
            tensors[f"base_model.model.{name}"] = x
    cfg = {"peft_type": "LORA", "task_type": TASK_TYPES.get(model.head),
           "base_model_name_or_path": base, "r": model.lora.rank,
           "lora_alpha": model.lora.alpha, "lora_dropout": model.lora.dropout,
           "target_modules": sorted(targets), "modules_to_save": sorted(modules_to_save) or None,
           "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
           "init_lora_weights": True}
    if jax.process_index() != 0:
        return out_dir
    with hf.atomic_dir(out_dir, last=("adapter_config.json",)) as tmp:
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
                  os.path.join(tmp, "adapter_model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "adapter_config.json"), "w") as f:
            json.dump(cfg, f, indent=2, sort_keys=True)
    return paths.resolve(out_dir)


def _refuse_fused(family, model, name: str) -> None:
    """HF families that fuse projections into one Linear (GPT-2's c_attn, ModernBERT's
    Wqkv) have no module a per-projection adapter can sit on."""
    probe = {name: np.zeros((1, 1), np.float32)}
    try:
        ok = set(family.merge(dict(probe), model.config)) == set(probe)
    except Exception:  # noqa: BLE001 (a merge that needs its siblings: fused)
        ok = False
    if not ok:
        raise ConfigError(f"PEFT export: {family.name} fuses {name.rsplit('.', 1)[0]} with "
                          "other projections in one HF module, so a PEFT adapter can't hold "
                          "this layer's LoRA. Export merged weights (config.train.export_hf)")
