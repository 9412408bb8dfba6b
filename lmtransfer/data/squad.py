"""SQuAD v1.1 / v2.0 questions from the official JSON files or TFDS `squad`.

A question is a dict: id, question, context, answers (texts), starts (character offsets),
impossible (v2.0), where (file and article/paragraph/question indices, for errors).
"""

from __future__ import annotations

import json
import logging

from lmtransfer import paths
from lmtransfer.data.tables import DataError
from lmtransfer.errors import ConfigError

log = logging.getLogger(__name__)


def parse_range(spec: str, n: int, key: str) -> range:
    """"a:b" (Python slice bounds, either may be empty or negative) -> range over n items."""
    if not spec:
        return range(n)
    try:
        lo, hi = (int(x) if x.strip() else None for x in spec.split(":"))
    except ValueError:
        raise ConfigError(f"{key}={spec!r}: use 'start:stop', e.g. '0:40' or '40:'") from None
    return range(n)[slice(lo, hi)]


def read_squad(path: str, articles: str = "", key: str = "config.data.articles") -> tuple[
        list[dict], str]:
    """Questions of the articles `articles` ("a:b") of a SQuAD JSON file, and its version."""
    if not paths.exists(path):
        raise DataError(f"{path}: file not found (set config.data.dir / config.data.files.*)")
    try:
        with paths.open(path, "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a UTF-8 SQuAD JSON file ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{path}: expected {{\"data\": [articles...], \"version\": ...}}")
    version = str(doc.get("version", "1.1"))
    articles_used = parse_range(articles, len(doc["data"]), key)
    out, mismatched = [], 0
    for a in articles_used:
        for p, para in enumerate(doc["data"][a].get("paragraphs", [])):
            context = para.get("context")
            for q, qa in enumerate(para.get("qas", [])):
                where = f"{path}: data[{a}].paragraphs[{p}].qas[{q}]"
                if not isinstance(context, str) or "question" not in qa or "id" not in qa:
                    raise DataError(f"{where}: needs context, question and id")
                answers = qa.get("answers", [])
                texts = [x["text"] for x in answers]
                starts = [int(x["answer_start"]) for x in answers]
                mismatched += sum(context[s:s + len(t)] != t for s, t in zip(starts, texts,
                                                                            strict=True))
                impossible = bool(qa.get("is_impossible", False))
                out.append(dict(id=qa["id"], question=qa["question"], context=context,
                                answers=texts, starts=starts, impossible=impossible,
                                where=where))
    if not out:
        raise DataError(f"{path}: no questions in articles {articles or 'all'} "
                        f"(the file has {len(doc['data'])} articles)")
    if mismatched:
        log.warning("%s: %d answers' text differs from context[answer_start:]; training uses "
                    "answer_start", path, mismatched)
    if any(q["impossible"] for q in out):
        version = "2.0"
    return out, version


TFDS_SPLITS = {"train": "train", "dev": "validation"}


def read_tfds(split: str, data_dir: str | None, version: str = "v1.1") -> tuple[list[dict], str]:
    import tensorflow_datasets as tfds
    import tensorflow_datasets.datasets.squad.squad_dataset_builder  # noqa: F401  (registers)

    source = tfds.data_source(f"squad/{version}", split=TFDS_SPLITS.get(split, split),
                              data_dir=data_dir or None, download=False)
    text = lambda x: x.decode("utf-8") if isinstance(x, bytes) else str(x)  # noqa: E731
    out = []
    for i in range(len(source)):
        ex = source[i]
        impossible = bool(ex.get("is_impossible", False))
        out.append(dict(id=text(ex["id"]), question=text(ex["question"]),
                        context=text(ex["context"]),
                        answers=[text(t) for t in ex["answers"]["text"]],
                        starts=[int(s) for s in ex["answers"]["answer_start"]],
                        impossible=impossible, where=f"tfds squad/{version}[{split}][{i}]"))
    if not out:
        raise DataError(f"tfds squad/{version} split {split!r} is empty")
    return out, version.lstrip("v")
