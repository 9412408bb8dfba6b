"""Raw-text corpora for pretraining: documents streamed from local files or TFDS, sharded by
document, and the row layouts that cut a token store's documents into fixed-length rows.

- Files: `config.data.train_files` / `eval_files` are comma-separated paths or globs. `.jsonl`
  files hold one document per line (field `config.data.text_field`); other files are plain
  text whose documents are blank-line-separated paragraphs (`document=paragraph`), single
  lines (`line`) or whole files (`file`). Files are read line by line, never whole.
- TFDS: `config.data.tfds_name` (e.g. `lm1b`, `wikipedia/20230601.en`, `c4/en`) through
  `tfds.data_source`, which reads records by index, so a worker touches only its own.
- Empty documents (whitespace only) are skipped by the store builder and counted, never
  silently.
- Sharding: document i belongs to shard i % num_shards; shards never share a document.
- Packing (`Layout`, objective clm/mlm): each document (BERT: `[CLS] ... [SEP]` per piece;
  GPT: the document followed by its end-of-text token) is cut into row-sized pieces (never
  dropped), and pieces are packed in order into rows of `max_length` tokens with
  `segment_ids` (1, 2, ... per piece; 0 = padding) and positions that restart per piece, so
  attention never crosses documents. Sentence pairs (`Layout.pairs`): one
  `[CLS] A [SEP] B [SEP]` row per span of a document (see `ShardRows`).
The row index (which pieces make row r) is computed once per shard from the document lengths
and saved in the store; rows themselves are cut from disk when a step needs them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator

import numpy as np

from lmtransfer import paths
from lmtransfer.data.tables import DataError
from lmtransfer.errors import ConfigError

log = logging.getLogger(__name__)

DOCUMENT_MODES = ("paragraph", "line", "file")
PAIR_MODES = ("nsp", "sop")


def resolve_files(spec: str, key: str) -> list[str]:
    """Comma-separated paths or globs -> sorted existing files; an error names `key`."""
    patterns = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not patterns:
        raise DataError(f"{key} is empty; give a path or glob of text/jsonl files")
    files = []
    for p in patterns:
        found = paths.glob(p)
        if not found:
            raise DataError(f"{key}: {p!r} matches no file")
        files += [paths.resolve(f) for f in found if paths.isfile(f)]
    return files


def _lines(path: str) -> Iterator[str]:
    """The lines of a UTF-8 file, streamed; bytes that are not UTF-8 name the line."""
    with paths.open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{n}: bytes that are not UTF-8 ({e.reason}); convert "
                                "the file to UTF-8") from None


def file_documents(path: str, document: str, text_field: str) -> Iterator[str]:
    """The documents of one file, in file order, empty ones included (whitespace-only lines,
    records or files: the store builder skips and counts them; blank lines between paragraphs
    separate documents and are not documents themselves)."""
    if document not in DOCUMENT_MODES:
        raise ConfigError(f"config.data.document={document!r}; use one of {DOCUMENT_MODES}")
    if path.endswith(".jsonl"):
        for n, line in enumerate(_lines(path), 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)[text_field]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{n}: not a JSON object with a {text_field!r} string "
                                f"({e}); set config.data.text_field") from None
            if not isinstance(doc, str):
                raise DataError(f"{path}:{n}: {text_field!r} is not a string")
            yield doc
    elif document == "file":
        yield "".join(_lines(path))
    elif document == "line":
        for line in _lines(path):
            yield line.rstrip("\r\n")
    else:
        current = []
        for line in _lines(path):
            line = line.rstrip("\r\n")
            if line.strip():
                current.append(line)
            elif current:
                yield "\n".join(current)
                current = []
        if current:
            yield "\n".join(current)


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one split's documents come from; documents [start, stop) of it (stop -1: all)."""

    kind: str  # files | tfds
    files: tuple[str, ...] = ()
    document: str = "paragraph"
    text_field: str = "text"
    tfds_name: str = ""
    tfds_split: str = ""
    tfds_data_dir: str = ""
    start: int = 0
    stop: int = -1
    key: str = "config.data.train_files"

    def describe(self) -> dict:
        """What the store's manifest records (and a rerun must match)."""
        if self.kind == "files":
            what = {"files": [{"path": p, "bytes": paths.getsize(p)} for p in self.files],
                    "document": self.document, "text_field": self.text_field}
        else:
            what = {"tfds": self.tfds_name, "split": self.tfds_split,
                    "data_dir": self.tfds_data_dir, "text_field": self.text_field}
        return {"kind": self.kind, **what, "documents": [self.start, self.stop]}

    @property
    def name(self) -> str:
        if self.kind == "tfds":
            return f"tfds {self.tfds_name}[{self.tfds_split}]"
        return ",".join(self.files) if len(self.files) <= 3 else (
            f"{self.files[0]} and {len(self.files) - 1} more files")

    def text_bytes(self) -> int:
        return sum(paths.getsize(p) for p in self.files) if self.kind == "files" else 0

    def _tfds(self):
        import tensorflow_datasets as tfds

        return tfds.data_source(self.tfds_name, split=self.tfds_split,
                                data_dir=os.path.expanduser(self.tfds_data_dir) or None,
                                download=False)

    def count(self) -> int:
        """Documents in the whole source (ignoring start/stop); a pass over files."""
        if self.kind == "tfds":
            return len(self._tfds())
        return sum(1 for _ in self.documents(ignore_range=True))

    def documents(self, shards=None, num_shards: int = 1,
                  ignore_range: bool = False) -> Iterator[tuple[int, str]]:
        """(index within [start, stop), text) of the documents, in order (TFDS: shard by
        shard); with `shards`, only those whose index % num_shards is in it."""
        start, stop = (0, -1) if ignore_range else (self.start, self.stop)
        keep = None if shards is None else set(shards)
        if self.kind == "tfds":
            source = self._tfds()
            stop = len(source) if stop < 0 else stop
            if keep is None:
                keep = set(range(num_shards))
            for g in sorted(keep):  # shard by shard: records are read by index
                for i in range(start + g, stop, num_shards):
                    yield i - start, self._tfds_text(source, i)
            return
        i = 0
        for path in self.files:
            for doc in file_documents(path, self.document, self.text_field):
                if stop >= 0 and i >= stop:
                    return
                if i >= start and (keep is None or (i - start) % num_shards in keep):
                    yield i - start, doc
                i += 1

    def _tfds_text(self, source, i: int) -> str:
        ex = source[i]
        if self.text_field not in ex:
            raise DataError(f"{self.name}[{i}] has no {self.text_field!r} feature (it has "
                            f"{sorted(ex)}); set config.data.text_field")
        t = ex[self.text_field]
        text = t.decode("utf-8") if isinstance(t, bytes) else str(t)
        return text


