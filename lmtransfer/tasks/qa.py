"""Extractive question answering: SQuAD v1.1 / v2.0.

Sources (`config.data.source`):
  files  SQuAD JSON: `config.data.dir` + `config.data.files.<split>`, optionally only the
         articles `config.data.articles.<split>` ("a:b", e.g. "0:40")
  tfds   `squad/<config.data.tfds_version>` through `tfds.data_source`

A question and its context become one or more windows of max_length tokens (question first,
cut to `max_query_length` tokens, logged); long contexts slide with `doc_stride` tokens of
overlap between windows (the HF convention). Training targets are the answer's token span in
the window, or [CLS] when the window doesn't contain it (and for v2.0 unanswerable questions).
Decoding takes the n_best start and end tokens of every window, keeps spans inside the
context and at most `max_answer_length` tokens long, and answers with the best-scoring span
over all windows. v2.0: the null score is [CLS]'s start + end (lowest over windows); the
answer is "" when null - best span > `null_threshold`, and the threshold that maximises dev
EM/F1 is reported (best_exact_match/best_f1 and their thresholds), as the official script does.
"""

from __future__ import annotations

import json
import logging
import os

import jax.numpy as jnp
import numpy as np
import optax

from lmtransfer import metrics as metrics_lib
from lmtransfer import paths
from lmtransfer.data import squad
from lmtransfer.data.tables import DataError
from lmtransfer.errors import ConfigError
from lmtransfer.tasks.base import Split, Task, check_source, data_file, seeded_subset

log = logging.getLogger(__name__)

NEG = -1e9  # logits of positions a length bucket cut off


