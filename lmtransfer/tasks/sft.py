"""Generative fine-tuning: the seed's L' = -sum log P(y | x) read as a language model.

Data (`config.data.source`):
  files  prompt/response pairs from TSV/CSV/JSONL (`data.prompt_column`, `data.response_column`)
  glue / tfds / files with `data.verbalizers`: labelled classification data; the response is
         the label's verbalizer (SST-2: "negative" / "positive") after `data.template`

A row is `prompt + separator + response + eos` (with the tokenizer's chat template when it
has one and `data.chat_template` allows it); the loss is on the response tokens (and eos)
only. Training rows are packed (segment ids: attention never crosses examples). Eval reports
response loss and perplexity; with verbalizers every label is scored by its likelihood and
the most likely one is the prediction (accuracy). `data.shots` = k puts k seeded training
examples in front of each eval prompt: with no training (eval mode on a fresh workdir) that
is the zero-/few-shot accuracy of any causal LM.
"""

from __future__ import annotations

import json
import logging
import math
import os

import jax.numpy as jnp
import numpy as np
import optax

from lmtransfer import paths, tokenization
from lmtransfer.data import tables
from lmtransfer.data.tables import DataError
from lmtransfer.errors import ConfigError
from lmtransfer.tasks.base import Split, Task, seeded_subset

log = logging.getLogger(__name__)