def sources(data, split: str) -> Source:
    """The configured source of `split` ('train' or 'dev'): the eval files / split, or the last
    `eval_fraction` of the train documents when there are none."""
    if data.source == "files":
        key, spec = (("config.data.eval_files", data.eval_files) if split != "train" and
                     data.eval_files else ("config.data.train_files", data.train_files))
        src = Source("files", tuple(resolve_files(spec, key)), data.document, data.text_field,
                     key=key)
        held_out = not data.eval_files
    elif data.source == "tfds":
        name = data.tfds_eval_split if split != "train" and data.tfds_eval_split else (
            data.tfds_train_split)
        src = Source("tfds", text_field=data.text_field, tfds_name=data.tfds_name,
                     tfds_split=name, tfds_data_dir=data.tfds_data_dir,
                     key="config.data.tfds_name")
        held_out = not data.tfds_eval_split
    else:
        raise ConfigError(f"config.data.source={data.source!r}; use files or tfds")
    if not held_out:
        return src
    if not 0 < data.eval_fraction < 1:
        raise ConfigError("no eval data: set config.data.eval_files (or tfds_eval_split) or "
                         "config.data.eval_fraction in (0, 1)")
    n = src.count()
    cut = n - max(1, int(round(n * data.eval_fraction)))
    if cut < 1:
        raise DataError(f"{src.name}: {n} documents are too few to hold out "
                        f"eval_fraction={data.eval_fraction}")
    return dataclasses.replace(src, start=0, stop=cut) if split == "train" else (
        dataclasses.replace(src, start=cut, stop=n))


# ------------------------------------------------------------------------------ row layouts

