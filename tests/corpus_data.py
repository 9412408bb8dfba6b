"""A small generated raw-text corpus (train paragraphs + eval jsonl) and tokenizers for it."""

import json
import os

import numpy as np

WORDS = ("the king queen lord lady castle sword crown night morning river forest speak "
         "love fear war peace gold silver horse ship sea wind fire stone tower bell "
         "unbelievable remarkable wonderful thunderstorm nevertheless").split()


def make_corpus(root: str, n_train: int = 160, n_eval: int = 24, seed: int = 0) -> str:
    """train.txt: blank-line-separated paragraphs of 3..60 words (some longer than a row);
    eval.jsonl: one {"text": ...} document per line."""
    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)

    def doc():
        n = int(rng.integers(3, 60))
        words = [WORDS[i] for i in rng.integers(0, len(WORDS), n)]
        return " ".join(words).capitalize() + "."

    with open(os.path.join(root, "train.txt"), "w") as f:
        f.write("\n\n".join(doc() for _ in range(n_train)) + "\n")
    with open(os.path.join(root, "eval.jsonl"), "w") as f:
        for _ in range(n_eval):
            f.write(json.dumps({"text": doc()}) + "\n")
    return root


def corpus_tokenizer(root: str, kind: str, vocab_size: int = 200):
    from lmtransfer.data import corpus
    from lmtransfer.tokenization import train_tokenizer

    docs = list(corpus.file_documents(os.path.join(root, "train.txt"), "paragraph", "text"))
    out = os.path.join(root, f"tok_{kind}")
    if os.path.exists(out):
        from lmtransfer.tokenization import load_tokenizer
        return load_tokenizer(out)
    return train_tokenizer(kind, docs, vocab_size, out)