class SftTask(Task):
    head = "lm"
    num_labels = 0

    def __init__(self, config, tokenizer):
        from lmtransfer.tasks.classification import ClassificationTask

        self.data, self.tokenizer = config.data, tokenizer
        self.max_length = config.data.max_length
        self.verbalizers = tuple(config.data.verbalizers)
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"the tokenizer ({tokenizer.name_or_path}) has no eos token: a "
                              "response needs one to end")
        self.prefix, _ = tokenization.special_tokens(tokenizer)
        self.chat = self._use_chat(config.data.chat_template)
        # Labelled classification data is read by the classification task's readers.
        self.classes = ClassificationTask(config, tokenizer) if self.verbalizers else None
        if self.classes is not None:
            if self.classes.regression or len(self.verbalizers) != self.classes.num_labels:
                raise ValueError(
                    f"config.data.verbalizers has {len(self.verbalizers)} entries but the data "
                    f"has labels {self.classes.labels}: give one verbalizer per label, in order")
        self.main_metric = "accuracy" if self.verbalizers else "loss"
        self.greater_is_better = bool(self.verbalizers)
        self._cache: dict[str, Split] = {}

    def _use_chat(self, setting: str) -> bool:
        has = bool(getattr(self.tokenizer, "chat_template", None))
        if setting == "on" and not has:
            raise ConfigError(f"config.data.chat_template='on' but the tokenizer "
                              f"({self.tokenizer.name_or_path}) has no chat template")
        if setting not in ("auto", "on", "off"):
            raise ConfigError(f"config.data.chat_template={setting!r}; use auto, on or off")
        return has and setting != "off"

    def eval_splits(self):
        return self.classes.eval_splits() if self.classes else ("dev",)

    def test_splits(self):
        return ()

    # ------------------------------------------------------------------ data

    def _records(self, split: str) -> list[dict]:
        """dicts with id, prompt (str), responses (candidates), gold (index), where."""
        if self.classes is not None:
            out = []
            for e in self.classes._read(split):
                label = self.classes.labels.index(e["label"]) if e["label"] is not None else 0
                fields = {"text": e["text_a"], "text_a": e["text_a"], "text_b": e["text_b"] or ""}
                try:
                    prompt = self.data.template.format(**fields)
                except KeyError as k:
                    raise ConfigError(f"config.data.template names {k}; use {{text_a}}, "
                                      "{text_b} or {text}") from None
                out.append(dict(id=e["id"], prompt=prompt, responses=self.verbalizers,
                                gold=label, where=e["where"]))
            return out
        path = self.data.files.get(split)
        if not path:
            raise ConfigError(f"config.data.files.{split} is not set")
        rows = tables.read_table(path)
        prompts = tables.column(rows, self.data.prompt_column, path)
        responses = tables.column(rows, self.data.response_column, path)  # empty: an error
        return [dict(id=str(i), prompt=p, responses=(r,), gold=0, where=f"{path}:{row.line}")
                for i, (p, r, row) in enumerate(zip(prompts, responses, rows, strict=True))]

    def _shots(self, split: str, records: list[dict]) -> None:
        """Prefixes each prompt with k seeded training examples (prompt + gold response)."""
        k = self.data.shots
        if not k:
            return
        pool = self._records("train")
        if len(pool) <= k:
            raise ConfigError(f"config.data.shots={k} needs more than {k} training examples")
        rng = np.random.default_rng(self.data.shots_seed)
        for r in records:
            picks = rng.choice(len(pool), k, replace=False)
            demos = [pool[i]["prompt"] + self.data.separator + pool[i]["responses"][pool[i]["gold"]]
                     for i in picks]
            r["prompt"] = self.data.shot_separator.join(demos + [r["prompt"]])
        log.info("%s: %d-shot prompts (seed %d)", split, k, self.data.shots_seed)

    def _encode(self, record: dict, response: str) -> tuple[list[int], int, bool]:
        """(token ids, index of the first response token, whether the prompt was cut): the
        prompt's left end goes when the row is too long."""
        tok = self.tokenizer
        if self.chat:
            text = tok.apply_chat_template([{"role": "user", "content": record["prompt"]}],
                                           tokenize=False, add_generation_prompt=True)
            prompt = tok(text, add_special_tokens=False)["input_ids"]
            sep = ""
        else:
            prompt = list(self.prefix) + tok(record["prompt"], add_special_tokens=False)[
                "input_ids"]
            sep = self.data.separator
        answer = tok(sep + response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        room = self.max_length - len(answer)
        if room < 1:
            raise DataError(f"{record['where']}: the response {response!r} is {len(answer)} "
                            f"tokens with eos; it does not fit config.data.max_length="
                            f"{self.max_length} with a prompt")
        cut = len(prompt) > room
        if cut:
            prompt = prompt[len(prompt) - room:]
        return prompt + answer, len(prompt), cut

    def load(self, split: str) -> Split:
        if split in self._cache:
            return self._cache[split]
        records = seeded_subset(self._records(split), self.data.max_examples.get(split, 0),
                                split)
        if split != "train":
            self._shots(split, records)
        rows, examples, cut = [], [], 0
        for i, r in enumerate(records):
            candidates = r["responses"] if split != "train" else (r["responses"][r["gold"]],)
            for j, response in enumerate(candidates):
                ids, start, was_cut = self._encode(r, response)
                cut += was_cut and j == 0
                rows.append((ids, start))
                examples.append(dict(record=i, candidate=j,
                                     gold=int(split == "train" or j == r["gold"])))
        if cut:
            log.warning("%s: %d prompts were longer than config.data.max_length=%d allows with "
                        "their response; their beginnings were cut", split, cut, self.max_length)
        split_obj = (self._packed(split, rows, records) if split == "train" else
                     self._unpacked(split, rows, examples, records))
        self._cache[split] = split_obj
        return split_obj

    def _arrays(self, n):
        t = self.max_length
        return (np.full((n, t), self.tokenizer.pad_token_id or 0, np.int32),
                np.zeros((n, t), np.int32), np.zeros((n, t), np.int32),
                np.zeros((n, t), np.float32))

    def _packed(self, split, rows, records) -> Split:
        """Examples packed in order into rows of max_length (a new row when one is full)."""
        packs, current, used = [], [], 0
        for ids, start in rows:
            if used + len(ids) > self.max_length:
                packs.append(current)
                current, used = [], 0
            current.append((ids, start))
            used += len(ids)
        packs.append(current)
        ids_a, seg, pos, resp = self._arrays(len(packs))
        for r, pack in enumerate(packs):
            at = 0
            for k, (ids, start) in enumerate(pack, 1):
                ids_a[r, at:at + len(ids)] = ids
                seg[r, at:at + len(ids)] = k
                pos[r, at:at + len(ids)] = np.arange(len(ids))
                resp[r, at + start:at + len(ids)] = 1
                at += len(ids)
        log.info("%s: %d examples packed into %d rows of %d", split, len(rows), len(packs),
                 self.max_length)
        return self._split(split, ids_a, seg, pos, resp, [{}] * len(packs), records,
                           np.ones(len(packs), np.int32))

    def _unpacked(self, split, rows, examples, records) -> Split:
        ids_a, seg, pos, resp = self._arrays(len(rows))
        for r, (ids, start) in enumerate(rows):
            ids_a[r, :len(ids)], seg[r, :len(ids)] = ids, 1
            pos[r, :len(ids)] = np.arange(len(ids))
            resp[r, start:len(ids)] = 1
        gold = np.array([e["gold"] for e in examples], np.int32)
        return self._split(split, ids_a, seg, pos, resp, examples, records, gold)

    def _split(self, split, ids, seg, pos, resp, examples, records, gold):
        features = dict(input_ids=ids, segment_ids=seg, position_ids=pos, response_mask=resp,
                        gold=gold, length=(seg > 0).sum(1).astype(np.int32))
        return Split(split, features, examples, labelled=True, records=records)

    # ------------------------------------------------------------------ model side

    def _token_nll(self, outputs, batch):
        """Per-token response NLL and weights [B, T-1] (weight-0 rows give 0)."""
        seg, resp = batch["segment_ids"], batch["response_mask"]
        w = ((seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)).astype(jnp.float32) * resp[:, 1:]
        ce = optax.softmax_cross_entropy_with_integer_labels(outputs.logits[:, :-1],
                                                             batch["input_ids"][:, 1:])
        return ce, w * batch["weights"][:, None]

    def loss(self, outputs, batch):
        ce, w = self._token_nll(outputs, batch)
        w = w * batch["gold"][:, None]  # eval: the loss of the gold response only
        return jnp.sum(ce * w), jnp.sum(w)

    def predict(self, outputs, batch):
        ce, w = self._token_nll(outputs, batch)
        return {"nll": jnp.sum(ce * w, -1), "tokens": jnp.sum(w, -1)}

    # ------------------------------------------------------------------ host side

    def _scores(self, split, predictions) -> np.ndarray:
        """[records, candidates] log-likelihood of each candidate (mean per token when
        config.data.score='mean')."""
        n, c = len(split.records), len(self.verbalizers)
        nll = predictions["nll"]
        if self.data.score == "mean":
            nll = nll / np.maximum(predictions["tokens"], 1)
        scores = np.full((n, c), -np.inf)
        for row, e in enumerate(split.examples):
            scores[e["record"], e["candidate"]] = -nll[row]
        return scores

    def evaluate(self, split, predictions):
        gold = split.features["gold"].astype(bool)
        tokens = float(predictions["tokens"][gold].sum())
        loss = float(predictions["nll"][gold].sum()) / max(tokens, 1.0)
        out = {"response_loss": loss, "response_perplexity": math.exp(min(loss, 700.0)),
               "response_tokens": tokens}
        if self.verbalizers:
            pred = self._scores(split, predictions).argmax(-1)
            gold_label = np.array([r["gold"] for r in split.records])
            out["accuracy"] = 100.0 * float((pred == gold_label).mean())
        return out

    def write_predictions(self, split, predictions, out_dir):
        paths.makedirs(out_dir)
        path = os.path.join(out_dir, f"{split.name}.jsonl")
        scores = self._scores(split, predictions) if self.verbalizers else None
        with paths.open(path, "w") as f:
            for i, r in enumerate(split.records):
                row = {"id": r["id"], "where": r["where"]}
                if scores is None:
                    row["response_loss"] = round(float(predictions["nll"][i]) / max(
                        float(predictions["tokens"][i]), 1.0), 6)
                else:
                    row.update(gold=self.verbalizers[r["gold"]],
                               prediction=self.verbalizers[int(scores[i].argmax())],
                               scores=[round(float(s), 4) for s in scores[i]])
                f.write(json.dumps(row) + "\n")
        return [path]
