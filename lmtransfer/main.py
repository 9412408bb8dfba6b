"""The command line: `python -m lmtransfer.main --config configs/<file>.py[:k=v] --workdir DIR`.

The config's `mode` picks what runs; the resolved config is written to `DIR/config.json`.
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

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file[:args].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for everything the run writes.")
flags.mark_flags_as_required(["config", "workdir"])

# mode -> "module:function(config, workdir) -> dict"
MODES = {"convert": "lmtransfer.convert:run", "train": "lmtransfer.train.loop:train",
         "eval": "lmtransfer.train.evaluate:evaluate_mode",
         "predict": "lmtransfer.train.evaluate:predict_mode",
         "quickstart": "lmtransfer.quickstart:run"}

log = logging.getLogger("lmtransfer")


def run(config, workdir: str) -> dict:
    """Runs `config.mode` in `workdir` (the library entry point behind the CLI)."""
    import jax

    config_lib.validate(config)
    os.makedirs(workdir, exist_ok=True)
    if jax.process_index() == 0:
        config_lib.dump(config, os.path.join(workdir, "config.json"))
    module, fn = MODES[config.mode].split(":")
    result = getattr(importlib.import_module(module), fn)(config, workdir)
    if jax.process_index() == 0:
        print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return result


def _parse_flags(argv):
    try:
        config_lib.check_overrides(argv)
        return flags.FLAGS(argv)
    except (ValueError, FileNotFoundError, flags.Error) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every file at INFO
    run(_CONFIG.value, os.path.abspath(_WORKDIR.value))


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
