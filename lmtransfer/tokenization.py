"""Fast (Rust) tokenizers from a checkpoint directory, and fixed-shape numpy encodings.

Truncation is never silent: `encode` reports how many examples were cut, and callers log it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

import numpy as np

from lmtransfer.errors import ConfigError, NotFound

log = logging.getLogger(__name__)


def load_tokenizer(path: str):
    """`AutoTokenizer.from_pretrained(path)` offline, and it must be a fast tokenizer.

    (transformers 5 `BertTokenizer(vocab_file=...)` silently builds a 5-token vocabulary, so
    tokenizers are only ever loaded from a directory; a hub id is fetched to one first.)
    """
    from transformers import AutoTokenizer

    from lmtransfer.hf import hub

    path = hub.resolve(path, "path", weights=False)  # a hub id -> its cached snapshot dir
    if not os.path.isdir(path):
        raise NotFound(f"{path}: not a directory with tokenizer files "
                       "(tokenizer.json or vocab.txt)")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not tok.is_fast:
        raise ConfigError(f"{path}: only fast tokenizers are supported (offsets are needed for "
                          "QA and NER); add a tokenizer.json")
    return tok


def set_padding(tok, pad_token: str = "", key: str = "config.model.pad_token"):
    """Makes the tokenizer's padding explicit: `pad_token` (a token of its vocabulary) if
    given, else its own; padding goes on the right (length buckets cut the right end, and
    decoder heads pool at the last real token). GPT-2/Llama tokenizers have no pad token:
    then `key` must name one (its eos token is the usual choice; padded positions are
    masked, so the choice does not change results)."""
    if pad_token:
        if pad_token not in tok.get_vocab():
            raise ConfigError(f"{key}={pad_token!r} is not a token of the tokenizer "
                              f"({tok.name_or_path}); use one of its tokens, e.g. its eos "
                              f"token {tok.eos_token!r}")
        tok.pad_token = pad_token
    elif tok.pad_token is None:
        raise ConfigError(f"the tokenizer ({tok.name_or_path}) has no pad token; set {key} to "
                          f"one of its tokens (e.g. its eos token {tok.eos_token!r}: padded "
                          "positions are masked, so any token the model knows will do)")
    tok.padding_side = "right"
    return tok


def word_tokenizer(tok):
    """`tok` for pre-split words (`tok(words, is_split_into_words=True)`, as NER does): every
    word must get the pieces it has inside running text, i.e. after a space. Byte-level BPE
    (GPT-2, RoBERTa, ModernBERT) and SentencePiece's Metaspace with prepend_scheme "never"
    see a word start only in that space, so they get a copy of `tok` that puts one before
    every word (RoBERTa's `add_prefix_space=True`, which transformers 5 neither demands for
    pre-split words nor applies to a plain tokenizer.json such as ModernBERT's). WordPiece
    ignores spaces and Metaspace otherwise marks every word with "▁": `tok` itself."""
    import copy
    import json

    from tokenizers import normalizers

    pre = tok.backend_tokenizer.pre_tokenizer
    state = json.loads(pre.__getstate__()) if pre is not None else {"type": None}
    members = state["pretokenizers"] if state["type"] == "Sequence" else [state]
    if not any(m["type"] == "ByteLevel" or m.get("prepend_scheme") == "never"
               for m in members):
        return tok
    # A last normalizer rather than ByteLevel's own add_prefix_space, which would also space
    # every piece that a Split before it makes (Llama-3-style pre-tokenizers).
    tok = copy.deepcopy(tok)
    backend, space = tok.backend_tokenizer, normalizers.Prepend(" ")
    backend.normalizer = (space if backend.normalizer is None
                          else normalizers.Sequence([backend.normalizer, space]))
    log.info("pre-split words are tokenized after a space, their form inside a sentence")
    return tok


def special_tokens(tok) -> tuple[list[int], list[int]]:
    """The ids the tokenizer's template puts before and after one text: ([CLS], [SEP]) for
    BERT, ([bos], []) for Llama, ([], []) for GPT-2."""
    inner = tok("a", add_special_tokens=False)["input_ids"]
    outer = tok("a", add_special_tokens=True)["input_ids"]
    for i in range(len(outer) - len(inner) + 1):
        if outer[i:i + len(inner)] == inner:
            return outer[:i], outer[i + len(inner):]
    raise ValueError(f"{tok.name_or_path}: cannot find a text inside its special tokens")


@dataclasses.dataclass
class Encoding:
    """Numpy int32 arrays of shape [n, max_length]; `offsets` is [n, max_length, 2] or None."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    offsets: np.ndarray | None
    truncated: np.ndarray  # bool [n]: the example did not fit in max_length

    @property
    def num_truncated(self) -> int:
        return int(self.truncated.sum())


def encode(tokenizer, texts: Sequence[str], text_pairs: Sequence[str] | None = None, *,
           max_length: int, truncation: str = "longest_first", return_offsets: bool = False,
           what: str = "examples") -> Encoding:
    """Encodes sentences (or pairs) padded to `max_length` with `[CLS] a [SEP] (b [SEP])`.

    `truncation` is an HF strategy (`longest_first`, `only_first`, `only_second`); examples
    that were cut are counted in `Encoding.truncated` and logged.
    """
    texts = list(texts)
    pairs = list(text_pairs) if text_pairs is not None else None
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} text pairs")
    enc = tokenizer(texts, pairs, max_length=max_length, truncation=truncation,
                    padding="max_length", return_offsets_mapping=return_offsets,
                    return_token_type_ids=True, return_attention_mask=True)
    full = tokenizer(texts, pairs, truncation=False, return_attention_mask=False,
                     return_token_type_ids=False, verbose=False)
    truncated = np.array([len(ids) > max_length for ids in full["input_ids"]], dtype=bool)
    out = Encoding(
        input_ids=np.asarray(enc["input_ids"], np.int32),
        attention_mask=np.asarray(enc["attention_mask"], np.int32),
        token_type_ids=np.asarray(enc["token_type_ids"], np.int32),
        offsets=np.asarray(enc["offset_mapping"], np.int32) if return_offsets else None,
        truncated=truncated,
    )
    if out.num_truncated:
        log.warning("%d of %d %s were longer than max_length=%d and were truncated (%s)",
                    out.num_truncated, len(texts), what, max_length, truncation)
    return out


TOKENIZER_KINDS = ("wordpiece", "bpe")


def train_tokenizer(kind: str, texts, vocab_size: int, out_dir: str):
    """Trains a tokenizer on `texts` with the `tokenizers` library and saves it (an HF fast
    tokenizer dir, loadable by `load_tokenizer`): `wordpiece` is BERT's (lower-cased,
    `[CLS] a [SEP] b [SEP]` with token types), `bpe` is GPT-2's byte-level BPE (no unknown
    tokens; `<|endoftext|>` ends each document)."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    if kind == "wordpiece":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator(texts, trainers.WordPieceTrainer(
            vocab_size=vocab_size, special_tokens=specials, show_progress=False))
        cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
        names = dict(unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                     sep_token="[SEP]", mask_token="[MASK]")
    elif kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        tok.train_from_iterator(texts, trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=["<|endoftext|>"], show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        names = dict(eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                     pad_token="<|endoftext|>")
    else:
        raise ValueError(f"tokenizer kind {kind!r}; use one of {TOKENIZER_KINDS}")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **names)
    fast.save_pretrained(out_dir)
    return load_tokenizer(out_dir)
