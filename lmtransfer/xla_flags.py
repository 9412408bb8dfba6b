"""XLA:CPU flags lmtransfer can set before the backend starts, and what a run records of them.

The oneDNN matmul path, `--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot`
(XLA takes the first only with the second; +12% on the MiniLM step, issue 20), is added to
XLA_FLAGS with `LMTRANSFER_ONEDNN=1` when all of these hold:

- the installed jaxlib defines both flags (their names are looked up in its binary: an XLA
  without them would abort the process at start-up on an unknown flag);
- XLA_FLAGS does not already set either (the user's choice wins);
- JAX's backends have not started yet (flags set later would not take effect, and then they
  are not claimed either).

It is opt-in, for experiments only: on jaxlib 0.10.2 it gives wrong results. The jitted MiniLM
forward differs from a float64 PyTorch reference by up to 2.7 on real tokens with it (3.2e-6
with XLA's default dots), while the same model run op by op is exact
(`python benchmarks/onednn_check.py`): some fused dot is miscompiled. Enabling it logs a
warning saying so; finding the op is issue 20's.

`runtime()` is what a run records (results.json, the bench JSON): the backend, the XLA_FLAGS
the backend started with, and whether the oneDNN path is among them.
"""

from __future__ import annotations

import functools
import glob
import mmap
import os

ONEDNN = ("--xla_cpu_use_onednn=true", "--xla_cpu_experimental_onednn_fusion_type=dot")
ENV = "LMTRANSFER_ONEDNN"
_started_with: list[str | None] = [None]


@functools.cache
def jaxlib_defines(*names: str) -> bool:
    """Whether the installed jaxlib's XLA defines every flag in `names`."""
    import importlib.util

    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return False
    wanted = [n.split("=")[0].lstrip("-").encode() for n in names]
    for lib in sorted(glob.glob(os.path.join(spec.submodule_search_locations[0], "*.so")),
                      key=os.path.getsize, reverse=True)[:3]:
        with open(lib, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            if all(m.find(w) >= 0 for w in wanted):
                return True
    return False


def _backends_started() -> bool:
    import sys

    if "jax" not in sys.modules:
        return False
    from jax._src import xla_bridge

    return xla_bridge.backends_are_initialized()


def apply() -> bool:
    """Adds the oneDNN pair to XLA_FLAGS if it applies (see the module docstring); returns
    whether the flags in effect include it."""
    flags = os.environ.get("XLA_FLAGS", "")
    if not _backends_started():
        user_set = any(f.split("=")[0] in flags for f in ONEDNN)
        if os.environ.get(ENV) == "1" and not user_set and jaxlib_defines(*ONEDNN):
            flags = " ".join([flags, *ONEDNN]).strip()
            os.environ["XLA_FLAGS"] = flags
            import logging

            logging.getLogger(__name__).warning(
                "%s=1: XLA's oneDNN dot path is on; on jaxlib 0.10.2 it miscomputes the jitted "
                "MiniLM forward (max |diff| 2.69 from PyTorch), so use it for experiments only "
                "(lmtransfer/xla_flags.py)", ENV)
        _started_with[0] = flags
    return all(f in (_started_with[0] or "") for f in ONEDNN)


def runtime() -> dict:
    """The backend and the XLA flags it runs with, for results.json and the bench JSON."""
    import jax

    flags = _started_with[0] if _started_with[0] is not None else os.environ.get("XLA_FLAGS", "")
    return {"backend": jax.default_backend(), "xla_flags": flags,
            "onednn": all(f in flags for f in ONEDNN), "jax": jax.__version__}
