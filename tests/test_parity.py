"""Golden parity: lmtransfer's BERT vs PyTorch transformers.BertModel on the real MiniLM."""

import numpy as np
import pytest
import transformers

from lmtransfer import hf, tokenization
from tests.helpers import torch_outputs

SINGLES = ["Hello world.", " ".join(["a long sentence with several different words"] * 30)]
PAIRS = [("The quick brown fox jumps over the lazy dog.", "A dog sleeps in the sun."),
         ("Is this a question?", "Yes, and this is the answer to it.")]


@pytest.fixture(scope="module")
def batch(minilm_path):
    tok = tokenization.load_tokenizer(minilm_path)
    a = tokenization.encode(tok, SINGLES, max_length=256)
    b = tokenization.encode(tok, *zip(*PAIRS, strict=True), max_length=256)
    ids, mask, types = (np.concatenate([x, y]) for x, y in
                        ((a.input_ids, b.input_ids), (a.attention_mask, b.attention_mask),
                         (a.token_type_ids, b.token_type_ids)))
    lengths = mask.sum(1)
    assert lengths.max() >= 200 and len(set(lengths.tolist())) == 4  # long + ragged batch
    assert types[2:].max() == 1  # the pairs really carry segment B
    return ids, mask, types


@pytest.fixture(scope="module")
def torch_ref(minilm_path, batch):
    model = transformers.BertModel.from_pretrained(minilm_path).eval()
    return torch_outputs(model, *batch)


@pytest.mark.parametrize("attention", ["auto", "explicit"])
def test_minilm_matches_torch(minilm_path, batch, torch_ref, attention):
    model, params = hf.load_pretrained(minilm_path, attention=attention)
    out = model.apply({"params": params}, *batch, deterministic=True)
    valid = batch[1].astype(bool)
    hidden_err = np.abs(np.asarray(out.last_hidden_state)[valid]
                        - torch_ref.last_hidden_state.numpy()[valid]).max()
    pooler_err = np.abs(np.asarray(out.pooler_output) - torch_ref.pooler_output.numpy()).max()
    print(f"MiniLM parity ({attention}): last_hidden_state {hidden_err:.2e}, "
          f"pooler {pooler_err:.2e}")
    assert hidden_err <= 1e-4
    assert pooler_err <= 1e-4


def test_bfloat16_compute_close(minilm_path, batch, torch_ref):
    model, params = hf.load_pretrained(minilm_path, dtype="bfloat16")
    assert all(p.dtype == np.float32 for p in _leaves(params))  # params stay fp32
    out = model.apply({"params": params}, *batch, deterministic=True)
    assert out.last_hidden_state.dtype == np.dtype("bfloat16")
    valid = batch[1].astype(bool)
    ref = torch_ref.last_hidden_state.numpy()[valid]
    got = np.asarray(out.last_hidden_state, np.float32)[valid]
    cos = (got * ref).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cos.min() > 0.99


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)
