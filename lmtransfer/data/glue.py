"""The nine GLUE tasks: file layout, columns, labels, official metric, submission names.

Local files are read as the GLUE download script lays them out (`<dir>/<Task>/<split>.tsv`):
quotes are text (`csv.QUOTE_NONE`), MRPC starts with a BOM, CoLA train/dev have no header.
"""

from __future__ import annotations

import csv
import dataclasses
import os

from lmtransfer import paths
from lmtransfer.data import tables
from lmtransfer.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class GlueTask:
    dir: str  # directory name in the GLUE root
    text_a: str
    text_b: str | None
    label: str
    labels: tuple[str, ...] | None  # None: regression
    metric: str  # lmtransfer.metrics.classification_metrics kind
    dev: tuple[str, ...] = ("dev",)
    test: tuple[tuple[str, str], ...] = (("test", ""),)  # (split, submission file stem)
    header: tuple[str, ...] | None = None  # column names of header-less train/dev files
    test_id: str = "index"
    tfds: str = ""  # tfds builder name under glue/
    tfds_text: tuple[str, ...] = ()  # tfds feature names for text_a (, text_b)

    def submission_name(self, split: str) -> str:
        return dict(self.test).get(split) or self.dir


_BIN = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("CoLA", "sentence", None, "label", _BIN, "mcc",
                     header=("source", "label", "author_label", "sentence"),
                     tfds="cola", tfds_text=("sentence",)),
    "sst2": GlueTask("SST-2", "sentence", None, "label", _BIN, "acc", tfds="sst2",
                     tfds_text=("sentence",)),
    "mrpc": GlueTask("MRPC", "#1 String", "#2 String", "Quality", _BIN, "acc_f1", tfds="mrpc",
                     tfds_text=("sentence1", "sentence2")),
    "stsb": GlueTask("STS-B", "sentence1", "sentence2", "score", None, "pearson_spearman",
                     tfds="stsb", tfds_text=("sentence1", "sentence2")),
    "qqp": GlueTask("QQP", "question1", "question2", "is_duplicate", _BIN, "acc_f1",
                    test_id="id", tfds="qqp", tfds_text=("question1", "question2")),
    "mnli": GlueTask("MNLI", "sentence1", "sentence2", "gold_label",
                     ("contradiction", "entailment", "neutral"), "acc",
                     dev=("dev_matched", "dev_mismatched"),
                     test=(("test_matched", "MNLI-m"), ("test_mismatched", "MNLI-mm")),
                     tfds="mnli", tfds_text=("premise", "hypothesis")),
    "qnli": GlueTask("QNLI", "question", "sentence", "label", _NLI2, "acc", tfds="qnli",
                     tfds_text=("question", "sentence")),
    "rte": GlueTask("RTE", "sentence1", "sentence2", "label", _NLI2, "acc", tfds="rte",
                    tfds_text=("sentence1", "sentence2")),
    "wnli": GlueTask("WNLI", "sentence1", "sentence2", "label", _BIN, "acc", tfds="wnli",
                     tfds_text=("sentence1", "sentence2")),
}
# TFDS names its dev splits "validation"; its MNLI labels are ordered differently from GLUE's.
TFDS_SPLITS = {"dev": "validation", "dev_matched": "validation_matched",
               "dev_mismatched": "validation_mismatched", "test_matched": "test_matched",
               "test_mismatched": "test_mismatched", "train": "train", "test": "test"}
TFDS_LABELS = {"mnli": ("entailment", "neutral", "contradiction"),
               "qnli": _NLI2, "rte": _NLI2}


def get(name: str) -> GlueTask:
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise ConfigError(f"config.data.glue_task={name!r}; use one of {sorted(TASKS)}")
    return TASKS[key]


def read_split(root: str, task: GlueTask, split: str):
    """Rows of `<root>/<Task>/<split>.tsv` plus the file path."""
    path = os.path.join(root, task.dir, f"{split}.tsv")
    if not paths.exists(path):
        raise tables.DataError(f"{path}: file not found; set config.data.dir to the GLUE root "
                               f"(the directory that holds {task.dir}/)")
    is_test = split.startswith("test")
    columns = None if is_test or task.header is None else list(task.header)
    return tables.read_table(path, columns=columns, fmt="tsv", quoting=csv.QUOTE_NONE), path


def read_tfds(name: str, split: str, data_dir: str | None):
    """Examples of `glue/<name>` via `tfds.data_source` (ArrayRecord; no TensorFlow needed)."""
    import tensorflow_datasets as tfds
    import tensorflow_datasets.text.glue  # noqa: F401  (registers the glue builder)

    source = tfds.data_source(f"glue/{name}", split=TFDS_SPLITS.get(split, split),
                              data_dir=data_dir or None, download=False)
    return [source[i] for i in range(len(source))]
