"""A run's length buckets (lmtransfer.data.bucket_plan, train.ahead.plan_buckets): the dynamic
program finds the cheapest bucket set (checked against every subset), and the run's policy
(explicit buckets, fixed ones, the CPU default, bad values) is what the config says."""

import itertools
import types

import ml_collections
import numpy as np
import pytest

from lmtransfer import sharding
from lmtransfer.data import batching, bucket_plan
from lmtransfer.errors import ConfigError
from lmtransfer.models import from_preset
from lmtransfer.train import ahead


def run_cost(longest, buckets, step_cost, compile_cost):
    return (sum(step_cost(int(n)) for n in bucket_plan.padded(longest, buckets))
            + compile_cost * len(set(buckets)))


@pytest.mark.parametrize("seed", range(6))
def test_plan_is_the_cheapest_of_all_bucket_sets(seed):
    rng = np.random.default_rng(seed)
    longest = np.minimum(rng.geometric(rng.uniform(0.02, 0.1), rng.integers(5, 60)), 100)
    max_length = 100
    levels = sorted(set(bucket_plan.candidates(longest, max_length).tolist()))
    assert levels[-1] <= max_length and all(n % 8 == 0 or n == max_length for n in levels)
    a, b = rng.uniform(0, 2), rng.uniform(0, 0.01)  # a step's cost, quadratic in its length
    step_cost = lambda n: 32 * n * (a + b * n)  # noqa: E731
    compile_cost = rng.uniform(0, 3) * step_cost(max_length)
    got = bucket_plan.plan(longest, max_length, step_cost, compile_cost)
    assert got[-1] == levels[-1]  # the longest batch always has its own bucket
    every = [s + (levels[-1],) for r in range(len(levels))
             for s in itertools.combinations(levels[:-1], r)]
    best = min(run_cost(longest, s, step_cost, compile_cost) for s in every)
    assert run_cost(longest, got, step_cost, compile_cost) == pytest.approx(best, rel=1e-12)


def test_free_compiles_give_every_length_and_dear_ones_a_single_bucket():
    longest = np.array([3, 9, 17, 30, 30, 64, 70])
    assert bucket_plan.plan(longest, 72, lambda n: n, 0.0) == (8, 16, 24, 32, 64, 72)
    assert bucket_plan.plan(longest, 72, lambda n: n, 1e9) == (72,)
    assert bucket_plan.plan(longest, 66, lambda n: n, 1e9) == (66,)  # max_length caps
    assert bucket_plan.plan(np.zeros(0, int), 128, lambda n: n, 1.0) == (128,)


def policy_setup(**data):
    rng = np.random.default_rng(0)
    n, width = 300, 128
    lengths = np.minimum(4 + rng.geometric(0.06, n), width)
    features = {"input_ids": np.ones((n, width), np.int32), "length": lengths}
    batcher = batching.Batcher(features, 8, sharding.make_mesh({"data": -1}), (128,))
    config = ml_collections.ConfigDict(dict(seed=3, data={
        "max_length": width, "buckets": (), "bucket_compile_tokens": -1, **data}))
    return config, batcher


def plan_for(config, batcher, total=120):
    task = types.SimpleNamespace(decoded_per_row=lambda length: None)  # classification
    return ahead.plan_buckets(config, batcher, total, from_preset("tiny", "classification", 2),
                              task)


def test_run_policy_follows_the_config():
    config, batcher = policy_setup()
    planned = plan_for(config, batcher)  # CPU: the measured compile cost
    longest = batcher.step_longest(0, 120, ahead.PLAN_SEED)
    assert planned[-1] >= batcher.step_longest(0, 120, config.seed).max()
    fixed = batching.default_buckets(128)
    cost = lambda bk: (bucket_plan.padded(longest, bk).sum() * 8  # noqa: E731
                       + ahead.CPU_COMPILE_TOKENS * len(set(bucket_plan.padded(longest, bk))))
    assert cost(planned) < cost(fixed)  # fewer padded tokens + compiles than multiples of 16
    assert plan_for(config, batcher, total=120) == planned  # a pure function of the run
    config.data.bucket_compile_tokens = 0
    assert plan_for(config, batcher) == fixed
    config.data.bucket_compile_tokens = 10 ** 9
    assert plan_for(config, batcher) == (bucket_plan.candidates(longest, 128).max(),)
    config.data.buckets = (64, 32, 128)
    assert plan_for(config, batcher) == (32, 64, 128)
    config.data.buckets = (32, 64)  # rows of 65-128 tokens would be cut
    with pytest.raises(ConfigError, match=r"buckets=\(32, 64\).*max_length=128"):
        plan_for(config, batcher)
    config.data.buckets, config.data.bucket_compile_tokens = (), -2
    with pytest.raises(ConfigError, match="bucket_compile_tokens=-2"):
        plan_for(config, batcher)


def test_every_seed_plans_the_same_buckets_and_covers_its_own_batches():
    """A sweep's seeds share their compiled steps: the plan reads one fixed batch order. A run
    shorter than an epoch still gets a bucket for its own longest batch."""
    config, batcher = policy_setup()
    plans = set()
    for seed in range(5):
        config.seed = seed
        plans.add(plan_for(config, batcher))
        for total in (1, 2, 5):
            short = plan_for(config, batcher, total=total)
            assert short[-1] >= batcher.step_longest(0, total, seed).max()
    assert len(plans) == 1


def test_steps_beyond_ten_epochs_scale_the_counts():
    """Lengths are read from 10 epochs; a 100-epoch run's compiles weigh 10x less per step
    read, so the plan is what the full count of steps would give."""
    config, batcher = policy_setup(bucket_compile_tokens=20_000)
    spe = batcher.steps_per_epoch
    long_run = plan_for(config, batcher, total=100 * spe)
    assert long_run != plan_for(config, batcher, total=10 * spe)  # the scale matters here
    config.data.bucket_compile_tokens = 2_000
    assert long_run == plan_for(config, batcher, total=10 * spe)
