"""Token classification (NER): CoNLL-2003 and any CoNLL-style column files.

Sources (`config.data.source`):
  files  `config.data.dir` + `config.data.files.<split>` (train.txt / dev.txt / test.txt by
         default; e.g. eng.train / eng.testa / eng.testb for the original release), tag column
         `config.data.tag_column` (last by default); labels discovered from the training file
  tfds   `conll2003` through `tfds.data_source`

Words are tokenized into sub-words (in their mid-sentence form: byte-level BPE puts a space
before each); the word's label sits on its first sub-word and the other sub-words are left out
of the loss (`config.data.label_all_subwords=True` labels them too, with B-X continued as
I-X). A word is always predicted from its first sub-word. A word that tokenizes to nothing is
predicted "O" (counted and logged). A sentence longer than max_length
is cut into consecutive windows at word boundaries, so every word is predicted exactly once.
Metrics are entity-level (seqeval; conlleval-compatible by default, `config.data.entity_mode=
strict` with `config.data.tag_scheme` for strict chunks).
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
from lmtransfer.data import conll
from lmtransfer.data.tables import DataError
from lmtransfer.tasks.base import Split, Task, check_source, data_file, seeded_subset

log = logging.getLogger(__name__)


class TokenClassificationTask(Task):
    head = "token_classification"
    main_metric = "f1"
    sequence_outputs = {"pred": 0}

    def __init__(self, config, tokenizer):
        self.data = config.data
        self.tokenizer = tokenizer
        self.max_length = config.data.max_length
        # [CLS] ... [SEP] for BERT, <bos> ... for Llama, nothing for GPT-2.
        self.prefix, self.suffix = tokenization.special_tokens(tokenizer)
        # Words in their mid-sentence form (byte-level BPE: after a space).
        self.word_tokenizer = tokenization.word_tokenizer(tokenizer)
        self._specials = len(self.prefix) + len(self.suffix)
        check_source(self.data, ("files", "tfds"))
        self._raw: dict[str, list[conll.Sentence]] = {}
        self._cache: dict[str, Split] = {}
        labels = tuple(self.data.labels) or self._discover_labels()
        self.labels = labels
        self.num_labels = len(labels)
        self.index = {name: i for i, name in enumerate(labels)}

    @property
    def id2label(self):
        return dict(enumerate(self.labels))

    def eval_splits(self):
        return tuple(self.data.eval_splits)

    def test_splits(self):
        return ("test",)

    def _discover_labels(self) -> tuple[str, ...]:
        tags = {t for s in self._read("train") for t in s.tags}
        if None in tags:
            raise DataError(f"{data_file(self.data, 'train')}: the training file has no tag column")
        labels = (["O"] if "O" in tags else []) + sorted(tags - {"O"})
        log.info("labels discovered from the training data: %s", labels)
        return tuple(labels)

    def _read(self, split: str) -> list[conll.Sentence]:
        if split not in self._raw:
            if self.data.source == "tfds":
                sentences = conll.read_tfds(split, self.data.tfds_data_dir)
            else:
                sentences = conll.read_conll(data_file(self.data, split), self.data.tag_column)
            if self.data.to_iob2:
                for s in sentences:
                    if s.tags[0] is not None:
                        s.tags = conll.iob1_to_iob2(s.tags)
            self._raw[split] = sentences
        return self._raw[split]

    # ------------------------------------------------------------------ features

    def load(self, split: str) -> Split:
        if split not in self._cache:
            sentences = seeded_subset(self._read(split), self.data.max_examples.get(split, 0),
                                      split)
            self._cache[split] = self._featurize(split, sentences)
        return self._cache[split]

    def _featurize(self, split: str, sentences: list[conll.Sentence]) -> Split:
        tok, cap = self.word_tokenizer, self.max_length - self._specials
        enc = tok([s.words for s in sentences], is_split_into_words=True,
                  add_special_tokens=False)
        labelled = all(t is not None for s in sentences for t in s.tags)
        windows, empty, split_sentences, cut_words = [], 0, 0, 0
        for si, s in enumerate(sentences):
            pieces = [[] for _ in s.words]
            for token, w in zip(enc["input_ids"][si], enc.word_ids(si), strict=True):
                pieces[w].append(token)
            empty += sum(not p for p in pieces)
            for w, p in enumerate(pieces):
                if len(p) > cap:  # one word longer than a window: its first sub-words only
                    pieces[w], cut_words = p[:cap], cut_words + 1
            start, n_windows = 0, 0
            while start < len(pieces):
                end, used = start, 0
                while end < len(pieces) and used + len(pieces[end]) <= cap:
                    used, end = used + len(pieces[end]), end + 1
                windows.append((si, start, end, pieces[start:end]))
                start, n_windows = end, n_windows + 1
            split_sentences += n_windows > 1
        if empty:
            log.warning("%s: %d words tokenize to nothing; they are predicted 'O'", split, empty)
        if split_sentences:
            log.info("%s: %d sentences longer than max_length=%d were split into windows",
                     split, split_sentences, self.max_length)
        if cut_words:
            log.warning("%s: %d single words had more than %d sub-words; only their first "
                        "sub-words are used", split, cut_words, cap)
        return self._arrays(split, sentences, windows, labelled)

    def _arrays(self, split, sentences, windows, labelled) -> Split:
        n, t = len(windows), self.max_length
        ids = np.full((n, t), self.tokenizer.pad_token_id, np.int32)
        labels = np.zeros((n, t), np.int32)
        label_mask = np.zeros((n, t), np.float32)
        examples = []
        for row, (si, start, end, pieces) in enumerate(windows):
            tokens = list(self.prefix)
            first = []
            for j, p in enumerate(pieces):
                first.append(len(tokens) if p else -1)
                if labelled and p:
                    tag = sentences[si].tags[start + j]
                    label = self._label_id(tag, sentences[si], start + j)
                    labels[row, len(tokens)], label_mask[row, len(tokens)] = label, 1.0
                    if self.data.label_all_subwords and len(p) > 1:
                        rest = self.index.get("I-" + tag[2:], label) if tag[:2] == "B-" else label
                        labels[row, len(tokens) + 1:len(tokens) + len(p)] = rest
                        label_mask[row, len(tokens) + 1:len(tokens) + len(p)] = 1.0
                tokens.extend(p)
            tokens.extend(self.suffix)
            ids[row, :len(tokens)] = tokens
            examples.append({"record": si, "words": (start, end), "first": first})
        length = np.array([self._specials + sum(map(len, w[3])) for w in windows], np.int32)
        features = dict(input_ids=ids, attention_mask=(np.arange(t) < length[:, None])
                        .astype(np.int32), token_type_ids=np.zeros((n, t), np.int32),
                        length=length, labels=labels, label_mask=label_mask)
        return Split(split, features, examples, labelled, records=sentences)

    def _label_id(self, tag, sentence, j) -> int:
        if tag not in self.index:
            raise DataError(f"{sentence.where} (word {j + 1}, {sentence.words[j]!r}): tag "
                            f"{tag!r} is not in the label set {list(self.labels)}")
        return self.index[tag]

    # ------------------------------------------------------------------ model side

    def loss(self, outputs, batch):
        ce = optax.softmax_cross_entropy_with_integer_labels(outputs.logits, batch["labels"])
        w = batch["label_mask"] * batch["weights"][:, None]
        return jnp.sum(ce * w), jnp.sum(w)

    def predict(self, outputs, batch):
        return {"pred": jnp.argmax(outputs.logits, -1).astype(jnp.int32)}

    # ------------------------------------------------------------------ host side

    def word_predictions(self, split: Split, pred: np.ndarray) -> list[list[str]]:
        """Per-sentence word tags from the per-token predictions of every window."""
        out = [["O"] * len(s.words) for s in split.records]
        for row, e in enumerate(split.examples):
            start = e["words"][0]
            for j, pos in enumerate(e["first"]):
                if pos >= 0:
                    out[e["record"]][start + j] = self.labels[int(pred[row, pos])]
        return out

    def evaluate(self, split, predictions):
        pred = self.word_predictions(split, predictions["pred"])
        gold = [s.tags for s in split.records]
        scores = metrics_lib.entity_scores(gold, pred, self.data.entity_mode, self.data.tag_scheme)
        return {**scores, "sentences": len(gold)}

    def write_predictions(self, split, predictions, out_dir):
        """`<split>.jsonl` (one sentence per line) and `<split>.conll` with `word gold pred`
        lines (`word pred` when unlabelled) and blank lines between sentences: conlleval's
        input format."""
        paths.makedirs(out_dir)
        pred = self.word_predictions(split, predictions["pred"])
        jsonl, text = (os.path.join(out_dir, f"{split.name}.{ext}") for ext in ("jsonl", "conll"))
        with paths.open(jsonl, "w") as fj, paths.open(text, "w") as fc:
            for i, (s, p) in enumerate(zip(split.records, pred, strict=True)):
                fj.write(json.dumps({"id": i, "where": s.where, "words": s.words,
                                     "gold": s.tags if split.labelled else None,
                                     "prediction": p}) + "\n")
                for w, g, y in zip(s.words, s.tags, p, strict=True):
                    fc.write(f"{w} {g} {y}\n" if split.labelled else f"{w} {y}\n")
                fc.write("\n")
        return [jsonl, text]
