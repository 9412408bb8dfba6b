"""Batches from featurized splits: deterministic order, per-host rows, few shapes.

- The config gives the *global* batch. Each process assembles only the rows of the global
  batch that live on its devices and `jax.make_array_from_process_local_data` builds the
  global array, so no example is read twice across hosts.
- Train order is a permutation per epoch drawn from (seed, epoch); the position in the data is
  a pure function of the step, so resuming at step s continues exactly where the run was.
  The last batch of an epoch is filled with weight-0 rows: every example is seen once per
  epoch and none is dropped.
- Sequence length is cut per batch to the smallest bucket that fits its longest example, so
  short inputs don't pay for max_length and only a few shapes are ever compiled.
- Eval sorts by length (less padding), pads the last batch with weight-0 rows and returns the
  example index of every row, so each example is counted exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

BATCH_AXES = ("data", "fsdp")


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def check_batch_size(batch_size: int, mesh, key: str) -> None:
    shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if batch_size % shards:
        raise ValueError(f"{key}={batch_size} must be divisible by data x fsdp = {shards} "
                         "(the devices the batch is split over)")


def host_rows(sharding: NamedSharding, batch_size: int) -> slice:
    """The contiguous rows of a global batch held by this process's devices."""
    idx = sharding.addressable_devices_indices_map((batch_size,))
    starts = sorted({s[0].start or 0 for s in idx.values()})
    stops = sorted({s[0].stop if s[0].stop is not None else batch_size for s in idx.values()})
    lo, hi = starts[0], stops[-1]
    covered = sum(b - a for a, b in zip(starts, stops, strict=True))
    if covered != hi - lo:
        raise ValueError("this process's batch rows are not contiguous; use a mesh whose "
                         "data/fsdp axes follow process order")
    return slice(lo, hi)


def default_buckets(max_length: int) -> tuple[int, ...]:
    """Multiples of 16 up to 128, then of 64: padding per batch stays small (dynamic
    padding's saving) while only a handful of shapes ever compile."""
    steps = tuple(range(16, 129, 16)) + tuple(range(192, 1025, 64))
    return tuple(b for b in steps if b < max_length) + (max_length,)


def bucket(length: int, buckets: tuple[int, ...]) -> int:
    for b in buckets:
        if length <= b:
            return b
    return buckets[-1]


