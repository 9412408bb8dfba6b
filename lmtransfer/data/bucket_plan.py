"""A run's length buckets, chosen from the batch lengths it will meet.

Every bucket is one compiled executable of the train step; every batch is padded to the smallest
bucket that fits its longest row. Few buckets: few compiles, much padding; many: the reverse.
A fine-tuning run's batches are known before it starts (the order is a function of the seed and
the step), so the set of buckets that minimises

    sum over steps of cost(bucket of the step) + compile_cost x (number of buckets)

is found exactly, by dynamic programming over candidate lengths (multiples of 8 and
max_length). The plan is a pure function of the config and the data, never of a timing: a
rerun and a resumed run pad every step exactly as the first run did.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MULTIPLE = 8  # candidate lengths: rows stay vector-aligned; a finer grid saves < 8 tokens a row


def candidates(longest: np.ndarray, max_length: int) -> np.ndarray:
    """Each step's longest row rounded up to a candidate length."""
    up = -(-np.asarray(longest) // MULTIPLE) * MULTIPLE
    return np.minimum(up, max_length)


def plan(longest: np.ndarray, max_length: int, step_cost: Callable[[int], float],
         compile_cost: float) -> tuple[int, ...]:
    """The bucket set minimising the run's cost.

    `longest`: each step's longest row (real tokens); `step_cost(L)`: a step's cost at length L,
    and `compile_cost` one compile's, in the same unit (what matters is the cost that depends
    on L: a step's fixed part is paid whatever the buckets). The longest candidate is always
    a bucket; a step pays the cost of the smallest bucket that fits it."""
    levels, counts = np.unique(candidates(longest, max_length), return_counts=True)
    if not len(levels):
        return (max_length,)
    cost = np.array([step_cost(int(n)) for n in levels], np.float64)
    # best[j]: the least cost of the steps at levels[:j + 1] with levels[j] a bucket.
    # Between consecutive buckets levels[i] < levels[j] the steps of levels (i, j] pay levels[j].
    steps_below = np.concatenate([[0], np.cumsum(counts)])
    best = np.empty(len(levels))
    previous = np.full(len(levels), -1)
    for j in range(len(levels)):
        options = [(steps_below[j + 1] - steps_below[i + 1]) * cost[j] + compile_cost
                   + (best[i] if i >= 0 else 0.0) for i in range(-1, j)]
        k = int(np.argmin(options))
        best[j], previous[j] = options[k], k - 1
    chosen, j = [], len(levels) - 1
    while j >= 0:
        chosen.append(int(levels[j]))
        j = previous[j]
    return tuple(sorted(chosen))


def padded(longest: np.ndarray, buckets: tuple[int, ...]) -> np.ndarray:
    """The length each step is padded to under `buckets` (the longest bucket where none fits)."""
    b = np.asarray(sorted(buckets))
    return b[np.minimum(np.searchsorted(b, np.asarray(longest)), len(b) - 1)]
