"""lmtransfer.xla_flags: the oneDNN flags are added only when asked, supported and not set by
the user, before JAX starts; runs record the flags in effect."""

import json
import os
import subprocess
import sys

from lmtransfer import xla_flags

PROBE = ("import lmtransfer, json, jax, jax.numpy as jnp; from lmtransfer import xla_flags; "
         "x = jnp.ones((64, 64)); float((x @ x).sum()); print(json.dumps(xla_flags.runtime()))")


def runtime_in_subprocess(**env):
    env = {**{k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.ENV)},
           "JAX_PLATFORMS": "cpu", **env}
    r = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_detection_reads_the_installed_jaxlib():
    assert xla_flags.jaxlib_defines(*xla_flags.ONEDNN)  # the pinned jaxlib has both
    assert not xla_flags.jaxlib_defines("--xla_no_such_flag_anywhere=true")


def test_onednn_only_when_asked_and_never_over_the_users_flags():
    assert runtime_in_subprocess() == {**runtime_in_subprocess(), "onednn": False,
                                       "xla_flags": ""}
    on = runtime_in_subprocess(**{xla_flags.ENV: "1"})
    assert on["onednn"] and on["backend"] == "cpu"
    assert on["xla_flags"].split() == list(xla_flags.ONEDNN)
    mine = runtime_in_subprocess(**{xla_flags.ENV: "1", "XLA_FLAGS": "--xla_cpu_use_onednn=false"})
    assert mine["xla_flags"] == "--xla_cpu_use_onednn=false" and not mine["onednn"]
