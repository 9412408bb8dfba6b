"""HF decoders in and out: GPT-2, Llama, Mistral, Qwen2, every head, fp32 logits within 1e-4
of transformers; our GPT and Llama presets export so transformers loads them with no
missing keys and computes the same; export -> import is the identity."""

import json

import jax
import numpy as np
import pytest
import transformers

from lmtransfer import hf
from tests import decoder_models as dm

HEADS = [None, "lm", "classification", "token_classification", "qa"]


@pytest.mark.parametrize("head", HEADS, ids=str)
@pytest.mark.parametrize("family", list(dm.HF_FAMILIES))
def test_hf_decoder_matches_torch(tmp_path, family, head):
    torch_model = dm.make_torch(family, head)
    torch_model.save_pretrained(tmp_path)
    model, params = hf.load_pretrained(str(tmp_path), head=head)
    assert model.config.family == family and model.num_labels == 3
    ids, mask = dm.batch()
    errors = dm.max_errors(model, params, torch_model, head, ids, mask)
    assert max(errors.values()) <= 1e-4, errors


@pytest.mark.parametrize("head", HEADS, ids=str)
@pytest.mark.parametrize("preset,family", [("gpt-tiny", "gpt2"), ("llama-tiny", "llama")])
def test_our_decoder_exports_to_transformers(tmp_path, preset, family, head):
    model, params = dm.random_ours(preset, head)
    id2label = {i: f"tag{i}" for i in range(3)} if head in (
        "classification", "token_classification") else None
    out = hf.save_pretrained(model, params, str(tmp_path / "export"), id2label=id2label)
    cfg = json.loads((tmp_path / "export" / "config.json").read_text())
    cls = dm.hf_class(family, head)
    assert cfg["architectures"] == [cls]
    torch_model, info = getattr(transformers, cls).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and \
        not info["mismatched_keys"], info
    ids, mask = dm.batch()
    errors = dm.max_errors(model, params, torch_model.eval(), head, ids, mask)
    assert max(errors.values()) <= 1e-4, errors
    model2, params2 = hf.load_pretrained(out, head=head)
    assert model2.config.replace(pad_token_id=None) == model.config.replace(pad_token_id=None)
    flat1 = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    flat2 = dict(jax.tree_util.tree_flatten_with_path(params2)[0])
    assert flat1.keys() == flat2.keys()
    for path, x in flat1.items():
        np.testing.assert_array_equal(np.asarray(x), np.asarray(flat2[path]), err_msg=str(path))


@pytest.mark.parametrize("family", ["mistral", "qwen2"])
def test_other_llama_family_layouts_export(tmp_path, family):
    """Mistral (sliding window) and Qwen2 (q/k/v biases) configs export in their own layout."""
    torch_model = dm.make_torch(family, "lm")
    torch_model.save_pretrained(tmp_path / "src")
    model, params = hf.load_pretrained(str(tmp_path / "src"), head="lm")
    out = hf.save_pretrained(model, params, str(tmp_path / "export"))
    again, info = transformers.AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert type(again).__name__ == type(torch_model).__name__
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask = dm.batch()
    assert max(dm.max_errors(model, params, again.eval(), "lm", ids, mask).values()) <= 1e-4


def test_unsupported_decoder_type_is_one_clear_error(tmp_path):
    torch_model = dm.make_torch("gpt2", None)
    torch_model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["model_type"] = "falcon"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config.json: model_type 'falcon' is not supported; "
                                         r"lmtransfer reads albert, bert, deberta-v2, distilbert, "
                                         r"electra, gpt2, llama, mistral, modernbert, qwen2, "
                                         r"roberta, xlm-roberta$"):
        hf.load_pretrained(str(tmp_path))


def test_strict_loading_lists_every_problem(tmp_path):
    from safetensors.numpy import load_file, save_file

    torch_model = dm.make_torch("llama", "lm")
    torch_model.save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    tensors = load_file(file)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((3, 32), np.float32)
    tensors["model.extra.weight"] = np.zeros(2, np.float32)
    save_file(tensors, file)
    with pytest.raises(ValueError) as e:
        hf.load_pretrained(str(tmp_path), head="lm")
    msg = str(e.value)
    assert "missing tensors (1): model.layers.1.mlp.up_proj.weight" in msg
    assert "unexpected tensors (1): model.extra.weight" in msg
    assert "model.layers.0.self_attn.k_proj.weight: checkpoint (3, 32)" in msg


def test_rotary_gpt_has_no_gpt2_layout(tmp_path):
    model, params = dm.random_ours("gpt-tiny", "lm", positions="rotary")
    with pytest.raises(ValueError, match="no GPT-2 layout.*llama preset"):
        hf.save_pretrained(model, params, str(tmp_path / "x"))
    assert not (tmp_path / "x").exists()


def test_convert_mode_round_trips_a_decoder(tmp_path):
    """configs/convert.py on an HF Qwen2 dir: lmtransfer checkpoint, then HF again."""
    from lmtransfer import main
    from tests.configs_loader import load_config

    torch_model = dm.make_torch("qwen2", "lm")
    torch_model.save_pretrained(tmp_path / "src")
    c = load_config("convert.py", f"head=lm,source={tmp_path / 'src'}")
    result = main.run(c, str(tmp_path / "run"))
    again = transformers.AutoModelForCausalLM.from_pretrained(result["hf"]).eval()
    assert type(again).__name__ == "Qwen2ForCausalLM"
    ids, mask = dm.batch()
    a = dm.torch_out(again, ids, mask).logits.numpy()
    b = dm.torch_out(torch_model, ids, mask).logits.numpy()
    assert np.abs(a - b)[mask.astype(bool)].max() <= 1e-5
