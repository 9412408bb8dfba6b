"""Pretraining: GPT causal LM (objective=clm) or BERT masked LM (objective=mlm) on raw text.

    python -m lmtransfer.main --config configs/pretrain.py:objective=clm,model=gpt-mini \
        --config.data.train_files=../shared/data/tinyshakespeare/input.txt \
        --config.data.eval_fraction=0.1 --workdir runs/gpt_shakespeare

Args (`:k=v,...`):
  objective  clm (default) or mlm
  model      a preset: GPT gpt-tiny | gpt-mini | gpt2 | gpt2-medium (clm); BERT tiny | mini |
             minilm-l6 | bert-base | bert-large (mlm); or minilm (continue pretraining the
             packaged MiniLM with a fresh MLM head) or an HF BERT dir (mlm). Default: gpt-mini
             for clm, mini for mlm.
  tokenizer  train (default for presets: byte-level BPE for clm, WordPiece for mlm, trained
             on the train corpus into <workdir>/tokenizer) or a tokenizer dir
  steps      optimizer steps (default 2000); lr (default 5e-4, cosine decay after warmup)

Model fields: `--config.model.positions=rotary` (GPT), `model.remat`, `model.dtype=bfloat16`.

Data fields (`--config.data.<field>`): source (files | tfds), train_files / eval_files
(comma-separated paths or globs; .jsonl = one {"text": ...} per line), eval_fraction (dev =
the last fraction of the train documents when there are no eval_files), document (paragraph |
line | file: what one document of a text file is), text_field, tfds_name / tfds_train_split /
tfds_eval_split / tfds_data_dir, max_length (row length, 128), shards (8: documents are split
into this many shards; a process reads only its own, see lmtransfer.data.batching),
vocab_size / tokenizer_docs (tokenizer training), mask_rate (0.15), whole_word (mlm),
max_predictions (mlm: the MLM decoder runs on this many positions per row; -1 = the expected
masked tokens + 4 sigma, like BERT's max_predictions_per_seq; 0 = every position),
sentence_pairs ('' | nsp | sop: BERT's second objective on [CLS] A [SEP] B [SEP] rows, mlm),
store (a token store built by `python -m lmtransfer.prepare`; empty: the run tokenizes the
corpus once into <workdir>/store on its first start), prepare_workers (processes that build
the store; 0: one per core, or one for a corpus under 8 MB).

Two steps for a large corpus (docs/pretraining.md): prepare once, then train from the store:

    python -m lmtransfer.prepare --config configs/pretrain.py:objective=mlm,model=mini \
        --config.data.train_files='corpus/*.txt' --config.data.eval_files=dev.txt --out store
    python -m lmtransfer.main --config configs/pretrain.py:objective=mlm,model=mini \
        --config.data.store=store --workdir runs/mlm
"""

from lmtransfer import config as config_lib
from lmtransfer.models import gpt
from lmtransfer.recipes import apply_model

DEFAULT_MODEL = {"clm": "gpt-mini", "mlm": "mini"}


def get_config(arg=None):
    a = config_lib.parse_arg(arg, objective="clm", model="", tokenizer="train", steps=2000,
                             lr=5e-4)
    if a.objective not in DEFAULT_MODEL:
        raise ValueError(f"objective={a.objective!r}; use clm or mlm")
    model = a.model or DEFAULT_MODEL[a.objective]
    if (a.objective == "clm") != (model in gpt.PRESETS):
        raise ValueError(f"objective={a.objective} needs a "
                         f"{'GPT' if a.objective == 'clm' else 'BERT'} model; got model={model}")
    c = config_lib.finetune_config()
    c.task = a.objective
    c.data = config_lib.data_config(
        source="files", train_files="", eval_files="", eval_fraction=0.0, document="paragraph",
        text_field="text", tfds_name="", tfds_train_split="train", tfds_eval_split="",
        shards=8, vocab_size=8192, tokenizer_docs=0, mask_rate=0.15, whole_word=False,
        max_predictions=-1, sentence_pairs="", store="", prepare_workers=0)
    if model in ("minilm",) or "/" in model:
        apply_model(c, model)  # pretrained BERT weights and their tokenizer
    else:
        c.init_from, c.model.preset = "", model
        if a.tokenizer == "train":
            c.model.tokenizer = "bpe" if a.objective == "clm" else "wordpiece"
    if a.tokenizer != "train":
        c.model.tokenizer = a.tokenizer
    if a.objective == "clm":
        c.model.positions = "learned"  # or rotary (GPT only)
    c.train.steps, c.train.batch_size, c.train.eval_batch_size = a.steps, 32, 32
    c.train.eval_every, c.train.checkpoint_every = 200, 500
    c.optim.update(lr=a.lr, warmup_steps=100, warmup_ratio=0.0, decay="cosine",
                   weight_decay=0.01, b2=0.98)
    return c