class QaTask(Task):
    head = "qa"
    num_labels = 2
    main_metric = "f1"
    sequence_outputs = {"start_logits": NEG, "end_logits": NEG}

    def __init__(self, config, tokenizer):
        self.data = config.data
        self.tokenizer = tokenizer
        self.max_length = config.data.max_length
        check_source(self.data, ("files", "tfds"))
        if not 0 <= self.data.doc_stride < self.max_length // 2:
            raise ConfigError(f"config.data.doc_stride={self.data.doc_stride} must be in "
                              f"[0, max_length / 2)")
        self._cache: dict[str, Split] = {}
        self.versions: dict[str, str] = {}

    def eval_splits(self):
        return ("dev",)

    def test_splits(self):
        return ("test",)

    def _read(self, split: str) -> list[dict]:
        if self.data.source == "tfds":
            questions, version = squad.read_tfds(split, self.data.tfds_data_dir,
                                                 self.data.tfds_version)
        else:
            questions, version = squad.read_squad(
                data_file(self.data, split), self.data.articles.get(split, ""),
                key=f"config.data.articles.{split}")
        self.versions[split] = version
        return questions

    def load(self, split: str) -> Split:
        if split not in self._cache:
            questions = seeded_subset(self._read(split), self.data.max_examples.get(split, 0),
                                      split)
            labelled = all(q["answers"] or q["impossible"] for q in questions)
            if split == "train" and not labelled:
                bad = next(q for q in questions if not (q["answers"] or q["impossible"]))
                raise DataError(f"{bad['where']}: a training question without answers that "
                                "is not marked is_impossible")
            self._cache[split] = self._featurize(split, questions, labelled)
        return self._cache[split]

    # ------------------------------------------------------------------ features

    def _cut_questions(self, split, questions) -> list[str]:
        tok, limit = self.tokenizer, self.data.max_query_length
        enc = tok([q["question"] for q in questions], add_special_tokens=False,
                  return_offsets_mapping=True)
        out, cut = [], 0
        for q, offsets in zip(questions, enc["offset_mapping"], strict=True):
            if len(offsets) > limit:
                out.append(q["question"][:offsets[limit][0]])
                cut += 1
            else:
                out.append(q["question"])
        if cut:
            log.warning("%s: %d questions longer than max_query_length=%d tokens were cut",
                        split, cut, limit)
        return out

    def _featurize(self, split, questions, labelled) -> Split:
        enc = self.tokenizer(
            self._cut_questions(split, questions), [q["context"] for q in questions],
            truncation="only_second", max_length=self.max_length, stride=self.data.doc_stride,
            return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length",
            return_token_type_ids=True)
        n = len(enc["input_ids"])
        starts, ends = np.zeros(n, np.int32), np.zeros(n, np.int32)
        examples = []
        for i in range(n):
            qi = enc["overflow_to_sample_mapping"][i]
            in_context = np.array([s == 1 for s in enc.sequence_ids(i)])
            offsets = np.asarray(enc["offset_mapping"][i], np.int32)
            offsets[~in_context] = -1
            examples.append({"record": qi, "offsets": offsets})
            q = questions[qi]
            if labelled and q["answers"] and not q["impossible"]:
                starts[i], ends[i] = _token_span(offsets, q["starts"][0],
                                                 q["starts"][0] + len(q["answers"][0]))
        windows = n / max(len(questions), 1)
        log.info("%s: %d questions -> %d windows (%.2f per question)", split, len(questions),
                 n, windows)
        mask = np.asarray(enc["attention_mask"], np.int32)
        features = dict(input_ids=np.asarray(enc["input_ids"], np.int32), attention_mask=mask,
                        token_type_ids=np.asarray(enc["token_type_ids"], np.int32),
                        length=mask.sum(1).astype(np.int32), start_positions=starts,
                        end_positions=ends)
        return Split(split, features, examples, labelled, records=questions)

    # ------------------------------------------------------------------ model side

    def loss(self, outputs, batch):
        ce = (optax.softmax_cross_entropy_with_integer_labels(outputs.start_logits,
                                                              batch["start_positions"])
              + optax.softmax_cross_entropy_with_integer_labels(outputs.end_logits,
                                                                batch["end_positions"])) / 2
        w = batch["weights"]
        return jnp.sum(ce * w), jnp.sum(w)

    def predict(self, outputs, batch):
        return {"start_logits": outputs.start_logits, "end_logits": outputs.end_logits}

    # ------------------------------------------------------------------ host side

    def decode(self, split: Split, predictions) -> dict[str, dict]:
        """question id -> {"text", "score", "null_odds"} from the windows' logits."""
        d = self.data
        best = [{"text": "", "score": -np.inf, "null": np.inf} for _ in split.records]
        for row, e in enumerate(split.examples):
            q, b = split.records[e["record"]], best[e["record"]]
            sl, el = predictions["start_logits"][row], predictions["end_logits"][row]
            b["null"] = min(b["null"], float(sl[0] + el[0]))
            ctx = np.flatnonzero(e["offsets"][:, 0] >= 0)
            if not len(ctx):
                continue
            top_s = ctx[np.argsort(-sl[ctx], kind="stable")[:d.n_best]]
            top_e = ctx[np.argsort(-el[ctx], kind="stable")[:d.n_best]]
            span = top_e[None, :] - top_s[:, None]
            score = sl[top_s][:, None] + el[top_e][None, :]
            score = np.where((span >= 0) & (span < d.max_answer_length), score, -np.inf)
            i, j = np.unravel_index(np.argmax(score), score.shape)
            if score[i, j] > b["score"]:
                s, t = e["offsets"][top_s[i]][0], e["offsets"][top_e[j]][1]
                # Byte-level BPE without trim_offsets (GPT-2, ModernBERT) and SentencePiece
                # ("▁word", a lone "▁") offsets include the space before a word.
                b.update(text=q["context"][s:t].strip(), score=float(score[i, j]))
        out, v2 = {}, self.versions.get(split.name) == "2.0"
        for q, b in zip(split.records, best, strict=True):
            odds = b["null"] - b["score"]
            text = "" if v2 and odds > d.null_threshold else b["text"]
            out[q["id"]] = {"text": text, "best_span": b["text"], "score": b["score"],
                            "null_odds": odds}
        return out

    def evaluate(self, split, predictions):
        decoded = self.decode(split, predictions)
        version = self.versions.get(split.name, "1.1")
        golds = {q["id"]: q["answers"] for q in split.records}
        result = metrics_lib.squad_scores(golds, {k: v["text"] for k, v in decoded.items()},
                                          version)
        result["questions"] = len(golds)
        if version == "2.0":
            result.update(metrics_lib.best_null_threshold(
                golds, {k: v["best_span"] for k, v in decoded.items()},
                {k: v["null_odds"] for k, v in decoded.items()}))
        return result

    def write_predictions(self, split, predictions, out_dir):
        """`<split>.predictions.json` in the official format (id -> answer text), v2.0's
        `<split>.null_odds.json`, and `<split>.jsonl` with gold answers and scores."""
        paths.makedirs(out_dir)
        decoded = self.decode(split, predictions)
        files = [os.path.join(out_dir, f"{split.name}.{x}")
                 for x in ("predictions.json", "jsonl")]
        with paths.open(files[0], "w") as f:
            json.dump({k: v["text"] for k, v in decoded.items()}, f, ensure_ascii=False)
        with paths.open(files[1], "w") as f:
            for q in split.records:
                p = decoded[q["id"]]
                f.write(json.dumps({"id": q["id"], "question": q["question"],
                                    "gold": q["answers"], "prediction": p["text"],
                                    "score": p["score"], "null_odds": p["null_odds"]},
                                   ensure_ascii=False) + "\n")
        if self.versions.get(split.name) == "2.0":
            files.append(os.path.join(out_dir, f"{split.name}.null_odds.json"))
            with paths.open(files[-1], "w") as f:
                json.dump({k: v["null_odds"] for k, v in decoded.items()}, f)
        return files


def _token_span(offsets: np.ndarray, start_char: int, end_char: int) -> tuple[int, int]:
    """Token indices of the characters [start_char, end_char) within the window's context
    tokens (offsets -1 outside the context); (0, 0) = [CLS] when the window lacks them."""
    ctx = np.flatnonzero(offsets[:, 0] >= 0)
    if not len(ctx) or offsets[ctx[0], 0] > start_char or offsets[ctx[-1], 1] < end_char:
        return 0, 0
    s = ctx[np.flatnonzero(offsets[ctx, 1] > start_char)[0]]
    e = ctx[np.flatnonzero(offsets[ctx, 0] < end_char)[-1]]
    return int(s), int(e)
