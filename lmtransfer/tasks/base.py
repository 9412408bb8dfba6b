"""The task plug-in interface: everything the one training loop needs to know about a task.

A task turns its data into fixed-shape numpy features, names its head, and defines the loss,
the per-example predictions, the metrics and how predictions are written. The loop knows
nothing else about it.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
import os
from typing import Any

import numpy as np

from lmtransfer.errors import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Split:
    """One featurized split. `features` are numpy arrays with a leading example axis; they
    include `input_ids`, `attention_mask`, `token_type_ids` ([n, max_length]) and `length`
    ([n], real tokens, used for bucketing). `examples` has one entry per feature row with
    what postprocessing needs; tasks that cut one record (a sentence, a question) into several
    windows keep the records in `records` and map windows back to them."""

    name: str
    features: dict[str, np.ndarray]
    examples: list[dict[str, Any]]
    labelled: bool = True
    records: list[Any] | None = None
    # Pretraining train splits are read from a token store, only this process's shards:
    # shard -> its rows (lmtransfer.data.corpus.ShardRows), the shard count and all
    # processes' rows; `features` is then empty.
    shards: dict[int, Any] | None = None
    num_shards: int = 1
    total_rows: int = 0

    def __len__(self) -> int:
        return self.total_rows if self.shards is not None else len(self.features["length"])


class Task(abc.ABC):
    head: str  # a lmtransfer.models.HEADS entry
    num_labels: int
    main_metric: str  # key in `evaluate`'s result that picks the best checkpoint
    greater_is_better: bool = True
    # Prediction outputs with a sequence axis ([B, T, ...]) -> the value that pads them back
    # to max_length when a batch was cut to a shorter length bucket.
    sequence_outputs: dict[str, Any] = {}

    @property
    def id2label(self) -> dict[int, str] | None:
        return None

    def prepare(self, batch, rng):
        """Transforms a train batch on the device before the forward pass (jit-traceable;
        e.g. MLM masking drawn from `rng`, which is a function of seed and step)."""
        return batch

    def decoded_per_row(self, length: int) -> int | None:
        """Positions per row an MLM decoder runs on, for FLOP accounting (None: all)."""
        return None

    @abc.abstractmethod
    def load(self, split: str) -> Split:
        """Reads and featurizes `split` ('train', a dev split or a test split)."""

    @abc.abstractmethod
    def eval_splits(self) -> tuple[str, ...]:
        """Labelled splits evaluated during training; the first gives the main metric."""

    @abc.abstractmethod
    def test_splits(self) -> tuple[str, ...]:
        """Unlabelled splits for `predict`."""

    @abc.abstractmethod
    def loss(self, outputs, batch) -> tuple[Any, Any]:
        """(sum of per-example or per-token losses, sum of their weights); jit-traceable.
        `batch["weights"]` is 0 for padding examples."""

    @abc.abstractmethod
    def predict(self, outputs, batch) -> dict[str, Any]:
        """Per-example prediction arrays (leading batch axis); jit-traceable."""

    @abc.abstractmethod
    def evaluate(self, split: Split, predictions: dict[str, np.ndarray]) -> dict[str, float]:
        """Metrics of a labelled split; `predictions` are in split order."""

    @abc.abstractmethod
    def write_predictions(self, split: Split, predictions: dict[str, np.ndarray],
                          out_dir: str) -> list[str]:
        """Writes `predictions/<split>.jsonl` (and task formats); returns the files written."""


def check_source(data, allowed: tuple[str, ...]) -> None:
    if data.source not in allowed:
        raise ConfigError(f"config.data.source={data.source!r}; use one of {', '.join(allowed)}")


def data_file(data, split: str) -> str:
    """`config.data.dir` / `config.data.files.<split>`."""
    name = data.files.get(split)
    if not name:
        raise ConfigError(f"config.data.files.{split} is not set")
    return os.path.join(data.dir, name)


def seeded_subset(items: list, limit: int, split: str) -> list:
    """A fixed random `limit` of `items` in their original order (`config.data.max_examples`);
    all of them when `limit` is 0 or not smaller."""
    if not limit or limit >= len(items):
        return items
    log.info("%s: using a seeded random %d of %d (config.data.max_examples.%s)",
             split, limit, len(items), split)
    keep = np.sort(np.random.default_rng(0).choice(len(items), limit, replace=False))
    return [items[i] for i in keep]
