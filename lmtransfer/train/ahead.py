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

from lmtransfer import perf
from lmtransfer.data import batching, bucket_plan
from lmtransfer.errors import ConfigError

log = logging.getLogger(__name__)


# What one more compiled bucket costs on CPU, in padded tokens at max_length: compile seconds /
# a padded token's marginal step seconds (MiniLM b32 on 2 cores: 6.5 s / 0.65-0.82 ms,
# `python -m lmtransfer.bench --batch 32 --lengths 16,...,128`; docs/performance.md). No
# accelerator has been measured: there the default stays the fixed buckets.
CPU_COMPILE_TOKENS = 10_000


PLAN_SEED = 0  # the batch order plans are read from, whatever the run's seed (see below)


def plan_buckets(config, batcher, total: int, model, task) -> tuple[int, ...]:
    """The train length buckets of a run: `config.data.buckets` if set; else planned from the
    run's batch lengths (bucket_plan) with one compile costing
    `config.data.bucket_compile_tokens` padded tokens (-1: the platform's measured value, on
    CPU CPU_COMPILE_TOKENS; 0 or no measured value: the fixed default buckets).

    The plan reads the batches of one fixed order (PLAN_SEED's) rather than the run's: every
    seed meets the same distribution of batch lengths, so the seeds of a sweep plan the same
    buckets and share their compiled steps through the persistent cache. The largest bucket
    still covers the run's own longest batch."""
    d = config.data
    fixed = batching.fixed_buckets(d)
    tokens = d.get("bucket_compile_tokens", -1)
    if tokens < -1:
        raise ConfigError(f"config.data.bucket_compile_tokens={tokens}: use -1 (the platform's "
                          "measured value), 0 (fixed buckets) or a number of tokens")
    if tokens == -1:
        tokens = CPU_COMPILE_TOKENS if jax.default_backend() == "cpu" else 0
    if tuple(d.buckets) or tokens == 0:
        return fixed
    top = perf.train_flops_per_token(model, d.max_length, task.decoded_per_row(d.max_length))

    def step_cost(length):  # padded tokens, each weighted by its FLOPs relative to max_length
        per_token = perf.train_flops_per_token(model, length, task.decoded_per_row(length))
        return batcher.batch_size * length * per_token / top

    longest = batcher.step_longest(0, total, PLAN_SEED)  # at most 10 epochs: scale to all
    planned = bucket_plan.plan(longest, d.max_length, step_cost, tokens * len(longest) / total)
    own = int(bucket_plan.candidates(batcher.step_longest(0, total, config.seed),
                                     d.max_length).max())
    return planned if own <= planned[-1] else (*planned, own)


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
