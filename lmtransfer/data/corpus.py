"""Raw-text corpora for pretraining: documents from local files or TFDS, sharded by document,
tokenized and packed into fixed-length rows.

- Files: `config.data.train_files` / `eval_files` are comma-separated paths or globs. `.jsonl`
  files hold one document per line (field `config.data.text_field`); other files are plain
  text whose documents are blank-line-separated paragraphs (`document=paragraph`), single
  lines (`line`) or whole files (`file`).
- TFDS: `config.data.tfds_name` (e.g. `lm1b`, `wikipedia/20230601.en`, `c4/en`) through
  `tfds.data_source`, which reads records by index, so a process touches only its own.
- Sharding: document i belongs to shard i % num_shards. Shards never share a document, and a
  process tokenizes and packs only the shards it owns (see lmtransfer.data.batching).
- Packing: each document is tokenized (BERT: `[CLS] ... [SEP]` per piece; GPT: the document
  followed by its end-of-text token), documents longer than a row are cut into row-sized
  pieces (never dropped), and pieces are packed in order into rows of `max_length` tokens with
  `segment_ids` (1, 2, ... per piece; 0 = padding) and positions that restart per piece, so
  attention never crosses documents.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Callable, Iterator

import numpy as np

from lmtransfer.data.tables import DataError, read_utf8

log = logging.getLogger(__name__)

DOCUMENT_MODES = ("paragraph", "line", "file")


def resolve_files(spec: str, key: str) -> list[str]:
    """Comma-separated paths or globs -> sorted existing files; an error names `key`."""
    patterns = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not patterns:
        raise DataError(f"{key} is empty; give a path or glob of text/jsonl files")
    files = []
    for p in patterns:
        found = sorted(glob.glob(os.path.expanduser(p)))
        if not found:
            raise DataError(f"{key}: {p!r} matches no file")
        files += [f for f in found if os.path.isfile(f)]
    return files


def file_documents(path: str, document: str, text_field: str) -> Iterator[str]:
    """The non-empty documents of one file, in file order."""
    text = read_utf8(path)
    if path.endswith(".jsonl"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)[text_field]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{n}: not a JSON object with a {text_field!r} string "
                                f"({e}); set config.data.text_field") from None
            if not isinstance(doc, str):
                raise DataError(f"{path}:{n}: {text_field!r} is not a string")
            if doc.strip():
                yield doc
        return
    if document == "file":
        parts = [text]
    elif document == "line":
        parts = text.splitlines()
    elif document == "paragraph":
        parts, current = [], []
        for line in text.splitlines():
            if line.strip():
                current.append(line)
            elif current:
                parts.append("\n".join(current))
                current = []
        parts.append("\n".join(current))
    else:
        raise ValueError(f"config.data.document={document!r}; use one of {DOCUMENT_MODES}")
    yield from (p for p in parts if p.strip())


class Corpus:
    """The documents of one split: `len(corpus)` and `corpus.get(indices)` -> texts."""

    def __init__(self, count: int, get: Callable[[list[int]], list[str]], name: str):
        self.count, self._get, self.name = count, get, name

    def __len__(self) -> int:
        return self.count

    def get(self, indices) -> list[str]:
        return self._get(list(indices))


def from_files(spec: str, key: str, document: str, text_field: str) -> Corpus:
    """Documents of local files (read into memory: plain-text corpora that fit on a host)."""
    docs = []
    for path in resolve_files(spec, key):
        docs += list(file_documents(path, document, text_field))
    if not docs:
        raise DataError(f"{key}={spec!r}: the files hold no text")
    return Corpus(len(docs), lambda idx: [docs[i] for i in idx], spec)


def from_tfds(name: str, split: str, data_dir: str, text_field: str) -> Corpus:
    """A TFDS text data set; records are read by index, only those asked for."""
    import tensorflow_datasets as tfds

    source = tfds.data_source(name, split=split, data_dir=os.path.expanduser(data_dir) or None,
                              download=False)
    where = f"tfds {name}[{split}]"
    if not len(source):
        raise DataError(f"{where} is empty")

    def get(idx):
        out = []
        for i in idx:
            ex = source[i]
            if text_field not in ex:
                raise DataError(f"{where}[{i}] has no {text_field!r} feature (it has "
                                f"{sorted(ex)}); set config.data.text_field")
            t = ex[text_field]
            out.append(t.decode("utf-8") if isinstance(t, bytes) else str(t))
        return out

    return Corpus(len(source), get, where)


def subset(corpus: Corpus, start: int, stop: int) -> Corpus:
    """Documents [start, stop) of a corpus, renumbered from 0."""
    return Corpus(stop - start, lambda idx: corpus.get([start + i for i in idx]),
                  f"{corpus.name}[{start}:{stop}]")


def shard_documents(n: int, shards: list[int], num_shards: int) -> dict[int, np.ndarray]:
    """Document indices of each owned shard (document i -> shard i % num_shards)."""
    return {g: np.arange(g, n, num_shards) for g in shards}


def pack(token_lists: list[list[int]], max_length: int, *, prefix: list[int],
         suffix: list[int], doc_ids: list[int],
         start_lists: list[list[bool]] | None = None) -> dict[str, np.ndarray]:
    """Packs documents into rows of `max_length` (see the module docstring).

    Each document's tokens are cut into pieces of at most `max_length - len(prefix+suffix)`,
    each wrapped as prefix + piece + suffix. Returns input_ids, segment_ids, position_ids,
    length ([n]), doc ([n, max pieces per row] document ids, -1 = none) and, with
    `start_lists` (per-token word starts), word_start (special tokens count as starts).
    """
    room = max_length - len(prefix) - len(suffix)
    if room < 1:
        raise ValueError(f"config.data.max_length={max_length} leaves no room for text")
    rows, row = [], []  # a row is a list of (doc, tokens, starts) pieces
    for d, tokens in enumerate(token_lists):
        starts = start_lists[d] if start_lists is not None else [True] * len(tokens)
        for a in range(0, max(len(tokens), 1), room):
            piece = (doc_ids[d], prefix + tokens[a:a + room] + suffix,
                     [True] * len(prefix) + list(starts[a:a + room]) + [True] * len(suffix))
            if sum(len(p[1]) for p in row) + len(piece[1]) > max_length:
                rows.append(row)
                row = []
            row.append(piece)
    if row:
        rows.append(row)
    n = len(rows)
    out = {k: np.zeros((n, max_length), np.int32)
           for k in ("input_ids", "segment_ids", "position_ids")}
    word_start = np.zeros((n, max_length), bool)
    doc = np.full((n, max((len(r) for r in rows), default=1)), -1, np.int64)
    for r, pieces in enumerate(rows):
        at = 0
        for s, (d, tokens, starts) in enumerate(pieces):
            span = slice(at, at + len(tokens))
            out["input_ids"][r, span] = tokens
            out["segment_ids"][r, span] = s + 1
            out["position_ids"][r, span] = np.arange(len(tokens))
            word_start[r, span] = starts
            doc[r, s] = d
            at += len(tokens)
    out["length"] = (out["segment_ids"] > 0).sum(1).astype(np.int32)
    out["doc"] = doc
    if start_lists is not None:
        out["word_start"] = word_start
    return out


def tokenize(tokenizer, texts: list[str], word_starts: bool = False):
    """Token ids per text without special tokens (and, if asked, whether each token starts a
    word: whole-word masking needs it)."""
    enc = tokenizer(texts, add_special_tokens=False, return_attention_mask=False,
                    return_token_type_ids=False, verbose=False)
    ids = enc["input_ids"]
    if not word_starts:
        return ids, None
    starts = []
    for i in range(len(texts)):
        words = enc.word_ids(i)
        starts.append([w is None or j == 0 or words[j - 1] != w for j, w in enumerate(words)])
    return ids, starts


PAIR_MODES = ("nsp", "sop")


def sentence_pairs(token_lists: list[list[int]], max_length: int, *, cls: int, sep: int,
                   mode: str, rng: np.random.Generator,
                   doc_ids: list[int]) -> dict[str, np.ndarray]:
    """Rows `[CLS] A [SEP] B [SEP]` for BERT's second objective (one pair per row, no packing).

    Each document is cut into consecutive spans of up to max_length - 3 tokens; each span is
    split at a random token into A and B. `sop` (sentence-order prediction, ALBERT): B and A
    swap places with probability 1/2 (label 1 = swapped). `nsp` (next-sentence prediction,
    BERT): B is replaced with probability 1/2 by a span of the same length from another
    document (label 1 = random). Spans of one token cannot be split; they are counted in
    `skipped` (a [n]-free scalar) rather than silently lost. token_type_ids are 0 for
    [CLS] A [SEP] and 1 for B [SEP]; A and B are one segment (they may attend to each other).
    """
    if mode not in PAIR_MODES:
        raise ValueError(f"config.data.sentence_pairs={mode!r}; use one of {PAIR_MODES} or ''")
    room = max_length - 3
    spans = [(d, t[a:a + room]) for d, t in zip(doc_ids, token_lists, strict=True)
             for a in range(0, len(t), room)]
    rows, skipped = [], 0
    for d, span in spans:
        if len(span) < 2:
            skipped += 1
            continue
        cut = int(rng.integers(1, len(span)))
        a, b, label = span[:cut], span[cut:], int(rng.random() < 0.5)
        if label and mode == "sop":
            a, b = b, a
        elif label:  # nsp: B from another document (if there is one)
            others = [s for e, s in spans if e != d]
            if not others:
                label = 0
            else:
                other = others[int(rng.integers(len(others)))]
                start = int(rng.integers(0, max(len(other) - len(b), 0) + 1))
                b = other[start:start + len(b)]
        rows.append(([cls] + a + [sep], b + [sep], label, d))
    n = len(rows)
    out = {k: np.zeros((n, max_length), np.int32)
           for k in ("input_ids", "segment_ids", "position_ids", "token_type_ids")}
    for r, (first, second, _, _) in enumerate(rows):
        ids = first + second
        out["input_ids"][r, :len(ids)] = ids
        out["segment_ids"][r, :len(ids)] = 1
        out["position_ids"][r, :len(ids)] = np.arange(len(ids))
        out["token_type_ids"][r, len(first):len(ids)] = 1
    out["pair_label"] = np.array([r[2] for r in rows], np.int32)
    out["length"] = out["segment_ids"].sum(1).astype(np.int32)
    out["doc"] = np.array([[r[3]] for r in rows], np.int64).reshape(n, 1)
    out["skipped"] = skipped
    return out
