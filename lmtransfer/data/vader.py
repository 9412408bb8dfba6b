"""VADER sentiment lexicon (Hutto & Gilbert 2014) as a word-polarity task, fully offline.

The lexicon ships inside the `vaderSentiment` wheel (MIT licence): 7,520 entries, each the mean
of 10 human ratings in [-4, 4]. We keep the 7,227 English words (emoticons and symbols are
excluded, and counted in the log), label each `positive` (mean > 0) or `negative`, and split by
word with a seeded permutation (80% train / 20% dev), so dev words are never seen in training.
"""

from __future__ import annotations

import functools
import importlib.resources
import logging
import re

import numpy as np

log = logging.getLogger(__name__)

LABELS = ("negative", "positive")
_WORD = re.compile(r"[a-z][a-z'-]*")


@functools.lru_cache
def lexicon() -> tuple[tuple[str, float], ...]:
    text = (importlib.resources.files("vaderSentiment") / "vader_lexicon.txt").read_text(
        encoding="utf-8", errors="replace")
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    words = tuple((w, float(mean)) for w, mean, *_ in rows if _WORD.fullmatch(w))
    log.info("VADER lexicon: %d entries, %d English words kept (emoticons/symbols excluded)",
             len(rows), len(words))
    return words


def examples(split: str, seed: int = 0, dev_fraction: float = 0.2) -> list[dict]:
    if split not in ("train", "dev"):
        raise ValueError(f"the VADER task has splits train and dev, not {split!r}")
    words = lexicon()
    order = np.random.default_rng(seed).permutation(len(words))
    n_dev = int(round(len(words) * dev_fraction))
    chosen = order[:n_dev] if split == "dev" else order[n_dev:]
    return [dict(id=words[i][0], text_a=words[i][0], text_b=None,
                 label=LABELS[int(words[i][1] > 0)], rating=words[i][1],
                 where=f"vader_lexicon.txt:{words[i][0]}") for i in sorted(chosen)]
