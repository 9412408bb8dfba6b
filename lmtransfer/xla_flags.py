"""XLA:CPU flags lmtransfer sets before the backend starts, and what a run records of them.

The oneDNN matmul path, `--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot`
(XLA takes the first only with the second; +12% on the MiniLM step, issue 20), is added to
XLA_FLAGS by default when all of these hold:

- the installed jaxlib defines both flags (their names are looked up in its binary: an XLA
  without them would abort the process at start-up on an unknown flag);
- XLA_FLAGS does not already set either (the user's choice wins), and LMTRANSFER_ONEDNN is
  not 0 (1 forces the pair on without the check below);
- JAX's backends have not started yet (flags set later would not take effect, and then they
  are not claimed either);
- **the pair computes correctly here**: a child process compiles, with the pair, the fusions
  XLA hands to oneDNN (a dot times a scalar or a vector, a batched dot divided by a scalar, the
  dot-softmax-dot attention chain, an MLP layer's gradient) and compares each with the same
  function run op by op. The verdict is cached per jaxlib, CPU and flags in
  `~/.cache/lmtransfer/onednn-check.json`, so only the first start of a new install pays it.

On jaxlib 0.10.2 the check fails, so the pair stays off: a dot followed by a multiply or divide
by a broadcast operand comes out as the dot's square (max |error| 552 on values below 4; XLA's
oneDNN fusion takes the dot's own output as the multiplier), and the attention chain aborts the
process ("partition compile failed", then SIGILL). `python benchmarks/onednn_check.py` shows it
on the MiniLM encoder.

`runtime()` is what a run records (results.json, the bench JSON): the backend, the XLA_FLAGS
the backend started with, whether the oneDNN path is among them and the check's verdict.
"""

from __future__ import annotations

import functools
import glob
import mmap
import os

ONEDNN = ("--xla_cpu_use_onednn=true", "--xla_cpu_experimental_onednn_fusion_type=dot")
ENV = "LMTRANSFER_ONEDNN"
_started_with: list[str | None] = [None]
_verdict: list[dict | None] = [None]  # the correctness check of this process, if it ran


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


CHECK_CACHE = os.path.join("~", ".cache", "lmtransfer", "onednn-check.json")
TOLERANCE = 1e-4  # relative to the largest value of a case: fp32 dots, reordered sums


def _cpu() -> str:
    """The CPU model and its instruction-set flags (what oneDNN dispatches on)."""
    import hashlib
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
    except OSError:
        lines = [platform.processor()]
    return hashlib.sha1("".join(lines).encode()).hexdigest()[:12]


def check_key(flags: tuple[str, ...]) -> str:
    from importlib import metadata

    return f"jaxlib {metadata.version('jaxlib')} cpu {_cpu()} flags {' '.join(flags)}"


def check(flags: tuple[str, ...] = ONEDNN, timeout: float = 300) -> dict:
    """Runs lmtransfer/onednn_probe.py in a child process with `flags`; returns {"ok", "reason",
    "cases"}, cached per jaxlib version, CPU and flags (a new install checks once)."""
    import json
    import subprocess
    import sys

    key = check_key(flags)
    cache = os.path.expanduser(CHECK_CACHE)
    try:
        with open(cache) as f:
            known = json.load(f)
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    probe = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onednn_probe.py")
    env = {**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu", ENV: "0"}
    with open(probe) as f:  # -P -c: run the file without putting lmtransfer/ on sys.path
        source = f.read()
    try:
        r = subprocess.run([sys.executable, "-P", "-c", source], env=env, capture_output=True,
                           text=True, timeout=timeout)
        out, code = r.stdout, r.returncode
    except subprocess.TimeoutExpired as e:
        out, code = (e.stdout or b"").decode(errors="replace"), f"timeout after {timeout:.0f} s"
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    done = [c for c in rows if "err" in c]
    problems = [f"{c['case']}: max |error| {c['err']:.3g} on values up to {c['scale']:.3g}"
                for c in done if not c["err"] <= TOLERANCE * max(1.0, c["scale"])]
    if code != 0:
        ended = code if isinstance(code, str) else f"exit status {code}"
        problems.append(f"{rows[-1]['case'] if rows else 'start-up'}: the process ended with "
                        f"{ended}")
    reason = "; ".join(problems)
    verdict = {"ok": not reason, "reason": reason, "cases": done}
    if flags == ONEDNN:
        import logging

        logging.getLogger(__name__).info("XLA's oneDNN dot path %s", "passed lmtransfer's check"
                                         if not reason else f"stays off: {reason}")
    known[key] = verdict
    from lmtransfer import paths

    paths.write_text(cache, json.dumps(known, indent=1))  # whole or not at all
    return verdict


def _cpu_backend_possible() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "")
    return not platforms or "cpu" in platforms.split(",")


def apply() -> bool:
    """Adds the oneDNN pair to XLA_FLAGS if it applies (see the module docstring); returns
    whether the flags in effect include it."""
    flags = os.environ.get("XLA_FLAGS", "")
    if not _backends_started():
        user_set = any(f.split("=")[0] in flags for f in ONEDNN)
        wanted = os.environ.get(ENV, "auto")
        if wanted not in ("0", "1", "auto"):
            from lmtransfer.errors import ConfigError

            raise ConfigError(f"{ENV}={wanted!r}: use 1 (on), 0 (off) or leave it unset "
                              "(on where the installed jaxlib computes it correctly)")
        if (wanted != "0" and not user_set and _cpu_backend_possible()
                and jaxlib_defines(*ONEDNN)):
            verdict = check() if wanted == "auto" else {"ok": True, "reason": f"{ENV}=1"}
            _verdict[0] = verdict
            if verdict["ok"]:
                flags = " ".join([flags, *ONEDNN]).strip()
                os.environ["XLA_FLAGS"] = flags
        _started_with[0] = flags
    return all(f in (_started_with[0] or "") for f in ONEDNN)


def runtime() -> dict:
    """The backend and the XLA flags it runs with, for results.json and the bench JSON."""
    import jax

    flags = _started_with[0] if _started_with[0] is not None else os.environ.get("XLA_FLAGS", "")
    verdict = _verdict[0]
    return {"backend": jax.default_backend(), "xla_flags": flags,
            "onednn": all(f in flags for f in ONEDNN), "jax": jax.__version__,
            "onednn_check": None if verdict is None else verdict["reason"] or "passed"}
