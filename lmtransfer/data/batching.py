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
import queue
import threading
import time
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from lmtransfer.data import bucket_plan, shuffle
from lmtransfer.errors import ConfigError

BATCH_AXES = ("data", "fsdp")


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def check_batch_size(batch_size: int, mesh, key: str) -> None:
    shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if batch_size % shards:
        raise ConfigError(f"{key}={batch_size} must be divisible by data x fsdp = {shards} "
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


def fixed_buckets(data) -> tuple[int, ...]:
    """`data.buckets` (sorted), or the default multiples of 16. A set that stops short of
    data.max_length would cut longer rows, so it is refused."""
    if not tuple(data.buckets):
        return default_buckets(data.max_length)
    buckets = tuple(sorted(data.buckets))
    if buckets[0] < 1 or buckets[-1] < data.max_length:
        raise ConfigError(f"config.data.buckets={buckets}: lengths must be >= 1 and the largest "
                          f">= config.data.max_length={data.max_length}, or rows longer than "
                          "it would be cut; add max_length (or leave buckets=() to plan them)")
    return buckets


def bucket(length: int, buckets: tuple[int, ...]) -> int:
    for b in buckets:
        if length <= b:
            return b
    return buckets[-1]


class _Batches:
    """What both batchers share: the global batch's sharding, this process's rows of it, the
    position of a step, and a prefetching iterator over train steps."""

    def __init__(self, batch_size: int, mesh):
        self.batch_size = batch_size
        self.sharding = batch_sharding(mesh)
        self.rows = host_rows(self.sharding, batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def position(self, step: int) -> dict[str, int]:
        return {"epoch": step // self.steps_per_epoch, "batch": step % self.steps_per_epoch}

    def lengths_ahead(self, start: int, stop: int, seed: int) -> list[int]:
        """Sequence lengths of train steps [start, stop) worth compiling ahead, in order of
        first use: none for rows of one length (the first step compiles it)."""
        return []

    def globalize(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """Global arrays from this process's rows."""
        return {k: jax.make_array_from_process_local_data(
            self.sharding, v, (self.batch_size,) + v.shape[1:]) for k, v in local.items()}

    def assemble(self, idx: np.ndarray) -> dict[str, jax.Array]:
        return self.globalize(self.host_batch(idx))

    def train_batch(self, step: int, seed: int) -> dict[str, jax.Array]:
        return self.assemble(self.train_indices(step, seed))

    def prefetch(self, start: int, stop: int, seed: int, depth: int = 2):
        """Yields (idx, this process's numpy rows, seconds waited) for train steps
        [start, stop); a background thread reads up to `depth` steps ahead, so reading from
        disk overlaps the device's step. The batch of a step does not depend on the prefetch."""
        q: queue.Queue = queue.Queue(maxsize=depth)
        stop_event = threading.Event()

        def work():
            try:
                for step in range(start, stop):
                    idx = self.train_indices(step, seed)
                    item = (idx, self.host_batch(idx))
                    while not stop_event.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop_event.is_set():
                        return
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                q.put(e)

        thread = threading.Thread(target=work, name="lmtransfer-prefetch", daemon=True)
        thread.start()
        try:
            for _ in range(start, stop):
                t = time.perf_counter()
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                yield (*item, time.perf_counter() - t)
        finally:
            stop_event.set()
            thread.join(timeout=5)


class Batcher(_Batches):
    """Batches of an in-memory featurized split (fine-tuning tasks, eval)."""

    def __init__(self, features: dict[str, np.ndarray], batch_size: int, mesh,
                 buckets: tuple[int, ...]):
        super().__init__(batch_size, mesh)
        self.features = features
        self.n = len(features["length"])
        self.buckets = tuple(sorted(buckets))

    def train_indices(self, step: int, seed: int) -> np.ndarray:
        """Global example indices of train batch `step` (-1 = padding row)."""
        pos = self.position(step)
        order = np.random.default_rng([seed, pos["epoch"]]).permutation(self.n)
        idx = order[pos["batch"] * self.batch_size:(pos["batch"] + 1) * self.batch_size]
        return np.pad(idx, (0, self.batch_size - len(idx)), constant_values=-1)

    def step_longest(self, start: int, stop: int, seed: int, max_epochs: int = 10) -> np.ndarray:
        """The longest row (real tokens) of each train step [start, stop), read from at most
        `max_epochs` epochs (later epochs are permutations of the same rows)."""
        spe, out = self.steps_per_epoch, []
        for epoch in range(start // spe, min((stop - 1) // spe + 1, start // spe + max_epochs)):
            order = np.random.default_rng([seed, epoch]).permutation(self.n)
            rows = np.zeros(spe * self.batch_size, np.int64)
            rows[:self.n] = self.features["length"][order]
            longest = rows.reshape(spe, self.batch_size).max(1)
            out.append(longest[max(start - epoch * spe, 0):min(stop - epoch * spe, spe)])
        return np.concatenate(out) if out else np.zeros(0, np.int64)

    def lengths_ahead(self, start: int, stop: int, seed: int, max_epochs: int = 10) -> list[int]:
        """The length buckets of train steps [start, stop) in the order steps first use them
        (what host_batch will cut them to), read from at most `max_epochs` epochs."""
        picked = bucket_plan.padded(self.step_longest(start, stop, seed, max_epochs),
                                    self.buckets)
        return list(dict.fromkeys(int(b) for b in picked))

    def eval_batches(self) -> Iterator[tuple[dict[str, jax.Array], np.ndarray]]:
        order = np.argsort(self.features["length"], kind="stable")
        for start in range(0, self.n, self.batch_size):
            idx = order[start:start + self.batch_size]
            idx = np.pad(idx, (0, self.batch_size - len(idx)), constant_values=-1)
            yield self.assemble(idx), idx

    def host_batch(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        """This process's rows of the global batch `idx`, as numpy.

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
        return out

    def tokens(self, idx: np.ndarray, local=None) -> int:
        """Real tokens in the global batch `idx` (for throughput)."""
        return int(self.features["length"][idx[idx >= 0]].sum())


def owned_shards(mesh, batch_size: int, num_shards: int) -> list[int]:
    """The data shards whose rows of the global batch live on this process's devices.

    The global batch is `num_shards` blocks of batch_size / num_shards rows, block g drawn
    from shard g only; a process owns the blocks inside its rows, so it reads only those
    shards, and the global batch is the same whatever the number of processes."""
    key = "config.data.shards"
    if num_shards < 1 or batch_size % num_shards:
        raise ConfigError(f"{key}={num_shards} must be >= 1 and divide "
                          f"config.train.batch_size={batch_size}")
    rows = host_rows(batch_sharding(mesh), batch_size)
    block = batch_size // num_shards
    if rows.start % block or rows.stop % block:
        raise ConfigError(f"{key}={num_shards}: each process holds {rows.stop - rows.start} rows "
                          f"of the global batch, not a whole number of shard blocks of {block}; "
                          f"use a multiple of the process count ({jax.process_count()})")
    return list(range(rows.start // block, rows.stop // block))


class StoreBatcher(_Batches):
    """Train batches of a token store when each process reads only its own shards.

    `shards` maps each shard g this process owns to its rows (lmtransfer.data.corpus.ShardRows,
    cut from disk on demand). Shard g fills rows [g*b, (g+1)*b) of every global batch
    (b = batch_size / num_shards), walking its rows in a fresh permutation per pass over the
    shard, drawn from (seed, g, pass) in O(1) memory (lmtransfer.data.shuffle): every row is
    visited once per pass, and a step's rows are a pure function of (seed, step), so resume
    is exact and the batch is the same for any number of processes. Rows are packed to
    max_length, so there is no length bucketing (every process would have to agree on it).
    """

    def __init__(self, shards: dict, num_shards: int, total_rows: int, batch_size: int, mesh):
        super().__init__(batch_size, mesh)
        self.shards, self.num_shards = shards, num_shards
        self.block = batch_size // num_shards
        self.n = total_rows  # steps_per_epoch counts all processes' rows
        for g, rows in shards.items():
            if not len(rows):
                raise ValueError(f"data shard {g} of {num_shards} is empty: the corpus has too "
                                 "few documents; lower config.data.shards")

    def train_indices(self, step: int, seed: int) -> np.ndarray:
        """Row numbers within each shard's block of the global batch (-1: another process's
        shard; padding never occurs, shards cycle)."""
        idx = np.full(self.batch_size, -1, np.int64)
        draws = step * self.block + np.arange(self.block)
        for g, rows in self.shards.items():
            n = len(rows)
            out = np.empty(self.block, np.int64)
            for p in np.unique(draws // n):
                sel = draws // n == p
                out[sel] = shuffle.permute(draws[sel] % n, n, (seed, g, p))
            idx[g * self.block:(g + 1) * self.block] = out
        return idx

    def host_batch(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        parts = []
        for a in range(self.rows.start, self.rows.stop, self.block):
            parts.append(self.shards[a // self.block].read(idx[a:a + self.block]))
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        out["weights"] = np.ones(self.rows.stop - self.rows.start, np.float32)
        return out

    def globalize(self, local):
        return super().globalize({k: v for k, v in local.items() if k != "length"})

    def tokens(self, idx: np.ndarray, local) -> int:
        """This process's tokens scaled to the global batch (the others are not read here)."""
        return int(local["length"].sum()) * self.batch_size // len(local["length"])


# Features with a sequence axis that bucketing may cut (never labels of other shapes).
SEQUENCE_FEATURES = {"input_ids", "attention_mask", "token_type_ids", "labels",
                     "label_mask", "position_ids", "segment_ids", "word_start", "mlm_labels",
                     "mlm_weights", "response_mask"}


def gather(x: jax.Array) -> np.ndarray:
    """A global array as numpy on every process."""
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
