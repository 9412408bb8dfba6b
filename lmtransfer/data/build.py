"""Building token-store shards: the worker side of lmtransfer.prepare.

A worker streams its source once and tokenizes the documents of the shards it was given
(document i -> shard i % num_shards) with the `tokenizers` library, one thread per worker
(parallelism comes from the workers), writing each shard's files under temporary names.
A shard is committed (files renamed, then its JSON written) only when complete; a worker that
dies leaves temporary files that the next run deletes and redoes.
"""

from __future__ import annotations

import glob
import os
import time
from collections import Counter

import numpy as np

from lmtransfer import faults
from lmtransfer.data import store
from lmtransfer.data.corpus import Layout, Source

FLUSH_CHARS = 1 << 20  # tokenize a shard's buffered documents once they hold this much text


def clear_shard(path: str, g: int) -> None:
    """Removes whatever an interrupted build left of shard g (temporary or stale files)."""
    for f in glob.glob(os.path.join(path, store.shard_name(g) + ".*")):
        os.remove(f)


class ShardWriter:
    """The files of one shard, appended document batch by document batch."""

    def __init__(self, path: str, g: int, dtype: str):
        clear_shard(path, g)
        self.path, self.g, self.dtype = path, g, np.dtype(dtype)
        self.prefix = os.path.join(path, store.shard_name(g))
        self.out = {k: store.BlockWriter(f"{self.prefix}.{k}.bin")
                    for k in ("tokens", "docs", "ids", "words")}
        self.out["docs"].write(np.zeros(1, np.int64))
        self.tokens, self.documents, self.skipped = 0, 0, Counter()
        self.bits = np.zeros(0, bool)  # word-start bits not yet packed into whole bytes

    def add(self, doc_ids: list[int], encodings) -> int:
        """Appends tokenized documents; returns the tokens added."""
        ids, starts, kept = [], [], []
        for d, enc in zip(doc_ids, encodings, strict=True):
            if not enc.ids:
                self.skipped["documents with no tokens"] += 1
                continue
            ids.append(np.asarray(enc.ids, self.dtype))
            w = np.asarray(enc.word_ids, float)  # None (no word) -> nan: counts as a start
            starts.append(np.concatenate([[True], w[1:] != w[:-1]]))
            kept.append(d)
        if not kept:
            return 0
        lengths = np.array([len(x) for x in ids], np.int64)
        self.out["tokens"].write(np.concatenate(ids))
        self.out["docs"].write(self.tokens + np.cumsum(lengths))
        self.out["ids"].write(np.asarray(kept, np.int64))
        bits = np.concatenate([self.bits] + starts)
        whole = len(bits) // 8 * 8
        self.out["words"].write(np.packbits(bits[:whole]))
        self.bits = bits[whole:]
        added = int(lengths.sum())
        self.tokens += added
        self.documents += len(kept)
        return added

    def commit(self, layout: Layout) -> dict:
        """Closes and renames the files, builds the row index of `layout`, and writes the
        shard's JSON last: from then on the shard is complete."""
        if len(self.bits):
            self.out["words"].write(np.packbits(self.bits))
        files = {k: w.close() for k, w in self.out.items()}
        for w in self.out.values():
            w.commit()
        meta = {"shard": self.g, "documents": self.documents, "tokens": self.tokens,
                "skipped": dict(self.skipped), "files": files}
        lengths = np.diff(np.fromfile(f"{self.prefix}.docs.bin", np.int64))
        store.write_index(self.prefix, layout.key, layout.build, lengths)
        faults.point("prepare", self.g)  # files complete, shard not yet: tests kill here
        store.write_json(self.prefix + ".json", meta)
        return meta


def build_shards(job: dict, report=None) -> list[dict]:
    """Builds shards `job['shards']` of `job['source']` into `job['path']`; `report(docs,
    tokens, chars)` is called as work is done. Returns the shards' metadata."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread: parallel over workers
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(job["tokenizer"])
    tok.no_truncation()
    tok.no_padding()
    source: Source = job["source"]
    num_shards, shards = job["num_shards"], list(job["shards"])
    writers = {g: ShardWriter(job["path"], g, job["dtype"]) for g in shards}
    pending = {g: ([], [], 0) for g in shards}
    report = report or (lambda *a: None)

    def flush(g):
        ids, texts, chars = pending[g]
        if texts:
            tokens = writers[g].add(ids, tok.encode_batch(texts, add_special_tokens=False))
            report(len(texts), tokens, chars)
        pending[g] = ([], [], 0)

    for i, text in source.documents(shards=shards, num_shards=num_shards):
        g = i % num_shards
        if not text.strip():
            writers[g].skipped["empty documents"] += 1
            continue
        ids, texts, chars = pending[g]
        ids.append(i)
        texts.append(text)
        pending[g] = (ids, texts, chars + len(text))
        if chars + len(text) >= FLUSH_CHARS:
            flush(g)
    metas = []
    for g in shards:
        flush(g)
        metas.append(writers[g].commit(job["layout"]))
    return metas


def worker(job: dict, q) -> None:
    """A worker process: builds its shards, reporting progress and the result on `q`."""
    last, acc = time.monotonic(), [0, 0, 0]

    def report(docs, tokens, chars):
        nonlocal last
        acc[0] += docs
        acc[1] += tokens
        acc[2] += chars
        if time.monotonic() - last > 0.5:
            q.put(("progress", tuple(acc)))
            acc[:] = [0, 0, 0]
            last = time.monotonic()

    try:
        metas = build_shards(job, report)
        q.put(("progress", tuple(acc)))
        q.put(("done", metas))
    except BaseException as e:  # noqa: BLE001 - sent to the parent, which raises it
        q.put(("error", f"{type(e).__name__}: {e}"))
