"""Generation with the KV cache: greedy tokens equal transformers' `generate` on the same
weights (our GPT and Llama exported, HF Mistral with a sliding window loaded), batched rows
equal single ones, sampling is seeded, eos stops a row, the CLI mode writes its file."""

import json

import numpy as np
import pytest
import torch
import transformers

from lmtransfer import hf
from lmtransfer.generate import generate
from tests import decoder_models as dm

PROMPTS = [[5, 9, 13, 2, 7], [11, 3], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49]]


def hf_greedy(torch_model, prompt, n):
    out = torch_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                               dtype=torch.long), max_new_tokens=n, do_sample=False,
                               pad_token_id=dm.PAD)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("source", ["gpt-tiny", "llama-tiny", "mistral"])
def test_greedy_generation_equals_transformers(tmp_path, source):
    if source == "mistral":  # sliding window 5 < prompt + 12 new tokens
        torch_model = dm.make_torch("mistral", "lm")
        torch_model.save_pretrained(tmp_path)
        model, params = hf.load_pretrained(str(tmp_path), head="lm")
    else:
        model, params = dm.random_ours(source, "lm")
        torch_model = transformers.AutoModelForCausalLM.from_pretrained(
            hf.save_pretrained(model, params, str(tmp_path / "hf"))).eval()
    ours = generate(model, params, PROMPTS, 12)
    for prompt, tokens in zip(PROMPTS, ours, strict=True):
        assert tokens == hf_greedy(torch_model, prompt, 12)


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    model, params = dm.random_ours("llama-tiny", "lm")
    greedy = generate(model, params, PROMPTS, 8)
    kw = dict(temperature=1.0, top_k=20, top_p=0.95)
    a = generate(model, params, PROMPTS, 8, seed=1, **kw)
    assert a == generate(model, params, PROMPTS, 8, seed=1, **kw)
    assert a != generate(model, params, PROMPTS, 8, seed=2, **kw)
    assert generate(model, params, PROMPTS, 8, temperature=1.0, top_k=1, seed=3) == greedy
    assert generate(model, params, PROMPTS, 8, temperature=1.0, top_p=1e-6, seed=3) == greedy
    # One prompt alone gives what it gives inside the batch (left padding is invisible).
    assert generate(model, params, PROMPTS[1:2], 8) == greedy[1:2]


def test_eos_stops_a_row_and_bad_prompts_are_refused():
    model, params = dm.random_ours("gpt-tiny", "lm")
    greedy = generate(model, params, PROMPTS, 8)
    eos = greedy[0][2]
    stopped = generate(model, params, PROMPTS, 8, eos_token_id=eos)
    assert stopped[0] == greedy[0][:greedy[0].index(eos) + 1]
    limit = model.config.max_position_embeddings
    with pytest.raises(ValueError, match=r"prompts.txt:3: 125 prompt tokens \+ "
                                         r"max_new_tokens=8 pass the model's 128 positions"):
        generate(model, params, [[1], [2], [3] * (limit - 3)], 8,
                 where=["prompts.txt:1", "prompts.txt:2", "prompts.txt:3"])
    with pytest.raises(ValueError, match="prompt 0: the prompt is empty"):
        generate(model, params, [[]], 4)


def test_generate_mode_writes_generations(tmp_path):
    from lmtransfer import main, tokenization
    from tests.configs_loader import load_config

    tok = tokenization.train_tokenizer("bpe", ["to be or not to be, that is the question"] * 50,
                                       300, str(tmp_path / "tok"))
    model, params = dm.random_ours("gpt-tiny", "lm", vocab_size=384)
    src = hf.save_pretrained(model, params, str(tmp_path / "gpt"), tokenizer=tok)
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "to be"}\n\n{"prompt": "that is"}\n')
    config = load_config("generate.py", f"model={src},prompt=the question,"
                         "max_new_tokens=5")
    with config.unlocked():
        config.generate.prompts_file = str(tmp_path / "prompts.jsonl")
    result = main.run(config, str(tmp_path / "run"))
    rows = [json.loads(x) for x in open(result["generations"])]
    assert [r["where"] for r in rows] == ["config.generate.prompts[0]",
                                          f"{tmp_path}/prompts.jsonl:1",
                                          f"{tmp_path}/prompts.jsonl:3"]
    ids = [tok(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
    expected = generate(model, params, ids, 5, eos_token_id=tok.eos_token_id)
    assert [r["tokens"] for r in rows] == expected
    assert all(isinstance(r["completion"], str) for r in rows)
    assert np.sum([len(r["tokens"]) for r in rows]) == result["new_tokens"]
