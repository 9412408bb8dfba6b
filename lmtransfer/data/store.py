"""The token store: a pretraining corpus tokenized once, then read by row straight from disk.

One store directory holds one split (`<store>/train`, `<store>/dev`):

  manifest.json                 format, tokenizer (sha256 of its serialized form), sources,
                                shard count, token dtype, the command that builds it
  shard-00003.json              written last: the shard is complete. Documents, tokens, what
                                was skipped and why, and every file's size and block checksums
  shard-00003.tokens.bin        token ids of the shard's documents, end to end (uint16 when the
                                vocabulary fits, else uint32)
  shard-00003.docs.bin          int64 offsets into tokens: document j is [docs[j], docs[j+1])
  shard-00003.words.bin         word starts, one bit per token (np.packbits), for whole-word MLM
  shard-00003.ids.bin           int64: each document's index in the split's source
  shard-00003.<layout>.json     a row index for one row layout (lmtransfer.data.corpus.Layout):
  shard-00003.<layout>.pieces.bin  int64 [pieces, 2] (token start, length) of each piece
  shard-00003.<layout>.rows.bin    int64 [rows + 1]: row r is pieces [rows[r], rows[r+1])

Raw little-endian files, memory-mapped: a row is a few slices, the OS page cache is the only
cache, and start-up reads nothing but the JSON files (measured against ArrayRecord in
docs/performance.md). Every file is written under `<name>.tmp`, fsynced and renamed, and the
shard's JSON comes last, so a shard is either complete or absent; a half-written one is never
read. Reads check each 1 MiB block against its crc32 the first time it is touched, so a
corrupt byte is an error naming the file, not a silent wrong token, without hashing the whole
corpus at every start.

A store in a bucket (`gs://...`) is read through a local mirror (`~/.cache/lmtransfer/remote`,
keyed by its URL and manifest): each shard's files are downloaded the first time the shard is
opened, its JSON last, then memory-mapped as above; each process fetches only the shards it
reads. `upload(g)` puts a shard built in the mirror into the bucket, its JSON last.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib

import numpy as np

from lmtransfer import paths
from lmtransfer.data.tables import DataError

FORMAT, VERSION = "lmtransfer-token-store", 1
BLOCK = 1 << 20  # bytes per checksum block


class StoreError(DataError):
    """A token store that cannot be used as it is; the message names the file and the fix."""


def shard_name(g: int) -> str:
    return f"shard-{g:05d}"


def tokenizer_hash(tokenizer) -> str:
    """sha256 of the fast tokenizer's serialized form (vocabulary, normalizer, model), without
    the truncation/padding state that encoding calls set on it."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec.pop("truncation", None)
    spec.pop("padding", None)
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def token_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "uint32"


