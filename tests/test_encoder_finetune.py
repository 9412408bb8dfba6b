"""Fine-tuning smoke run per encoder family: a tiny random HF checkpoint (base model, so the
classification head starts fresh) and a small WordPiece tokenizer in one dir, loaded through
`init_from` like a real checkpoint; three train steps learn and the 2x2x2-sharded run equals
the single-device one."""

import jax
import numpy as np
import pytest

from lmtransfer import tokenization
from tests import encoder_models as em
from tests.glue_data import WORDS, make_glue
from tests.test_train_step import config_for, max_diff, run_steps

# XLM-R is RoBERTa's code with another model_type: its parity tests cover it.
FAMILIES = ("roberta", "distilbert", "electra", "albert", "deberta-v2", "modernbert")


@pytest.fixture(scope="module")
def glue_root(tmp_path_factory):
    return make_glue(str(tmp_path_factory.mktemp("glue")), n_train=64)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tok"))
    tokenization.train_tokenizer("wordpiece", [" ".join(WORDS)] * 4, 80, out)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_finetune_sharded_equals_unsharded(family, glue_root, tokenizer_dir, tmp_path):
    tok = tokenization.load_tokenizer(tokenizer_dir)
    assert len(tok) <= em.VOCAB and tok.pad_token_id == 0
    # Positions for the batcher's longest bucket (64) plus RoBERTa's offset.
    em.make_torch(family, None, pad_token_id=tok.pad_token_id,
                  max_position_embeddings=72).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    config = config_for(glue_root, batch_size=16)
    config.init_from = str(tmp_path)
    single_losses, single_params, _ = run_steps(config, {"data": 1})
    losses, params, state = run_steps(config, {"data": 2, "fsdp": 2, "tensor": 2})
    assert type(state.params) is dict and all(np.isfinite(losses))
    assert losses[-1] < losses[0]  # the fresh head and the encoder learn
    np.testing.assert_allclose(losses, single_losses, atol=1e-5)
    assert max_diff(params, single_params) <= 1e-5
    sharded = [x.sharding.spec for x in jax.tree.leaves(state.params)
               if x.ndim == 2 and x.shape[1] == 48]  # the MLP's input kernels
    assert sharded and all(s == jax.sharding.PartitionSpec("fsdp", "tensor") for s in sharded)
