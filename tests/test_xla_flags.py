"""lmtransfer.xla_flags: the oneDNN flags go on by default only where the installed jaxlib
defines them and computes them correctly, never over the user's flags, before JAX starts; runs
record the flags in effect and the check's verdict."""

import json
import os
import subprocess
import sys

import jaxlib

from lmtransfer import xla_flags

PROBE = ("import lmtransfer, json, jax, jax.numpy as jnp; from lmtransfer import xla_flags; "
         "x = jnp.ones((64, 64)); float((x @ x).sum()); print(json.dumps(xla_flags.runtime()))")


def runtime_in_subprocess(home, **env):
    env = {**{k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.ENV)},
           "JAX_PLATFORMS": "cpu", "HOME": str(home), **env}
    r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def cached_verdict(home, ok: bool, reason: str = ""):
    path = os.path.join(home, ".cache", "lmtransfer", "onednn-check.json")
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump({xla_flags.check_key(xla_flags.ONEDNN): {"ok": ok, "reason": reason}}, f)


def test_detection_reads_the_installed_jaxlib():
    assert xla_flags.jaxlib_defines(*xla_flags.ONEDNN)  # the pinned jaxlib has both
    assert not xla_flags.jaxlib_defines("--xla_no_such_flag_anywhere=true")


def test_the_check_passes_xlas_default_dots_and_catches_the_pinned_jaxlibs_onednn_bug(
        tmp_path, monkeypatch):
    monkeypatch.setattr(xla_flags, "CHECK_CACHE", str(tmp_path / "check.json"))
    default = xla_flags.check(flags=())
    assert default["ok"] and len(default["cases"]) == 5, default  # the probe itself is sound
    onednn = xla_flags.check()
    if jaxlib.__version__ == "0.10.2":  # a dot times a broadcast operand comes out squared
        assert not onednn["ok"] and "dot * scalar: max |error|" in onednn["reason"], onednn
    cached = json.loads((tmp_path / "check.json").read_text())
    assert cached[xla_flags.check_key(xla_flags.ONEDNN)] == onednn


def test_the_default_follows_the_check(tmp_path):
    cached_verdict(tmp_path / "good", ok=True)
    on = runtime_in_subprocess(tmp_path / "good")
    assert on["onednn"] and on["xla_flags"].split() == list(xla_flags.ONEDNN)
    assert on["onednn_check"] == "passed" and on["backend"] == "cpu"
    cached_verdict(tmp_path / "bad", ok=False, reason="dot * scalar: max |error| 552")
    off = runtime_in_subprocess(tmp_path / "bad")
    assert not off["onednn"] and off["xla_flags"] == ""
    assert off["onednn_check"] == "dot * scalar: max |error| 552"


def test_the_env_switch_and_the_users_flags_win(tmp_path):
    cached_verdict(tmp_path, ok=True)
    off = runtime_in_subprocess(tmp_path, **{xla_flags.ENV: "0"})
    assert not off["onednn"] and off["onednn_check"] is None
    cached_verdict(tmp_path / "bad", ok=False, reason="broken")
    forced = runtime_in_subprocess(tmp_path / "bad", **{xla_flags.ENV: "1"})
    assert forced["onednn"] and forced["onednn_check"] == f"{xla_flags.ENV}=1"
    mine = runtime_in_subprocess(tmp_path, XLA_FLAGS="--xla_cpu_use_onednn=false")
    assert mine["xla_flags"] == "--xla_cpu_use_onednn=false" and not mine["onednn"]
