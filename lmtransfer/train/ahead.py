"""Compiling the train step ahead: one executable per length bucket the run will use, compiled
in a background thread in the order the steps first need them, so the loop does not stop at
each new bucket to compile (a fine-tuning run meets up to ~8 buckets of ~5-10 s each on CPU).

The first step still waits for its executable; later buckets compile while earlier steps
run. The executables are the jitted step's own (`jit(...).lower(...).compile()`, through the
persistent compilation cache), so every step computes exactly what the jitted call would.
"""

from __future__ import annotations

import concurrent.futures
import logging

import jax

from lmtransfer.data import batching

log = logging.getLogger(__name__)


def abstract(tree):
    """ShapeDtypeStructs (with shardings) of a pytree of arrays: what lowering needs, so the
    background thread never touches buffers the loop donates."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        tree)


def batch_at(template: dict, length: int) -> dict:
    """The abstract global batch of `template`'s structure cut to `length` tokens."""
    return {k: jax.ShapeDtypeStruct((v.shape[0], length, *v.shape[2:]), v.dtype,
                                    sharding=v.sharding)
            if k in batching.SEQUENCE_FEATURES and v.ndim >= 2 else v
            for k, v in template.items()}


class Executables:
    """`self(state, batch, *rest)` runs `jitted` through the executable compiled ahead for the
    batch's length (waiting for it if it is not ready, inside `waiting()`), or `jitted`
    itself for a length not foreseen."""

    def __init__(self, jitted, args: tuple, lengths: list[int], waiting, context):
        """`args`: the step's arguments, the batch (a template of it) second; `context()`: the
        mesh and logical-axis rules the loop traces under (they are per-thread, so the
        compile thread enters them too)."""
        self.jitted, self.waiting = jitted, waiting
        self._pool = concurrent.futures.ThreadPoolExecutor(1, "lmtransfer-compile")
        state, template, *rest = abstract(args)

        def compile_for(n):
            with context():
                return jitted.lower(state, batch_at(template, n), *rest).compile()

        self._ready = {n: self._pool.submit(compile_for, n) for n in lengths}
        log.info("compiling the train step ahead for lengths %s", lengths)

    def __call__(self, state, batch, *rest):
        future = self._ready.get(batch["input_ids"].shape[1])
        if future is None:
            return self.jitted(state, batch, *rest)
        if not future.done():
            with self.waiting():
                future.result()
        return future.result()(state, batch, *rest)

    def close(self) -> None:
        for f in self._ready.values():
            f.cancel()
        self._pool.shutdown(wait=True)
