"""Per-phase wall time (train/phases.py): start-up goes to a process's first run only, nested
phases charge the innermost one, and compile seconds move out of the phase that compiled."""

import time

import jax
import jax.numpy as jnp

from lmtransfer.train import phases as phases_lib


def test_startup_is_charged_to_the_first_run_of_a_process_only():
    with phases_lib.Phases():  # whichever run came first in this process took the start-up
        pass
    time.sleep(0.05)
    with phases_lib.Phases() as later:  # a sweep's second run: nothing to import any more
        later.switch("load")
    assert later.summary()["startup"] == 0.0


def test_nested_phases_and_compiles_are_charged_where_they_belong():
    with phases_lib.Phases() as p:
        p.switch("train")
        time.sleep(0.05)
        start = time.perf_counter()
        with p("eval"):
            time.sleep(0.1)
            # what jax reports for a compile (or a cache load) of 0.08 s
            jax.monitoring.record_event_duration_secs(phases_lib.COMPILE_EVENTS[-1], 0.08)
        in_eval = time.perf_counter() - start
        jax.jit(lambda x: jnp.sin(x) * 3.0)(jnp.ones((7, 3))).block_until_ready()  # a real one
        s = p.summary()
    assert abs(s["eval"] - (in_eval - 0.08)) < 0.01  # the eval, less the compile it triggered
    assert s["compile"] > 0.08 and s["train"] >= 0.05
    assert abs(sum(s[k] for k in phases_lib.ORDER) - s["total"]) < 0.01
