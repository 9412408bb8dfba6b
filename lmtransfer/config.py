"""Config files (`get_config(arg)` -> ConfigDict) and their checks.

    python -m lmtransfer.main --config configs/convert.py:head=qa --config.seed=1 --workdir DIR

`:k=v,...` after the file name is the config's `arg` (parsed with `parse_arg`); `--config.a.b=v`
overrides a field (ml_collections checks its type). Configs are locked: a key that does not
exist is an error that names it, before anything runs.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import os
from collections.abc import Sequence

import ml_collections

from lmtransfer import sharding
from lmtransfer.errors import ConfigError, NotFound

MODES = ("convert", "train", "eval", "predict", "quickstart", "prepare", "generate")


def base_config() -> ml_collections.ConfigDict:
    """Fields every run has; config files add their own sections."""
    c = ml_collections.ConfigDict()
    c.mode = "convert"
    c.seed = 0
    # Mesh axis sizes; -1 takes the remaining devices.
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    # Logical axis -> mesh axis (or None); see lmtransfer/sharding.py.
    c.sharding_rules = sharding.DEFAULT_RULES
    # Compute settings applied on top of the checkpoint's architecture.
    # remat: recompute each layer's activations in the backward pass (less memory).
    c.model = ml_collections.ConfigDict(dict(dtype="float32", param_dtype="float32",
                                             attention="auto", remat=False))
    # Experiment tracking beside TensorBoard: a W&B project logs the same metrics, the
    # resolved config and the results from process 0 (wandb_mode: "" = W&B's own setting,
    # e.g. WANDB_MODE; "offline" writes the run locally for `wandb sync`).
    c.logging = ml_collections.ConfigDict(dict(wandb_project="", wandb_entity="",
                                               wandb_name="", wandb_mode=""))
    return c


def finetune_config() -> ml_collections.ConfigDict:
    """Fields of the train / eval / predict modes (tasks add their data fields)."""
    c = base_config()
    c.mode = "train"
    c.task = "classification"
    # HF checkpoint dir or lmtransfer workdir to start from; "" = model.preset from scratch.
    c.init_from = ""
    c.model.preset = "tiny"  # used when init_from is ""
    # From-scratch models round the tokenizer's vocabulary up to a multiple of this, so the
    # vocab axis splits evenly over tensor-parallel devices (and matmuls tile well).
    c.model.vocab_multiple = 128
    c.model.tokenizer = ""  # "" = init_from's tokenizer, else the packaged MiniLM's
    # A token of the tokenizer to pad with when it has none (GPT-2, Llama: e.g. its eos).
    c.model.pad_token = ""
    c.model.hidden_dropout_prob = -1.0  # < 0: keep the checkpoint's
    c.model.attention_probs_dropout_prob = -1.0
    c.optim = ml_collections.ConfigDict(dict(
        lr=2e-5, warmup_steps=0, warmup_ratio=0.1, decay="linear", weight_decay=0.01,
        b1=0.9, b2=0.999, eps=1e-8, max_grad_norm=1.0,
        # A regex over parameter paths ("embeddings/"): those stay as they are.
        freeze="",
        # < 1: layer_{i} learns at lr x layer_decay^(layers - i), embeddings lowest.
        layer_decay=1.0))
    # Parameter-efficient transfer (lmtransfer/peft.py): method="lora" trains rank-`rank`
    # adapters (scaled alpha / rank, dropout on their input) on the dense layers whose path
    # `targets` matches ("" = attention query and value), the task head, and the parameters
    # `train` matches (e.g. "layer_norm|bias"); the base stays frozen, in `base_dtype`
    # ("" = model.param_dtype; "bfloat16" halves it), and checkpoints keep only what trains.
    c.peft = ml_collections.ConfigDict(dict(method="", rank=8, alpha=16.0, dropout=0.1,
                                            targets="", train="", base_dtype=""))
    # export_hf: the best model as an HF dir (LoRA merged); export_peft: its adapters as a
    # PEFT adapter dir (<workdir>/peft).
    c.train = ml_collections.ConfigDict(dict(
        batch_size=32, eval_batch_size=64, epochs=3.0, steps=0, grad_accum=1,
        eval_every=0, log_every=10, checkpoint_every=200, keep_checkpoints=2, export_hf=False,
        export_peft=False,
        # NaN/Inf loss or gradients stop the run (naming the step); True skips such updates.
        skip_nonfinite=False,
        # compile the step for each length bucket ahead, in a background thread (ahead.py)
        compile_ahead=True))
    c.data = data_config(
        source="glue", glue_task="", text_column="text", text_pair_column="",
        label_column="label", id_column="", labels=(), regression=False, metric="",
        vader_seed=0)
    return c


def data_config(**task_fields) -> ml_collections.ConfigDict:
    """The data fields every task has, plus the task's own (`task_fields`)."""
    return ml_collections.ConfigDict(dict(
        # buckets=() plans the train buckets per run (train/ahead.py: one compile costs
        # bucket_compile_tokens padded tokens; -1 = measured per platform, 0 = fixed buckets)
        dir="", tfds_data_dir="", max_length=128, buckets=(), bucket_compile_tokens=-1,
        files=ml_collections.ConfigDict(dict(train="", dev="", test="")),
        max_examples=ml_collections.ConfigDict(dict(train=0, dev=0)), **task_fields))


