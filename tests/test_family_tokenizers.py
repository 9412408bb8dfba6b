"""The tokenizer of every encoder family, built here with the `tokenizers` library and wrapped
the way its hub checkpoints load in transformers 5 (BERT/ELECTRA/DistilBERT WordPiece, RoBERTa
byte-level BPE, ModernBERT's plain tokenizer.json byte-level BPE, XLM-R / ALBERT / DeBERTa-v3
SentencePiece Unigram), saved and read back through `tokenization.load_tokenizer`: sentence
pairs in the family's format, NER word alignment (every word in its mid-sentence form, words
without pieces predicted "O"), SQuAD answer spans recovered exactly from offsets."""

import json
import logging

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from lmtransfer import tokenization
from lmtransfer.data import conll
from lmtransfer.tasks import make_task
from tests.configs_loader import load_config

_WORDS = ("the a of in river city bridge market north stone tower music garden station winter "
          "museum forest peter johanson visited summer said today talks with saarland bruecke "
          "harbour 1999 2001").split()


def _corpus(n=300, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = [str(w) for w in rng.choice(_WORDS, rng.integers(4, 12))]
        words[0] = words[0].capitalize()
        words[rng.integers(1, len(words) - 1)] += ","
        out.append(" ".join(words) + ".")
    return out


def _bpe(specials):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(
        vocab_size=330, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def _unigram(specials, unk):
    """(piece, score) pairs with the specials first, as in the family's spm model."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(_corpus(), trainers.UnigramTrainer(
        vocab_size=120, special_tokens=specials, unk_token=unk, show_progress=False))
    return [(p, float(s)) for p, s in json.loads(tok.to_str())["model"]["vocab"]]


def _wordpiece():
    from transformers import DistilBertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator([s.lower() for s in _corpus()], trainers.WordPieceTrainer(
        vocab_size=120, special_tokens=specials, show_progress=False))
    return DistilBertTokenizer(vocab=tok.get_vocab())


def _roberta():
    from transformers import RobertaTokenizer

    tok = _bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    merges = [tuple(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    return RobertaTokenizer(vocab=tok.get_vocab(), merges=merges)


def _modernbert():
    """ModernBERT's tokenizer.json (OLMo's byte-level BPE, a [CLS]/[SEP] template and no
    offset trimming), loaded as a plain PreTrainedTokenizerFast."""
    from transformers import PreTrainedTokenizerFast

    tok = _bpe(["|||IP_ADDRESS|||", "<|padding|>", "[CLS]", "[SEP]", "[MASK]", "[UNK]"])
    tok.decoder = decoders.ByteLevel()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:0 [SEP]:0",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="<|padding|>", mask_token="[MASK]",
                                   unk_token="[UNK]")


def _xlm_roberta():
    from transformers import XLMRobertaTokenizer

    return XLMRobertaTokenizer(vocab=_unigram(["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                              "<unk>"))


def _albert():
    from transformers import AlbertTokenizer

    return AlbertTokenizer(vocab=_unigram(["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"],
                                          "<unk>"))


def _deberta_v3():
    from transformers import DebertaV2Tokenizer

    return DebertaV2Tokenizer(vocab=_unigram(["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"],
                                             "[UNK]"))


# kind -> (builder, pair template (A/B = the two texts), pair token types, word-start marker)
KINDS = {
    "wordpiece": (_wordpiece, "[CLS] A [SEP] B [SEP]", True, ""),
    "roberta": (_roberta, "<s> A </s> </s> B </s>", False, "Ġ"),
    "modernbert": (_modernbert, "[CLS] A [SEP] B [SEP]", False, "Ġ"),
    "xlm-roberta": (_xlm_roberta, "<s> A </s> </s> B </s>", False, "▁"),
    "albert": (_albert, "[CLS] A [SEP] B [SEP]", True, "▁"),
    "deberta-v3": (_deberta_v3, "[CLS] A [SEP] B [SEP]", True, "▁"),
}


@pytest.fixture(scope="module")
def tokenizers_(tmp_path_factory):
    out = {}
    for kind, (build, *_) in KINDS.items():
        path = str(tmp_path_factory.mktemp(kind))
        build().save_pretrained(path)
        out[kind] = tokenization.load_tokenizer(path)
    return out


# ---------------------------------------------------------------------------------- pairs

@pytest.mark.parametrize("kind", KINDS)
def test_sentence_pairs_in_the_family_format(tokenizers_, kind):
    tok, (_, template, typed, _) = tokenizers_[kind], KINDS[kind]
    a, b = "Peter visited the city.", "The museum said today."
    enc = tokenization.encode(tok, [a], [b], max_length=48)
    n = int(enc.attention_mask[0].sum())
    pieces = {"A": tok.tokenize(a), "B": tok.tokenize(b)}
    want = [p for t in template.split() for p in pieces.get(t, [t])]
    assert tok.convert_ids_to_tokens(enc.input_ids[0, :n].tolist()) == want
    assert (enc.input_ids[0, n:] == tok.pad_token_id).all()
    first = template.split().index("B")
    first = len([p for t in template.split()[:first] for p in pieces.get(t, [t])])
    types = enc.token_type_ids[0, :n].tolist()
    assert types == ([0] * first + [1] * (n - first) if typed else [0] * n)
    pre, post = tokenization.special_tokens(tok)
    assert tok.convert_ids_to_tokens(pre + post) == [template.split()[0],
                                                     template.split()[-1]]


# ---------------------------------------------------------------------------------- NER

NER_WORDS = ["Peter", "Johanson", "\xa0", "visited", "Saarbruecken", "\u200b", "today", "."]
NER_TAGS = ["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "O", "O"]
# Words with no piece: whitespace-like words (pre-split sources such as tfds can give them)
# vanish in every normalizer/pre-tokenizer but byte-level BPE's, which keeps every byte;
# BERT's normalizer also drops the zero-width space.
NO_PIECE = {"wordpiece": {2, 5}, "roberta": set(), "modernbert": set(), "xlm-roberta": {2},
            "albert": {2}, "deberta-v3": {2}}


def _running_text(tok, words):
    """The ids of `words` inside a sentence: each after a space."""
    return tok(" " + " ".join(words), add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("kind", KINDS)
def test_ner_words_align_in_their_mid_sentence_form(tokenizers_, kind, caplog):
    tok, marker = tokenizers_[kind], KINDS[kind][3]
    c = load_config("ner.py", "model=tiny")
    c.data.labels = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
    task = make_task(c, tok)
    sentence = conll.Sentence(NER_WORDS, NER_TAGS, "test:1")
    with caplog.at_level(logging.WARNING, logger="lmtransfer.tasks.token_classification"):
        split = task._featurize("train", [sentence])
    f, first = split.features, split.examples[0]["first"]
    ids = f["input_ids"][0, :f["length"][0]].tolist()
    # Each word's pieces are those it has inside running text ("Ġword" / "▁word"), the
    # first word's too.
    inner = ids[len(task.prefix):len(ids) - len(task.suffix)]
    assert inner == _running_text(tok, NER_WORDS)
    assert (task.word_tokenizer is tok) == (marker != "Ġ")  # only byte-level needs a copy
    empty = {j for j, p in enumerate(first) if p < 0}
    assert empty == NO_PIECE[kind]
    # Each word's label sits on its first piece only, at the right place after the words
    # with no piece.
    spans = [(p, j) for j, p in enumerate(first) if p >= 0]
    ends = [p for p, _ in spans[1:]] + [len(ids) - len(task.suffix)]
    mask, labels = f["label_mask"][0], f["labels"][0]
    for (p, j), end in zip(spans, ends, strict=True):
        pieces = tok.convert_ids_to_tokens(ids[p:end])
        assert (task.labels[labels[p]], mask[p]) == (NER_TAGS[j], 1), (j, pieces)
        assert not mask[p + 1:end].any(), (j, pieces)
        if marker and NER_WORDS[j].strip():
            assert pieces[0].startswith(marker), (j, pieces)
        if NER_WORDS[j] == "Saarbruecken":
            assert len(pieces) > 1
    assert int(mask.sum()) == len(spans)
    # Gold labels fed back as predictions give every word its tag; a word without a piece
    # is "O" and counted in the log.
    pred = np.where(f["label_mask"] > 0, f["labels"], 0)
    assert task.word_predictions(split, pred)[0] == [
        "O" if j in empty else t for j, t in enumerate(NER_TAGS)]
    assert (f"{len(empty)} words tokenize to nothing" in caplog.text) == bool(empty)


def _metaspace_never():
    from transformers import PreTrainedTokenizerFast

    vocab = _unigram(["<pad>", "<unk>", "<s>", "</s>"], "<unk>")
    tok = Tokenizer(models.Unigram(vocab, unk_id=1))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")


def _xlm_roberta_no_prefix():
    from transformers import XLMRobertaTokenizer

    return XLMRobertaTokenizer(vocab=_unigram(["<s>", "<pad>", "</s>", "<unk>"], "<unk>"),
                               add_prefix_space=False)


@pytest.mark.parametrize("build", [_metaspace_never, _xlm_roberta_no_prefix])
def test_metaspace_that_never_prepends_gets_words_after_a_space(build, tmp_path):
    build().save_pretrained(str(tmp_path))
    tok = tokenization.load_tokenizer(str(tmp_path))
    words = ["Peter", "visited", "the", "museum"]
    got = tokenization.word_tokenizer(tok)(words, is_split_into_words=True,
                                           add_special_tokens=False)["input_ids"]
    assert got == _running_text(tok, words)
    # Without a whitespace split first, a bare word would lose its "▁".
    plain = tok(words, is_split_into_words=True, add_special_tokens=False)["input_ids"]
    assert (plain == got) == (build is _xlm_roberta_no_prefix)


# ---------------------------------------------------------------------------------- QA

CONTEXT = "Peter Johanson visited Saarbruecken in the summer of 1999, the museum said."
ANSWERS = ["Saarbruecken", "visited Saarbruecken", "1999", "Peter", "museum said."]


@pytest.mark.parametrize("kind", KINDS)
def test_qa_answer_spans_are_exact(tokenizers_, kind, tmp_path):
    tok = tokenizers_[kind]
    qas = [{"id": f"q{i}", "question": "Where did Peter go?",
            "answers": [{"text": a, "answer_start": CONTEXT.index(a)}]}
           for i, a in enumerate(ANSWERS)]
    with open(tmp_path / "squad.json", "w") as fh:
        json.dump({"version": "1.1", "data": [{"title": "t", "paragraphs": [
            {"context": CONTEXT, "qas": qas}]}]}, fh)
    c = load_config("squad.py", "model=tiny,layout=dev_split")
    c.data.dir, c.data.max_length, c.data.doc_stride = str(tmp_path), 96, 32
    c.data.files.train = c.data.files.dev = "squad.json"
    task = make_task(c, tok)
    split = task.load("train")
    f = split.features
    assert len(split) == len(ANSWERS)
    start = np.full(f["input_ids"].shape, -5.0, np.float32)
    end = start.copy()
    for row, e in enumerate(split.examples):
        s, t = f["start_positions"][row], f["end_positions"][row]
        answer = ANSWERS[e["record"]]
        lo = CONTEXT.index(answer)
        assert 0 < s <= t
        # The target's first token holds the answer's first character (a lone "Ġ"/"▁" that
        # holds only the space before it is skipped), its last token the last one.
        assert e["offsets"][s][0] <= lo < e["offsets"][s][1]
        assert e["offsets"][t][0] < lo + len(answer) <= e["offsets"][t][1]
        start[row, s], end[row, t] = 5.0, 5.0
    decoded = task.decode(split, {"start_logits": start, "end_logits": end})
    assert [decoded[f"q{i}"]["text"] for i in range(len(ANSWERS))] == ANSWERS
    # A start predicted on a lone "Ġ"/"▁" piece before the answer decodes to the same text.
    for row in range(len(split)):
        s = f["start_positions"][row]
        if tok.convert_ids_to_tokens(int(f["input_ids"][row, s - 1])) in ("Ġ", "▁"):
            start[row, s - 1] = 6.0
    decoded = task.decode(split, {"start_logits": start, "end_logits": end})
    assert [decoded[f"q{i}"]["text"] for i in range(len(ANSWERS))] == ANSWERS