@dataclasses.dataclass(frozen=True)
class Layout:
    """How a shard's documents become rows of `max_length` tokens."""

    max_length: int
    prefix: tuple[int, ...]  # wraps every piece: BERT [CLS] ... [SEP], GPT ... <eos>
    suffix: tuple[int, ...]
    pairs: str = ""  # '' (packing) | nsp | sop: one [CLS] A [SEP] B [SEP] row per span

    @property
    def key(self) -> str:
        """Names the row index in the store (nsp and sop share one: they differ at read)."""
        if self.pairs:
            return f"pairs-L{self.max_length}"
        return f"pack-p{len(self.prefix)}s{len(self.suffix)}-L{self.max_length}"

    @property
    def room(self) -> int:
        room = self.max_length - (3 if self.pairs else len(self.prefix) + len(self.suffix))
        if room < (2 if self.pairs else 1):
            raise ConfigError(f"config.data.max_length={self.max_length} leaves no room for text")
        return room

    def build(self, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        """(pieces [P, 2] = (token start, length), rows [R + 1] = first piece of each row,
        info) from the documents' token counts."""
        room = self.room
        lengths = np.asarray(lengths, np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        count = -(-lengths // room)
        doc = np.repeat(np.arange(len(lengths)), count)
        j = np.arange(len(doc)) - np.repeat(np.cumsum(count) - count, count)
        start = offsets[doc] + j * room
        size = np.minimum(room, lengths[doc] - j * room)
        info = {}
        if self.pairs:  # a span of one token cannot be split into A and B
            keep = size >= 2
            info["one-token spans (cannot be split into a sentence pair)"] = int((~keep).sum())
            start, size = start[keep], size[keep]
            return (np.stack([start, size], 1), np.arange(len(start) + 1), info)
        extra = len(self.prefix) + len(self.suffix)
        rows, fill, L = [0], 0, self.max_length
        for i, n in enumerate((size + extra).tolist()):  # greedy, in order
            if fill + n > L:
                rows.append(i)
                fill = 0
            fill += n
        rows.append(len(size))
        if len(size) == 0:
            rows = [0]
        return np.stack([start, size], 1), np.asarray(rows, np.int64), info


class ShardRows:
    """The rows of one store shard in one layout, cut from disk on demand.

    Sentence pairs: row r is span r of a document, split at a random token into A and B from
    (seed, shard, split, r) (so a row is the same whenever it is read). `sop` (ALBERT): B and A
    swap with probability 1/2 (label 1 = swapped). `nsp` (BERT): with probability 1/2, B is
    replaced by as many tokens from a random span of another document (label 1 = random).
    token_type_ids are 0 for [CLS] A [SEP] and 1 for B [SEP]; A and B are one segment.
    """

    def __init__(self, shard, layout: Layout, *, seed: int, train: bool, word_start: bool):
        self.shard, self.layout, self.want_words = shard, layout, word_start
        self.seed, self.train = seed, train
        self.pieces, self.rows = shard.index(layout.key, layout.build)
        self.index_info = shard.index_info(layout.key)
        self.n = len(self.rows) - 1
        self._doc_offsets = None

    def __len__(self) -> int:
        return self.n

    def docs(self, rows) -> list[list[int]]:
        """The documents (their indices in the split's source) in each row."""
        if self._doc_offsets is None:
            self._doc_offsets = np.asarray(self.shard.docs.all())
        ids, out = self.shard.ids.all(), []
        for r in rows:
            p = self.pieces.get(*self.rows.get(r, r + 2).tolist())
            local = np.searchsorted(self._doc_offsets, p[:, 0], "right") - 1
            out.append(sorted(set(ids[local].tolist())))
        return out

    def read(self, rows) -> dict[str, np.ndarray]:
        """Features of `rows` ([k] row numbers): input_ids, segment_ids, position_ids,
        token_type_ids, attention_mask [k, L], length [k] (+ word_start, pair_label)."""
        k, L = len(rows), self.layout.max_length
        out = {name: np.zeros((k, L), np.int32) for name in
               ("input_ids", "segment_ids", "position_ids", "token_type_ids")}
        words = np.zeros((k, L), bool)
        labels = np.zeros(k, np.int32)
        for i, r in enumerate(np.asarray(rows).tolist()):
            lo, hi = self.rows.get(r, r + 2).tolist()
            if self.layout.pairs:
                labels[i] = self._pair(out, i, r, *self.pieces.get(lo, hi)[0].tolist())
                continue
            at = 0
            pre, suf = list(self.layout.prefix), list(self.layout.suffix)
            for s, (start, n) in enumerate(self.pieces.get(lo, hi).tolist()):
                m = len(pre) + n + len(suf)
                span = slice(at, at + m)
                out["input_ids"][i, span] = pre + self.shard.tokens.get(start, start + n
                                                                         ).tolist() + suf
                out["segment_ids"][i, span] = s + 1
                out["position_ids"][i, span] = np.arange(m)
                if self.want_words:
                    words[i, span] = True
                    words[i, at + len(pre):at + len(pre) + n] = self.shard.word_starts(
                        start, start + n)
                at += m
        out["attention_mask"] = (out["segment_ids"] > 0).astype(np.int32)
        out["length"] = out["attention_mask"].sum(1).astype(np.int32)
        if self.want_words:
            out["word_start"] = words
        if self.layout.pairs:
            out["pair_label"] = labels
        return out

    def _pair(self, out, i: int, r: int, start: int, n: int) -> int:
        rng = np.random.default_rng([self.seed, self.shard.g, int(self.train), r])
        span = self.shard.tokens.get(start, start + n).tolist()
        cut = int(rng.integers(1, n))
        a, b, label = span[:cut], span[cut:], int(rng.random() < 0.5)
        if label and self.layout.pairs == "sop":
            a, b = b, a
        elif label:  # nsp: B from a random span of another document, if there is one
            label = 0
            if self._doc_offsets is None:
                self._doc_offsets = np.asarray(self.shard.docs.all())
            doc = np.searchsorted(self._doc_offsets, start, "right")
            for _ in range(32):
                o = int(rng.integers(self.n))
                o_start, o_n = self.pieces.get(o, o + 1)[0].tolist()
                if np.searchsorted(self._doc_offsets, o_start, "right") != doc:
                    at = int(rng.integers(0, max(o_n - len(b), 0) + 1))
                    b = self.shard.tokens.get(o_start + at, o_start + min(o_n, at + len(b))
                                              ).tolist()
                    label = 1
                    break
        cls, sep = self.layout.prefix[0], self.layout.suffix[0]
        first, second = [cls] + a + [sep], b + [sep]
        m = len(first) + len(second)
        out["input_ids"][i, :m] = first + second
        out["segment_ids"][i, :m] = 1
        out["position_ids"][i, :m] = np.arange(m)
        out["token_type_ids"][i, len(first):m] = 1
        return label
