"""CoNLL-style column files (CoNLL-2003 NER and any file laid out like it) and TFDS conll2003.

A file has one token per line, whitespace-separated columns (`token POS chunk NER` for
CoNLL-2003), whitespace-only lines between sentences and `-DOCSTART-` lines between documents.
The tag column is the last one unless told otherwise; a one-column file is unlabelled (words
only, for prediction). Every line has the same number of
columns; a line that doesn't, bytes that are not UTF-8 or a file with no sentence are errors
naming the file and line.
"""

from __future__ import annotations

import dataclasses

from lmtransfer import paths
from lmtransfer.data.tables import DataError


@dataclasses.dataclass
class Sentence:
    words: list[str]
    tags: list[str | None]  # None: the file has no tag column (unlabelled)
    where: str  # "file:line" of the first word


def read_conll(path: str, tag_column: int = -1) -> list[Sentence]:
    if not paths.exists(path):
        raise DataError(f"{path}: file not found (set config.data.dir / config.data.files.*)")
    with paths.open(path, "rb") as f:
        raw = f.read()
    sentences: list[Sentence] = []
    words, tags, start, ncols = [], [], 0, None
    for number, line in enumerate(raw.split(b"\n"), 1):
        try:
            text = line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as e:
            raise DataError(f"{path}:{number}: not UTF-8 ({e.reason} at byte {e.start}); "
                            "convert the file to UTF-8") from None
        fields = text.split()
        if not fields or fields[0] == "-DOCSTART-":
            if words:
                sentences.append(Sentence(words, tags, f"{path}:{start}"))
            words, tags = [], []
            continue
        if ncols is None:
            ncols = len(fields)
            if ncols > 1 and not -ncols <= tag_column < ncols:
                raise DataError(f"{path}:{number}: config.data.tag_column={tag_column} but the "
                                f"file has {ncols} columns")
        if len(fields) != ncols:
            raise DataError(f"{path}:{number}: {len(fields)} columns, expected {ncols} like the "
                            f"first token line; got {text!r}")
        if not words:
            start = number
        words.append(fields[0])
        tags.append(fields[tag_column] if ncols > 1 else None)
    if words:
        sentences.append(Sentence(words, tags, f"{path}:{start}"))
    if not sentences:
        raise DataError(f"{path}: no sentences (empty file, or only -DOCSTART- lines)")
    return sentences


def iob1_to_iob2(tags: list[str]) -> list[str]:
    """IOB1 (B- only between two same-type entities) -> IOB2 (every entity starts with B-)."""
    out = []
    for i, tag in enumerate(tags):
        if tag.startswith("I-"):
            prev = out[i - 1] if i else "O"
            if prev == "O" or prev[2:] != tag[2:]:
                tag = "B-" + tag[2:]
        out.append(tag)
    return out


TFDS_SPLITS = {"train": "train", "dev": "dev", "test": "test"}


def read_tfds(split: str, data_dir: str | None, name: str = "conll2003") -> list[Sentence]:
    """`conll2003` through `tfds.data_source` (IOB2 tags, names from the builder)."""
    import tensorflow_datasets as tfds
    import tensorflow_datasets.text.conll2003  # noqa: F401  (registers the builder)

    source = tfds.data_source(name, split=TFDS_SPLITS.get(split, split),
                              data_dir=data_dir or None, download=False)
    names = tfds.builder(name, data_dir=data_dir or None).info.features["ner"].feature.names
    out = []
    for i in range(len(source)):
        ex = source[i]
        words = [w.decode("utf-8") if isinstance(w, bytes) else str(w) for w in ex["tokens"]]
        where = f"tfds {name}[{split}][{i}]"
        if len(words) != len(ex["ner"]):
            raise DataError(f"{where}: {len(words)} tokens but {len(ex['ner'])} ner tags")
        if words:
            out.append(Sentence(words, [names[int(t)] for t in ex["ner"]], where))
    if not out:
        raise DataError(f"tfds {name} split {split!r} is empty")
    return out
