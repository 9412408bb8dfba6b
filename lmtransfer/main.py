"""The command line: `python -m lmtransfer.main --config configs/<file>.py[:k=v] --workdir DIR`.

The config's `mode` picks what runs; the resolved config is written to `DIR/config.json`
(`DIR/<mode>_config.json` for eval / predict, which read a trained workdir). A train run owns
its workdir: the same command resumes it, a different config is refused unless --overwrite.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from lmtransfer import config as config_lib
from lmtransfer import paths
from lmtransfer.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:args].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the run writes.")
flags.mark_flags_as_required(["config", "workdir"])
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Discard the outputs of an earlier train run with a different config "
    "in --workdir (by default such a workdir is refused).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Multi-host: 'on' calls jax.distributed.initialize() (on TPU VMs and clusters JAX detects "
    "the rest itself); 'auto' does so only when a coordinator address is given.")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (env JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Number of processes (env JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "This process's index (env JAX_PROCESS_ID).")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout", 300, "Seconds to wait for every process to join before failing.")
_CACHE = flags.DEFINE_string(
    "compilation_cache", "~/.cache/lmtransfer/xla",
    "Directory of JAX's persistent compilation cache: reruns, resumed runs and sweeps load "
    "compiled steps instead of recompiling ('' turns it off).")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout", 100, "Seconds without a heartbeat after which a process counts as "
    "dead and every other process stops with an error (instead of hanging in a collective).")

# mode -> "module:function(config, workdir) -> dict"
MODES = {"convert": "lmtransfer.convert:run", "train": "lmtransfer.train.loop:train",
         "eval": "lmtransfer.train.evaluate:evaluate_mode",
         "predict": "lmtransfer.train.evaluate:predict_mode",
         "quickstart": "lmtransfer.quickstart:run", "prepare": "lmtransfer.prepare:run",
         "generate": "lmtransfer.generate:run"}

log = logging.getLogger("lmtransfer")


def run(config, workdir: str, overwrite: bool = False) -> dict:
    """Runs `config.mode` in `workdir` (the library entry point behind the CLI)."""
    import jax

    config_lib.expand_user_paths(config)
    config_lib.validate(config)
    workdir = paths.resolve(workdir)
    paths.makedirs(workdir)
    if jax.process_index() == 0:
        paths.check_writable(workdir)  # a bucket without credentials fails here, not at step N
    if config.mode == "train":
        config_lib.claim_workdir(config, workdir, overwrite, remove=jax.process_index() == 0)
        if jax.process_count() > 1:  # the others wait for process 0's check / clean-up
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("lmtransfer:workdir")
    name = f"{config.mode}_config.json" if config.mode in ("eval", "predict") else "config.json"
    dumped = paths.join(workdir, name)
    first = not paths.exists(dumped)
    if jax.process_index() == 0:
        config_lib.dump(config, dumped)
    module, fn = MODES[config.mode].split(":")
    try:
        result = getattr(importlib.import_module(module), fn)(config, workdir)
    except UserError:  # refused before it began: the fixed config may use the same workdir
        if first and jax.process_index() == 0 and not paths.exists(
                paths.join(workdir, "checkpoints")):
            for leftover in (dumped, paths.join(workdir, "tokenizer")):
                paths.remove(leftover)
        raise
    if jax.process_index() == 0:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return result


def init_distributed(mode: str, coordinator=None, num_processes=None, process_id=None,
                     init_timeout: int = 300, heartbeat_timeout: int = 100):
    """Joins the multi-host job (before anything touches a device). Flags win over the
    environment variables JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID."""
    env = os.environ
    coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS")
    if num_processes is None and env.get("JAX_NUM_PROCESSES"):
        num_processes = int(env["JAX_NUM_PROCESSES"])
    if process_id is None and env.get("JAX_PROCESS_ID"):
        process_id = int(env["JAX_PROCESS_ID"])
    if mode == "off" or (mode == "auto" and not coordinator):
        return False
    if coordinator and (num_processes is None or process_id is None):
        raise ValueError("--coordinator_address needs --num_processes and --process_id (or "
                         "JAX_NUM_PROCESSES / JAX_PROCESS_ID)")
    import jax

    jax.distributed.initialize(coordinator, num_processes, process_id,
                               initialization_timeout=init_timeout,
                               heartbeat_timeout_seconds=heartbeat_timeout)
    log.info("process %d of %d (%d local devices, %d in all)", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def use_compilation_cache(path: str) -> None:
    """JAX's persistent compilation cache in `path` ('' = off), for every executable that takes
    0.1 s or more to compile: the train steps, and also the eval steps (< 1 s on CPU), which a
    sweep's later runs then load too. Eager ops (milliseconds) stay out."""
    if path:
        import jax
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every file at INFO
    use_compilation_cache(_CACHE.value)
    init_distributed(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value,
                     _PROCESS_ID.value, _INIT_TIMEOUT.value, _HEARTBEAT.value)
    try:
        run(_CONFIG.value, _WORKDIR.value, _OVERWRITE.value)
    except UserError as e:  # bad input found after flag parsing: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main, flags_parser=config_lib.parse_flags)
