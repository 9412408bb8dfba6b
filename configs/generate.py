"""Generate text from a causal LM: one of our GPT/Llama workdirs or an HF decoder dir.

    python -m lmtransfer.main --config configs/generate.py:model=runs/gpt,prompt="To be" \
        --workdir runs/gpt-generate
    python -m lmtransfer.main --config configs/generate.py:model=DIR,temperature=0.8,top_p=0.9 \
        --config.generate.prompts_file=prompts.txt --workdir runs/gen

Prompts come from `prompt` (repeat with config.generate.prompts=...) and/or a file (one per
line, or JSONL with a `prompt` field); `<workdir>/generations.jsonl` gets one row each.
Temperature 0 is greedy; sampling is seeded by config.seed.
"""

import ml_collections

from lmtransfer import config as config_lib


def get_config(arg=None):
    a = config_lib.parse_arg(arg, model="", prompt="", prompts_file="", max_new_tokens=32,
                             temperature=0.0, top_k=0, top_p=1.0, batch_size=8)
    c = config_lib.finetune_config()
    c.mode = "generate"
    c.task = "clm"
    c.init_from = a.model  # lmtransfer workdir or HF decoder dir
    c.model.preset = ""
    c.generate = ml_collections.ConfigDict(dict(
        prompts=(a.prompt,) if a.prompt else (), prompts_file=a.prompts_file,
        max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
        top_p=a.top_p, batch_size=a.batch_size,
        stop_at_eos=True))  # stop a row at the tokenizer's eos token
    return c
