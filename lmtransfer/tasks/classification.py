"""Sequence classification and regression: the nine GLUE tasks and any labelled table.

Sources (`config.data.source`):
  glue   local GLUE root in the original layout (`config.data.dir`, `config.data.glue_task`)
  tfds   `glue/<task>` through `tfds.data_source`
  files  any TSV/CSV/JSONL (`config.data.files.<split>`) with named text/pair/label columns;
         labels are discovered from the training file (`config.data.labels` to fix them)
  vader  the VADER sentiment lexicon shipped in the vaderSentiment wheel (the quickstart)
"""

from __future__ import annotations

import json
import logging
import os

import jax.numpy as jnp
import numpy as np
import optax

from lmtransfer import metrics as metrics_lib
from lmtransfer import paths, tokenization
from lmtransfer.data import glue, tables, vader
from lmtransfer.errors import ConfigError
from lmtransfer.tasks.base import Split, Task, seeded_subset

log = logging.getLogger(__name__)


class ClassificationTask(Task):
    def __init__(self, config, tokenizer):
        self.data = config.data
        self.tokenizer = tokenizer
        self.max_length = config.data.max_length
        source = config.data.source
        if source not in ("glue", "tfds", "files", "vader"):
            raise ConfigError(f"config.data.source={source!r}; use glue, tfds, files or vader")
        self.source = source
        self.glue = glue.get(config.data.glue_task) if source in ("glue", "tfds") else None
        if self.glue is not None:
            labels, self.metric = self.glue.labels, self.glue.metric
            self.regression = labels is None
        elif source == "vader":
            labels, self.metric, self.regression = vader.LABELS, "acc", False
        else:
            self.regression = bool(config.data.regression)
            labels = tuple(config.data.labels) or None
            self.metric = config.data.metric or ("pearson_spearman" if self.regression else "acc")
        self.head = "classification"
        self._cache: dict[str, Split] = {}
        self._raw: dict[str, list[dict]] = {}
        if not self.regression and labels is None:
            labels = self._discover_labels()
        self.labels = None if self.regression else tuple(labels)
        self.num_labels = 1 if self.regression else len(self.labels)
        self.main_metric = metrics_lib.MAIN_METRIC[self.metric]

    # ------------------------------------------------------------------ data

    @property
    def id2label(self):
        return None if self.regression else dict(enumerate(self.labels))

    def eval_splits(self):
        if self.glue is not None:
            return self.glue.dev
        return ("dev",)

    def test_splits(self):
        if self.glue is not None:
            return tuple(s for s, _ in self.glue.test)
        return ("test",)

    def _discover_labels(self) -> tuple[str, ...]:
        examples = self._read("train")
        labels = sorted({e["label"] for e in examples})
        log.info("labels discovered from the training data: %s", labels)
        return tuple(labels)

    def _read(self, split: str) -> list[dict]:
        if split not in self._raw:
            self._raw[split] = self._read_uncached(split)
        return self._raw[split]

    def _read_uncached(self, split: str) -> list[dict]:
        """Raw examples: dicts with id, text_a, text_b (or None), label (str/float/None),
        where (file:line for error messages)."""
        if self.source == "vader":
            return vader.examples(split, seed=self.data.vader_seed)
        if self.source == "tfds":
            return self._read_tfds(split)
        if self.source == "glue":
            rows, path = glue.read_split(self.data.dir, self.glue, split)
            a, b, label = self.glue.text_a, self.glue.text_b, self.glue.label
            id_col = self.glue.test_id if split.startswith("test") else None
        else:
            path = self.data.files.get(split)
            if not path:
                raise ConfigError(f"config.data.files.{split} is not set")
            rows = tables.read_table(path)
            a, b, label = self.data.text_column, self.data.text_pair_column, self.data.label_column
            id_col = self.data.id_column or None
        labelled = not split.startswith("test") or (label in rows[0].fields)
        texts_a = tables.column(rows, a, path)
        texts_b = tables.column(rows, b, path) if b else [None] * len(rows)
        gold = tables.column(rows, label, path) if labelled else [None] * len(rows)
        ids = tables.column(rows, id_col, path) if id_col else [str(i) for i in range(len(rows))]
        return [dict(id=i, text_a=x, text_b=y, label=g, where=f"{path}:{r.line}")
                for i, x, y, g, r in zip(ids, texts_a, texts_b, gold, rows, strict=True)]

    def _read_tfds(self, split):
        names = glue.TFDS_LABELS.get(self.glue.tfds, self.glue.labels)
        out = []
        for i, ex in enumerate(glue.read_tfds(self.glue.tfds, split, self.data.tfds_data_dir)):
            text = [_str(ex[f]) for f in self.glue.tfds_text]
            raw = ex["label"].item() if hasattr(ex["label"], "item") else ex["label"]
            if self.glue.labels is None:
                label = float(raw)
            else:
                label = None if raw < 0 else names[int(raw)]
            idx = ex["idx"].item() if hasattr(ex.get("idx", None), "item") else ex.get("idx", i)
            out.append(dict(id=str(idx), text_a=text[0], text_b=text[1] if len(text) > 1 else None,
                            label=label, where=f"tfds glue/{self.glue.tfds}[{split}][{i}]"))
        if not out:
            raise tables.DataError(f"tfds glue/{self.glue.tfds} split {split!r} is empty")
        return out

    def load(self, split: str) -> Split:
        if split in self._cache:
            return self._cache[split]
        examples = seeded_subset(self._read(split), self.data.max_examples.get(split, 0), split)
        labelled = all(e["label"] is not None for e in examples)
        pairs = [e["text_b"] for e in examples]
        enc = tokenization.encode(self.tokenizer, [e["text_a"] for e in examples],
                                  pairs if pairs[0] is not None else None,
                                  max_length=self.max_length, what=f"{split} examples")
        features = dict(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                        token_type_ids=enc.token_type_ids,
                        length=enc.attention_mask.sum(1).astype(np.int32))
        # Unlabelled (test) splits get placeholder labels so every split has one layout;
        # `Split.labelled` keeps them out of losses and metrics.
        features["label"] = (self._encode_labels(examples) if labelled else
                             np.zeros(len(examples), np.float32 if self.regression else np.int32))
        self._cache[split] = Split(split, features, examples, labelled)
        return self._cache[split]

    def _encode_labels(self, examples) -> np.ndarray:
        if self.regression:
            out = []
            for e in examples:
                try:
                    out.append(float(e["label"]))
                except ValueError:
                    raise tables.DataError(f"{e['where']}: label {e['label']!r} is not a "
                                           "number (regression task)") from None
            return np.asarray(out, np.float32)
        index = {name: i for i, name in enumerate(self.labels)}
        out = []
        for e in examples:
            if e["label"] not in index:
                raise tables.DataError(f"{e['where']}: label {e['label']!r} is not in the label "
                                       f"set {list(self.labels)}")
            out.append(index[e["label"]])
        return np.asarray(out, np.int32)

    # ------------------------------------------------------------------ model side

    def loss(self, outputs, batch):
        w = batch["weights"]
        if self.regression:
            per_example = (outputs.logits[:, 0] - batch["label"]) ** 2
        else:
            per_example = optax.softmax_cross_entropy_with_integer_labels(
                outputs.logits, batch["label"])
        return jnp.sum(per_example * w), jnp.sum(w)

    def predict(self, outputs, batch):
        if self.regression:
            return {"score": outputs.logits[:, 0]}
        return {"logits": outputs.logits, "pred": jnp.argmax(outputs.logits, -1)}

    # ------------------------------------------------------------------ host side

    def evaluate(self, split, predictions):
        gold = split.features["label"]
        pred = predictions["score"] if self.regression else predictions["pred"]
        return metrics_lib.classification_metrics(self.metric, gold, pred)

    def _label(self, p):
        return float(p) if self.regression else self.labels[int(p)]

    def write_predictions(self, split, predictions, out_dir):
        paths.makedirs(out_dir)
        path = os.path.join(out_dir, f"{split.name}.jsonl")
        pred = predictions["score"] if self.regression else predictions["pred"]
        with paths.open(path, "w") as f:
            for i, e in enumerate(split.examples):
                row = {"id": e["id"], "gold": e["label"], "prediction": self._label(pred[i])}
                if self.regression:
                    row["score"] = float(pred[i])
                else:
                    row["logits"] = [round(float(x), 6) for x in predictions["logits"][i]]
                f.write(json.dumps(row) + "\n")
        files = [path]
        if self.glue is not None and split.name.startswith("test"):
            files.append(self._write_glue_submission(split, pred, out_dir))
        return files

    def _write_glue_submission(self, split, pred, out_dir):
        """`<TASK>.tsv` as the GLUE server expects: `index<TAB>prediction`."""
        path = os.path.join(out_dir, "glue", f"{self.glue.submission_name(split.name)}.tsv")
        paths.makedirs(os.path.dirname(path))
        with paths.open(path, "w") as f:
            f.write("index\tprediction\n")
            for e, p in zip(split.examples, pred, strict=True):
                value = f"{min(max(float(p), 0.0), 5.0):.3f}" if self.regression else self._label(p)
                f.write(f"{e['id']}\t{value}\n")
        return path


def _str(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)
