"""Generative fine-tuning of a causal LM (loss on the response only), and zero-/few-shot
likelihood scoring of labelled data.

    # SST-2 as prompt -> "negative"/"positive", scored by likelihood on dev
    python -m lmtransfer.main --config configs/sft.py:model=runs/gpt,task=sst2 \
        --config.data.dir=/path/to/glue_data --workdir runs/gpt-sft-sst2
    # 8-shot accuracy of the same model with no training (eval mode, fresh workdir)
    python -m lmtransfer.main --config configs/sft.py:model=runs/gpt,task=sst2,shots=8 \
        --config.mode=eval --config.data.dir=/path/to/glue_data --workdir runs/gpt-8shot
    # your own prompt/response pairs (TSV/CSV/JSONL)
    python -m lmtransfer.main --config configs/sft.py:model=DIR \
        --config.data.files.train=train.jsonl --config.data.files.dev=dev.jsonl \
        --config.data.prompt_column=question --config.data.response_column=answer --workdir W

Args: model (our decoder workdir, an HF decoder dir, or a preset for random init), task (a
GLUE task with a template and verbalizers below, or "" for prompt/response files), shots,
lr, recipe (configs/glue.py's).
"""

from lmtransfer import config as config_lib
from lmtransfer.recipes import apply_model, apply_recipe

# GLUE task -> (template over text_a/text_b, one verbalizer per label in the task's order)
PROMPTS = {
    "sst2": ("Review: {text_a}\nSentiment:", ("negative", "positive")),
    "cola": ("Sentence: {text_a}\nIs this sentence grammatical? Answer:", ("no", "yes")),
    "mrpc": ("Sentence 1: {text_a}\nSentence 2: {text_b}\nDo they mean the same? Answer:",
             ("no", "yes")),
    "rte": ("{text_a}\nQuestion: {text_b} True or False?\nAnswer:", ("True", "False")),
    "qnli": ("Question: {text_a}\nSentence: {text_b}\nDoes the sentence answer the question? "
             "Answer:", ("yes", "no")),
}


def get_config(arg=None):
    a = config_lib.parse_arg(arg, model="gpt-tiny", task="", shots=0, recipe="seed", lr=0.0,
                             source="glue")
    c = config_lib.finetune_config()
    c.task = "sft"
    apply_model(c, a.model)
    apply_recipe(c, a.recipe, a.lr)
    c.optim.warmup_steps, c.optim.warmup_ratio = 0, 0.1
    c.data.update(dict(
        prompt_column="prompt", response_column="response",
        template="{text_a}", verbalizers=(),  # labelled data: one response per label
        separator=" ",  # between prompt and response
        chat_template="auto",  # auto: the tokenizer's chat template when it has one
        shots=0, shots_seed=0, shot_separator="\n\n",
        score="sum"))  # candidate score: sum (or mean) of its tokens' log-likelihoods
    c.data.max_length = 256
    if a.task:
        if a.task not in PROMPTS:
            raise ValueError(f"task={a.task!r} has no template; use one of {sorted(PROMPTS)} "
                             "or set config.data.template and config.data.verbalizers")
        c.data.source, c.data.glue_task = a.source, a.task
        c.data.template, c.data.verbalizers = PROMPTS[a.task]
    else:
        c.data.source = "files"
    c.data.shots = a.shots
    return c