class Batcher:
    def __init__(self, features: dict[str, np.ndarray], batch_size: int, mesh,
                 buckets: tuple[int, ...]):
        self.features = features
        self.n = len(features["length"])
        self.batch_size = batch_size
        self.sharding = batch_sharding(mesh)
        self.rows = host_rows(self.sharding, batch_size)
        self.buckets = tuple(sorted(buckets))

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def position(self, step: int) -> dict[str, int]:
        return {"epoch": step // self.steps_per_epoch, "batch": step % self.steps_per_epoch}

    def train_indices(self, step: int, seed: int) -> np.ndarray:
        """Global example indices of train batch `step` (-1 = padding row)."""
        pos = self.position(step)
        order = np.random.default_rng([seed, pos["epoch"]]).permutation(self.n)
        idx = order[pos["batch"] * self.batch_size:(pos["batch"] + 1) * self.batch_size]
        return np.pad(idx, (0, self.batch_size - len(idx)), constant_values=-1)

    def train_batch(self, step: int, seed: int) -> dict[str, jax.Array]:
        return self.assemble(self.train_indices(step, seed))

    def eval_batches(self) -> Iterator[tuple[dict[str, jax.Array], np.ndarray]]:
        order = np.argsort(self.features["length"], kind="stable")
        for start in range(0, self.n, self.batch_size):
            idx = order[start:start + self.batch_size]
            idx = np.pad(idx, (0, self.batch_size - len(idx)), constant_values=-1)
            yield self.assemble(idx), idx

    def assemble(self, idx: np.ndarray) -> dict[str, jax.Array]:
        """Global arrays for the global batch `idx`; this process fills only its rows.

        Padding rows repeat example 0 (real tokens, so no all-masked attention rows) with
        weight 0. The bucket is computed from the whole global batch, identically everywhere.
        """
        valid = idx >= 0
        length = bucket(int(self.features["length"][idx[valid]].max()), self.buckets)
        local = idx[self.rows]
        take = np.where(local >= 0, local, 0)
        out = {}
        for k, v in self.features.items():
            if k == "length":
                continue
            x = v[take]
            if x.ndim >= 2 and x.shape[1] > length and k in SEQUENCE_FEATURES:
                x = x[:, :length]
            out[k] = x
        out["weights"] = (local >= 0).astype(np.float32)
        return {k: jax.make_array_from_process_local_data(
            self.sharding, v, (self.batch_size,) + v.shape[1:]) for k, v in out.items()}


    def tokens(self, idx: np.ndarray) -> int:
        """Real tokens in the global batch `idx` (for throughput)."""
        return int(self.features["length"][idx[idx >= 0]].sum())


def owned_shards(mesh, batch_size: int, num_shards: int) -> list[int]:
    """The data shards whose rows of the global batch live on this process's devices.

    The global batch is `num_shards` blocks of batch_size / num_shards rows, block g drawn
    from shard g only; a process owns the blocks inside its rows, so it reads only those
    shards, and the global batch is the same whatever the number of processes."""
    key = "config.data.shards"
    if num_shards < 1 or batch_size % num_shards:
        raise ValueError(f"{key}={num_shards} must be >= 1 and divide "
                         f"config.train.batch_size={batch_size}")
    rows = host_rows(batch_sharding(mesh), batch_size)
    block = batch_size // num_shards
    if rows.start % block or rows.stop % block:
        raise ValueError(f"{key}={num_shards}: each process holds {rows.stop - rows.start} rows "
                         f"of the global batch, not a whole number of shard blocks of {block}; "
                         f"use a multiple of the process count ({jax.process_count()})")
    return list(range(rows.start // block, rows.stop // block))


class ShardedBatcher(Batcher):
    """Train batches when each process holds only its own shards' rows (pretraining corpora).

    `features` are this process's rows, shard after shard (`shard_rows[g]` = (start, stop)
    for each owned shard g). Shard g fills rows [g*b, (g+1)*b) of every global batch
    (b = batch_size / num_shards), walking its own permutation per pass, drawn from
    (seed, g, pass); a position is a pure function of the step, so resume is exact. Rows are
    packed to max_length, so there is no length bucketing (every process would have to agree
    on the bucket).
    """

    def __init__(self, features, shard_rows: dict[int, tuple[int, int]], num_shards: int,
                 total_rows: int, batch_size: int, mesh):
        super().__init__(features, batch_size, mesh, buckets=(features["input_ids"].shape[1],))
        self.shard_rows, self.num_shards = shard_rows, num_shards
        self.block = batch_size // num_shards
        self.n = total_rows  # steps_per_epoch counts all processes' rows
        for g, (a, b) in shard_rows.items():
            if a == b:
                raise ValueError(f"data shard {g} of {num_shards} is empty: the corpus has too "
                                 "few documents; lower config.data.shards")

    def train_indices(self, step: int, seed: int) -> np.ndarray:
        """Global batch rows as indices into this process's features (-1: another process's
        row; padding never occurs, shards cycle)."""
        idx = np.full(self.batch_size, -1, np.int64)
        draws = step * self.block + np.arange(self.block)
        for g, (a, b) in self.shard_rows.items():
            n = b - a
            rows = np.empty(self.block, np.int64)
            for p in np.unique(draws // n):
                sel = draws // n == p
                rows[sel] = a + np.random.default_rng([seed, g, p]).permutation(n)[draws[sel] % n]
            idx[g * self.block:(g + 1) * self.block] = rows
        return idx

    def assemble(self, idx: np.ndarray) -> dict[str, jax.Array]:
        local = idx[self.rows]
        out = {k: v[local] for k, v in self.features.items() if k != "length"}
        out["weights"] = np.ones(len(local), np.float32)
        return {k: jax.make_array_from_process_local_data(
            self.sharding, v, (self.batch_size,) + v.shape[1:]) for k, v in out.items()}

    def tokens(self, idx: np.ndarray) -> int:
        """This process's tokens scaled to the global batch (the others are not read here)."""
        local = idx[self.rows]
        return int(self.features["length"][local].sum()) * self.batch_size // len(local)


# Features with a sequence axis that bucketing may cut (never labels of other shapes).
SEQUENCE_FEATURES = {"input_ids", "attention_mask", "token_type_ids", "labels",
                     "label_mask", "position_ids", "segment_ids", "word_start", "mlm_labels",
                     "mlm_weights"}


def gather(x: jax.Array) -> np.ndarray:
    """A global array as numpy on every process."""
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