def parse_arg(arg: str | None, **defaults):
    """'a=1,b=x,flag' -> ConfigDict(a=1, b='x', flag=True), typed like `defaults`.

    Keys not in `defaults` are an error naming the key.
    """
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(f"unknown config arg {key!r}; known: {sorted(defaults)}")
        if not _:
            out[key] = True
            continue
        default = defaults[key]
        if isinstance(default, bool):
            out[key] = value.lower() in ("1", "true", "yes")
        elif isinstance(default, (int, float)):
            out[key] = type(default)(ast.literal_eval(value))
        else:
            out[key] = value
    return out


def import_config_file(path: str, function: str = "get_config", flag: str = "--config"):
    """The module of a config (or table) file that defines `function(arg)`."""
    if not os.path.exists(path):
        raise NotFound(f"{flag}: {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_lmtransfer_{function}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, function):
        raise ConfigError(f"{flag}: {path} has no {function}(arg) function")
    return mod


def check_overrides(argv: Sequence[str], flag: str = "config") -> None:
    """Fails with the key named when a `--config.a.b=v` names a field the config lacks.

    (ml_collections raises a bare AttributeError for this during flag parsing.)
    """
    file_arg = None
    for i, a in enumerate(argv):
        if a.startswith(f"--{flag}="):
            file_arg = a.split("=", 1)[1]
        elif a == f"--{flag}" and i + 1 < len(argv):
            file_arg = argv[i + 1]
    if file_arg is None:
        return
    path, _, arg = file_arg.partition(":")
    config = import_config_file(path).get_config(arg or None)
    for a in argv:
        if not a.startswith(f"--{flag}."):
            continue
        key = a[len(flag) + 3:].split("=", 1)[0]
        node, walked = config, []
        for part in key.split("."):
            fields = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            if part not in fields:
                near = difflib.get_close_matches(part, fields, n=3)
                where = ".".join(walked) or "the config"
                raise ValueError(
                    f"--{flag}.{key}: {where} has no field {part!r}"
                    + (f"; did you mean {', '.join(near)}?" if near else
                       f"; fields: {', '.join(sorted(fields))}"))
            node, walked = node[part], walked + [part]


def parse_flags(argv):
    """absl flag parsing for our CLIs: an unknown `--config.x` or a bad config file is one
    error line and exit code 2, not a traceback."""
    import sys

    from absl import flags

    try:
        check_overrides(argv)
        return flags.FLAGS(argv)
    except (ValueError, FileNotFoundError, flags.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


PATH_FIELDS = ("init_from", "model.tokenizer", "data.dir", "data.tfds_data_dir", "data.store",
               "generate.prompts_file")


def expand_user_paths(config: ml_collections.ConfigDict) -> None:
    """`~/...` in the path fields becomes the home of the machine that runs (printed sweep
    commands and run_tpu.sh pass `~/bucket/...` through unexpanded)."""
    for key in PATH_FIELDS:
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.get(part) if node is not None else None
        if node is not None and isinstance(node.get(leaf), str) and node[leaf].startswith("~"):
            node[leaf] = os.path.expanduser(node[leaf])


def validate(config: ml_collections.ConfigDict) -> None:
    """Semantic checks that types alone can't catch; each error names its config key."""
    if config.mode not in MODES:
        raise ConfigError(f"config.mode={config.mode!r}; use one of {MODES}")
    sharding.rules_from_config(config.sharding_rules)  # the mesh is checked when it is made


# Fields a rerun in the same workdir may change: they don't change what the run computes.
RESUME_MAY_CHANGE = ("mode", "logging.wandb_project", "logging.wandb_entity",
                     "logging.wandb_name", "logging.wandb_mode", "train.log_every",
                     "train.eval_every", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.export_hf", "train.export_peft",
                     "train.eval_batch_size", "train.compile_ahead", "data.prepare_workers")
# What a train run writes into its workdir (removed by --overwrite).
RUN_OUTPUTS = ("checkpoints", "best", "tb", "wandb", "predictions", "hf", "peft", "tokenizer",
               "store", "metrics.jsonl", "results.json", "eval_results.json",
               "predict_results.json", "config.json")


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changes(old: dict, new: dict) -> list[str]:
    """`key: old -> new` for every field that differs, except RESUME_MAY_CHANGE."""
    a, b = _flat(old), _flat(new)
    return [f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in RESUME_MAY_CHANGE]


def claim_workdir(config: ml_collections.ConfigDict, workdir: str, overwrite: bool,
                  remove: bool = True) -> None:
    """A train run owns its workdir: rerunning with the same config resumes; a different
    config is refused (naming the fields) unless `overwrite`, which first removes the old
    run's outputs (`remove`: this process does the removing; every process checks)."""
    from lmtransfer import paths

    path = paths.join(workdir, "config.json")
    if not paths.exists(path):
        return
    old = paths.read_json(path)
    diff = changes(old, json.loads(config.to_json_best_effort()))
    if not diff:
        return
    if not overwrite:
        shown = "; ".join(diff[:8]) + (f"; and {len(diff) - 8} more" if len(diff) > 8 else "")
        raise ConfigError(f"{workdir} holds a run with a different config ({shown}). Rerun with "
                          "the same config to resume it, use a new --workdir, or pass "
                          "--overwrite to discard that run")
    for name in RUN_OUTPUTS if remove else ():
        paths.remove(paths.join(workdir, name))


def dump(config: ml_collections.ConfigDict, path: str) -> None:
    """Writes the resolved config as JSON (whole or not at all)."""
    from lmtransfer import paths

    paths.write_text(path, json.dumps(json.loads(config.to_json_best_effort()), indent=2,
                                      sort_keys=True))
