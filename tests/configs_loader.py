"""Loads a repo config file the way `--config configs/<file>.py:arg` does."""

import importlib.util
import os

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load_config(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIG_DIR, name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)
