"""lmtransfer checkpoints: an Orbax CheckpointManager under `<workdir>/checkpoints`.

Each step directory holds `params` (sharded array checkpoint) and `model` (JSON: the BERT
architecture, head, label count and label names), so a checkpoint alone rebuilds its model.
Orbax writes each step to a temporary directory and renames it on completion, so a crash never
leaves a half-written checkpoint that looks finished.
"""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from lmtransfer import sharding as sharding_lib
from lmtransfer.models.bert import Bert, BertConfig

CHECKPOINT_DIR = "checkpoints"


def manager(workdir: str, max_to_keep: int | None = 3, **options) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, **options))


def model_meta(model: Bert, id2label=None) -> dict:
    return {"config": dataclasses.asdict(model.config), "head": model.head,
            "num_labels": model.num_labels,
            "id2label": {str(k): v for k, v in (id2label or {}).items()}}


def model_from_meta(meta: dict, **config_overrides) -> Bert:
    config = BertConfig(**{**meta["config"], **config_overrides})
    return Bert(config, head=meta["head"], num_labels=meta["num_labels"])


def save_model(workdir: str, step: int, model: Bert, params, id2label=None) -> None:
    """Saves params and model metadata as checkpoint `step` (blocking until written)."""
    mngr = manager(workdir)
    mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                            model=ocp.args.JsonSave(model_meta(model, id2label))))
    mngr.wait_until_finished()
    mngr.close()


def resolve(path: str) -> tuple[str, int]:
    """A workdir, its checkpoints dir or one step dir -> (checkpoints dir, step)."""
    path = os.path.abspath(path)
    for root, step in ((os.path.join(path, CHECKPOINT_DIR), None), (path, None),
                       (os.path.dirname(path), os.path.basename(path))):
        if not os.path.isdir(root):
            continue
        mngr = ocp.CheckpointManager(root)
        steps = mngr.all_steps()
        mngr.close()
        if step is not None and step.isdigit() and int(step) in steps:
            return root, int(step)
        if step is None and steps:
            return root, max(steps)
    raise FileNotFoundError(f"{path}: no lmtransfer checkpoint found (expected a workdir with "
                            f"{CHECKPOINT_DIR}/<step>/, a checkpoints dir or a step dir)")


def is_checkpoint(path: str) -> bool:
    try:
        resolve(path)
        return True
    except FileNotFoundError:
        return False


def load_model(path: str, mesh=None, rules=sharding_lib.DEFAULT_RULES, **config_overrides):
    """Restores `(model, params, meta)` from a workdir / checkpoint; sharded when `mesh` is set."""
    root, step = resolve(path)
    mngr = ocp.CheckpointManager(root)
    meta = mngr.restore(step, args=ocp.args.Composite(model=ocp.args.JsonRestore())).model
    model = model_from_meta(meta, **config_overrides)
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
    if mesh is None:
        mesh = sharding_lib.make_mesh({"data": 1}, devices=jax.devices()[:1])
    shardings = sharding_lib.param_shardings(abstract, mesh, rules)["params"]
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.unbox(abstract)["params"], shardings)
    params = mngr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target))).params
    mngr.close()
    return model, params, meta
