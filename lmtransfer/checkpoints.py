"""lmtransfer checkpoints: Orbax CheckpointManagers under `<workdir>/checkpoints` (the run's
latest N, for resuming) and `<workdir>/best` (the best by the task's main metric).

Each step directory holds `params` (sharded array checkpoint) and `model` (JSON: the
architecture, head, label count and label names), so a checkpoint alone rebuilds its model (a
LoRA checkpoint holds only what trained, and the reference of the base it reloads);
training checkpoints add `opt` (step + optimizer state) and `meta` (data position, best so
far). Orbax writes each step to a temporary directory and renames it on completion, so a crash
never leaves a half-written checkpoint that looks finished.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from lmtransfer import paths, peft
from lmtransfer import sharding as sharding_lib
from lmtransfer.errors import NotFound
from lmtransfer.models import ARCHS
from lmtransfer.models.lora import LoraSpec

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"


def manager(workdir: str, max_to_keep: int | None = 3, **options) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.join(paths.resolve(workdir), CHECKPOINT_DIR),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, **options))


def model_meta(model, id2label=None, base: dict | None = None) -> dict:
    """The `model` metadata; a LoRA model adds its adapters' spec and its base's reference
    (lmtransfer.peft.base_reference), as its checkpoints hold only what it trains."""
    meta = {"arch": model.arch, "config": dataclasses.asdict(model.config), "head": model.head,
            "num_labels": model.num_labels,
            "id2label": {str(k): v for k, v in (id2label or {}).items()}}
    if model.lora is not None:
        meta.update(lora=dataclasses.asdict(model.lora), base=base)
    return meta


def model_from_meta(meta: dict, **config_overrides):
    """The model (any family, LoRA or not) a checkpoint's `model` metadata describes."""
    cls, config_cls = ARCHS[meta.get("arch", "bert")]
    config = config_cls(**{**meta["config"], **config_overrides})
    spec = LoraSpec(**meta["lora"]) if meta.get("lora") else None
    return cls(config, head=meta["head"], num_labels=meta["num_labels"], lora=spec)


def save_model(workdir: str, step: int, model, params, id2label=None) -> None:
    """Saves params and model metadata as checkpoint `step` (blocking until written)."""
    mngr = manager(workdir)
    mngr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                            model=ocp.args.JsonSave(model_meta(model, id2label))))
    mngr.wait_until_finished()
    mngr.close()


def resolve(path: str) -> tuple[str, int]:
    """A workdir (its best, else its latest), a checkpoints dir or one step dir ->
    (checkpoint manager dir, step)."""
    path = paths.resolve(path)
    for root, step in ((os.path.join(path, BEST_DIR), None),
                       (os.path.join(path, CHECKPOINT_DIR), None), (path, None),
                       (paths.dirname(path), paths.basename(path))):
        if not paths.isdir(root):
            continue
        mngr = ocp.CheckpointManager(root)
        steps = mngr.all_steps()
        mngr.close()
        if step is not None and step.isdigit() and int(step) in steps:
            return root, int(step)
        if step is None and steps:
            return root, max(steps)
    raise NotFound(f"{path}: no lmtransfer checkpoint found (expected a workdir with "
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
                          sharding_lib.unbox(abstract)["params"], shardings)
    target = peft.split(model, target)[0]  # a LoRA checkpoint holds its trained part
    params = mngr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(target))).params
    mngr.close()
    if model.lora is not None:
        frozen = peft.load_frozen(model, meta["base"], mesh, rules, **config_overrides)
        params = peft.combine(params, frozen)
    return model, params, meta


class CheckpointError(RuntimeError):
    """Writing a checkpoint failed (e.g. a full disk); earlier checkpoints are intact."""


class TrainCheckpointer:
    """The training loop's checkpoints: async keep-N saves for resuming, plus the best.

    A save that fails (in the background for async saves; Orbax reports it at the next save or
    wait) raises CheckpointError naming the last complete checkpoint: the failed one was never
    renamed from its temporary directory, so it can't be mistaken for a finished one, and the
    keep-N clean-up only ever runs after a save completes.
    """

    def __init__(self, workdir: str, keep: int):
        workdir = paths.resolve(workdir)
        self.mngr = ocp.CheckpointManager(
            os.path.join(workdir, CHECKPOINT_DIR),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=True))
        self.best = ocp.CheckpointManager(
            os.path.join(workdir, BEST_DIR),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                                 enable_async_checkpointing=False))

    def latest_step(self) -> int | None:
        return self.mngr.latest_step()

    @contextlib.contextmanager
    def _failures(self, what: str):
        try:
            yield
        except CheckpointError:
            raise
        except Exception as e:  # Orbax re-raises the background thread's error as it was
            self.mngr.reload()
            last = self.mngr.latest_step()
            raise CheckpointError(
                f"{what} in {self.mngr.directory} failed ({type(e).__name__}: {e}). "
                + (f"The last complete checkpoint is step {last}; fix the cause (e.g. free "
                   "disk space) and rerun the same command to resume from it."
                   if last is not None else "No checkpoint is complete yet.")) from e

    def save(self, step: int, state, model_meta: dict, meta: dict) -> None:
        """Starts an async save (returns once arrays are copied off the devices)."""
        with self._failures(f"saving checkpoint {step} (or the save before it)"):
            self._save(step, state, model_meta, meta)

    def wait(self) -> None:
        with self._failures("finishing the last checkpoint save"):
            self.mngr.wait_until_finished()

    def _save(self, step: int, state, model_meta: dict, meta: dict) -> None:
        self.mngr.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            opt=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}),
            model=ocp.args.JsonSave(model_meta), meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, abstract_state):
        """(state, meta) of the latest checkpoint, placed like `abstract_state`."""
        step = self.mngr.latest_step()
        r = self.mngr.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_state.params),
            opt=ocp.args.StandardRestore({"step": abstract_state.step,
                                          "opt_state": abstract_state.opt_state}),
            meta=ocp.args.JsonRestore()))
        state = abstract_state.replace(step=r.opt["step"], params=r.params,
                                       opt_state=r.opt["opt_state"])
        return state, r.meta

    def save_best(self, step: int, params, model_meta: dict, meta: dict) -> None:
        with self._failures(f"saving the best checkpoint (step {step})"):
            self._save_best(step, params, model_meta, meta)

    def _save_best(self, step: int, params, model_meta: dict, meta: dict) -> None:
        # The old best goes only after the new one is complete: a failed save leaves it.
        if step in self.best.all_steps():  # the same step again, after a resume
            self.best.delete(step)
        self.best.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), model=ocp.args.JsonSave(model_meta),
            meta=ocp.args.JsonSave(meta)), force=True)
        self.best.wait_until_finished()
        for old in self.best.all_steps():
            if old != step:
                self.best.delete(old)

    def best_meta(self) -> dict | None:
        step = self.best.latest_step()
        if step is None:
            return None
        return self.best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def close(self) -> None:
        self.wait()
        self.mngr.close()
        self.best.close()
