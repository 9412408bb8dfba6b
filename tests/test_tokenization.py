"""Fast tokenizer from a checkpoint dir: pairs, longest_first truncation reported, offsets."""

import numpy as np
import pytest

from lmtransfer import tokenization


@pytest.fixture(scope="module")
def tok(minilm_path):
    return tokenization.load_tokenizer(minilm_path)


def test_single_and_pair(tok):
    enc = tokenization.encode(tok, ["hello world", "a b"], ["how are you", "c"], max_length=12,
                              return_offsets=True)
    assert enc.input_ids.shape == (2, 12) and enc.input_ids.dtype == np.int32
    assert tok.convert_ids_to_tokens(enc.input_ids[0][:9].tolist()) == [
        "[CLS]", "hello", "world", "[SEP]", "how", "are", "you", "[SEP]", "[PAD]"]
    assert enc.token_type_ids[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    assert enc.attention_mask[0].sum() == 8
    assert enc.offsets.shape == (2, 12, 2)
    assert enc.offsets[0, 2].tolist() == [6, 11]  # "world" in "hello world"
    assert enc.num_truncated == 0


def test_longest_first_truncation_is_reported(tok, caplog):
    long_a, short_b = "one two three four five six seven eight", "nine ten"
    with caplog.at_level("WARNING", logger="lmtransfer.tokenization"):
        enc = tokenization.encode(tok, [long_a, "x"], [short_b, "y"], max_length=8)
    tokens = tok.convert_ids_to_tokens(enc.input_ids[0].tolist())
    # longest_first trims the longer segment first: both segments keep something.
    assert tokens == ["[CLS]", "one", "two", "three", "[SEP]", "nine", "ten", "[SEP]"]
    assert enc.truncated.tolist() == [True, False]
    assert "1 of 2 examples were longer than max_length=8" in caplog.text


def test_tokenizer_dir_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        tokenization.load_tokenizer(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="3 texts but 1 text pairs"):
        tokenization.encode(None, ["a", "b", "c"], ["x"], max_length=8)