def write_json(path: str, obj) -> None:
    """Atomic (tmp + fsync + rename) JSON write; safe when several hosts write the same file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str):
    return paths.read_json(path)


def mirror(url: str, manifest_text: str) -> str:
    """The local directory that mirrors the store at `url` with this manifest."""
    key = hashlib.sha256(f"{url}\n{manifest_text}".encode()).hexdigest()[:16]
    out = os.path.join(os.path.expanduser(paths.CACHE), f"store-{paths.basename(url)}-{key}")
    os.makedirs(out, exist_ok=True)
    return out


def _shard_files(prefix: str, meta: dict) -> list[str]:
    return [f"{prefix}.{k}.bin" for k in meta["files"]]


class BlockWriter:
    """Appends arrays to `<path>.<pid>.tmp` with a crc32 per BLOCK bytes; `commit` renames it."""

    def __init__(self, path: str):
        self.path, self.tmp = path, f"{path}.{os.getpid()}.tmp"
        self.f = open(self.tmp, "wb")  # noqa: SIM115
        self.crcs, self.crc, self.fill, self.size = [], 0, 0, 0

    def write(self, array: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(array).reshape(-1)).cast("B")
        self.f.write(data)
        self.size += len(data)
        while len(data):
            take = min(len(data), BLOCK - self.fill)
            self.crc = zlib.crc32(data[:take], self.crc)
            self.fill, data = self.fill + take, data[take:]
            if self.fill == BLOCK:
                self.crcs.append(self.crc)
                self.crc, self.fill = 0, 0

    def close(self) -> dict:
        if self.fill:
            self.crcs.append(self.crc)
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        return {"bytes": self.size, "crc32": self.crcs}

    def commit(self) -> None:
        os.replace(self.tmp, self.path)


def write_files(prefix: str, arrays: dict[str, np.ndarray]) -> dict:
    """Writes `<prefix>.<name>.bin` for each array (each under .tmp until all are written);
    returns their sizes and checksums for the JSON that completes them."""
    writers = {k: BlockWriter(f"{prefix}.{k}.bin") for k in arrays}
    for k, a in arrays.items():
        writers[k].write(a)
    files = {k: w.close() for k, w in writers.items()}
    for w in writers.values():
        w.commit()
    return files


def write_index(prefix: str, key: str, build, lengths: np.ndarray) -> None:
    """Builds and writes the row index `<prefix>.<key>.*` from the document lengths."""
    pieces, rows, info = build(lengths)
    files = write_files(f"{prefix}.{key}", {"pieces": pieces.astype(np.int64),
                                            "rows": rows.astype(np.int64)})
    write_json(f"{prefix}.{key}.json", {"rows": len(rows) - 1, "pieces": len(pieces),
                                         "skipped": info, "files": files})


class Blob:
    """A memory-mapped array file whose blocks are checked against their crc32 when first read.

    Corruption and truncation are errors that name the file and say how to rebuild it."""

    def __init__(self, path: str, dtype, meta: dict, fix: str, width: int = 1):
        self.path, self.dtype, self.fix = path, np.dtype(dtype), fix
        self.item = self.dtype.itemsize * width  # bytes per item (a row of `width` values)
        if not os.path.exists(path):
            raise StoreError(f"{path} is missing (its shard's JSON lists it); {fix}")
        size = os.path.getsize(path)
        if size != meta["bytes"]:
            raise StoreError(f"{path} is {size} bytes but its shard's JSON says "
                             f"{meta['bytes']} (truncated or overwritten); {fix}")
        self.raw = np.memmap(path, np.uint8, "r") if size else np.zeros(0, np.uint8)
        self.array = self.raw.view(self.dtype)
        if width > 1:
            self.array = self.array.reshape(-1, width)
        self.crcs = meta["crc32"]
        self.checked = np.zeros(len(self.crcs), bool)

    def __len__(self) -> int:
        return len(self.array)

    def _check(self, lo: int, hi: int) -> None:
        """Verifies the blocks holding bytes [lo, hi)."""
        for b in range(lo // BLOCK, -(-hi // BLOCK)):
            if self.checked[b]:
                continue
            if zlib.crc32(self.raw[b * BLOCK:(b + 1) * BLOCK]) != self.crcs[b]:
                raise StoreError(f"{self.path}: block {b} (bytes {b * BLOCK}..) fails its "
                                 f"checksum: the file is corrupt; {self.fix}")
            self.checked[b] = True

    def get(self, lo: int, hi: int) -> np.ndarray:
        """Items [lo, hi), verified."""
        if hi > lo:
            self._check(lo * self.item, hi * self.item)
        return self.array[lo:hi]

    def all(self) -> np.ndarray:
        return self.get(0, len(self.array))


class Shard:
    """One complete shard of a store: its documents' tokens, offsets and word starts."""

    def __init__(self, store: Store, g: int):
        self.store, self.g = store, g
        self.prefix = os.path.join(store.dir, shard_name(g))
        self.meta = read_json(self.prefix + ".json")
        files, fix = self.meta["files"], store.fix
        self.tokens = Blob(self.prefix + ".tokens.bin", store.manifest["dtype"], files["tokens"],
                           fix)
        self.docs = Blob(self.prefix + ".docs.bin", np.int64, files["docs"], fix)
        self.words = Blob(self.prefix + ".words.bin", np.uint8, files["words"], fix)
        self.ids = Blob(self.prefix + ".ids.bin", np.int64, files["ids"], fix)
        self.num_docs = self.meta["documents"]

    def doc_lengths(self) -> np.ndarray:
        return np.diff(self.docs.all())

    def word_starts(self, lo: int, hi: int) -> np.ndarray:
        """bool [hi - lo]: does token i start a word."""
        if hi <= lo:
            return np.zeros(0, bool)
        bits = np.unpackbits(self.words.get(lo // 8, -(-hi // 8)))
        return bits[lo % 8:lo % 8 + hi - lo].astype(bool)

    def index(self, key: str, build) -> tuple[Blob, Blob]:
        """(pieces [P, 2], rows [R + 1]) of row layout `key`: read, or built from the document
        lengths by `build(lengths) -> (pieces, rows, skipped)` and saved beside the shard
        (by whichever process needs it first: the write is atomic)."""
        path = f"{self.prefix}.{key}"
        if not os.path.exists(path + ".json"):
            write_index(self.prefix, key, build, self.doc_lengths())
        meta = read_json(path + ".json")
        pieces = Blob(path + ".pieces.bin", np.int64, meta["files"]["pieces"], self.store.fix, 2)
        rows = Blob(path + ".rows.bin", np.int64, meta["files"]["rows"], self.store.fix)
        return pieces, rows

    def index_info(self, key: str) -> dict:
        """What building the index of layout `key` skipped, and why."""
        return read_json(f"{self.prefix}.{key}.json").get("skipped", {})


class Store:
    """A store directory (one split), checked against the run that reads it."""

    def __init__(self, path: str):
        self.path = path  # as given: a local directory or a URL
        manifest = paths.join(path, "manifest.json")
        if not paths.exists(manifest):
            raise StoreError(f"{path} is not a token store (no manifest.json); build it with "
                             "python -m lmtransfer.prepare --config <the run's config> --out "
                             f"{paths.dirname(path.rstrip('/'))}")
        text = paths.read_text(manifest)
        self.manifest = json.loads(text)
        # Where shards are read and built: the store itself, or a bucket store's local mirror.
        self.dir = mirror(path, text) if paths.is_url(path) else path
        if (self.manifest.get("format"), self.manifest.get("version")) != (FORMAT, VERSION):
            raise StoreError(f"{manifest}: not a {FORMAT} v{VERSION} manifest; rebuild the "
                             "store with python -m lmtransfer.prepare")
        self.num_shards = self.manifest["num_shards"]
        command = self.manifest.get("command") or "python -m lmtransfer.prepare"
        self.fix = f"rebuild it with: {command}"

    def complete(self, g: int) -> bool:
        return paths.exists(paths.join(self.path, shard_name(g) + ".json"))

    def missing(self, shards) -> list[int]:
        return [g for g in shards if not self.complete(g)]

    def check(self, tokenizer_sha: str, shards, tokenizer_name: str = "") -> None:
        """The store was built with this tokenizer and holds these shards, complete."""
        tok = self.manifest["tokenizer"]
        if tok["sha256"] != tokenizer_sha:
            raise StoreError(
                f"{self.path} was built with another tokenizer ({tok['name']}, sha256 "
                f"{tok['sha256'][:12]}) than this run's ({tokenizer_name}, {tokenizer_sha[:12]}):"
                f" its token ids mean other words. Use the store's tokenizer "
                f"(config.model.tokenizer={tok['name']}) or {self.fix}")
        gone = self.missing(shards)
        if gone:
            names = ", ".join(shard_name(g) + ".json" for g in gone[:6])
            raise StoreError(f"{self.path} lacks {len(gone)} of its {self.num_shards} shards "
                             f"({names}{', ...' if len(gone) > 6 else ''}): it was not fully "
                             f"prepared. Finish it (rerunning the prepare command continues "
                             f"where it stopped): {self.manifest.get('command', '')}")

    def shard(self, g: int) -> Shard:
        if self.dir != self.path:
            self._fetch(g)
        return Shard(self, g)

    def _fetch(self, g: int) -> None:
        """Downloads shard g of a bucket store into the mirror (its JSON last), once."""
        local = os.path.join(self.dir, shard_name(g))
        if os.path.exists(local + ".json"):
            return
        remote = paths.join(self.path, shard_name(g))
        text = paths.read_text(remote + ".json")
        for name in _shard_files(shard_name(g), json.loads(text)):
            paths.download(paths.join(self.path, name), os.path.join(self.dir, name))
        paths.write_text(local + ".json", text)

    def upload(self, g: int) -> None:
        """Puts shard g, built in the mirror, into the bucket: its files, then its JSON."""
        if self.dir == self.path:
            return
        local = os.path.join(self.dir, shard_name(g))
        meta = read_json(local + ".json")
        for name in [*_shard_files(shard_name(g), meta), shard_name(g) + ".json"]:  # JSON last
            paths.upload(os.path.join(self.dir, name), paths.join(self.path, name))
