"""Extractive question answering on SQuAD v1.1 / v2.0 JSON files (or TFDS `squad`).

    python -m lmtransfer.main --config configs/squad.py:model=minilm \
        --config.data.dir=/path/to/squad --workdir runs/squad

Args (`:k=v,...`):
  model   minilm (the packaged MiniLM), tiny (2-layer random BERT, smoke tests), or an HF dir
  recipe  bert_paper (default; batch 32, 10% warmup; 3 epochs, lr 5e-5 as the paper's
          SQuAD v1.1 runs) or seed (batch 16, 500 warmup steps, lr 5e-5)
  lr      the learning rate (default 5e-5)
  epochs  training epochs (default 3; the paper used 2 for SQuAD v2.0)
  layout  official: train-v1.1.json for train, dev-v1.1.json for dev (default)
          dev_split: only the dev file, which is all this machine has: train on its first 40
          articles, evaluate on the last 8 (`config.data.articles.*`)
  source  files (config.data.dir) or tfds (squad/<config.data.tfds_version>)

Data fields (`--config.data.<field>`): files.{train,dev,test}, articles.{train,dev,test}
("a:b" article ranges), max_length (384), doc_stride (128 tokens of overlap between windows),
max_query_length (64), max_answer_length (30), n_best (20), null_threshold (v2.0, 0.0).
"""

from lmtransfer import config as config_lib
from lmtransfer.recipes import apply_model, apply_recipe

LAYOUTS = {
    "official": dict(train=("train-v1.1.json", ""), dev=("dev-v1.1.json", "")),
    "dev_split": dict(train=("dev-v1.1.json", "0:40"), dev=("dev-v1.1.json", "40:")),
}


def get_config(arg=None):
    a = config_lib.parse_arg(arg, model="minilm", recipe="bert_paper", lr=5e-5, epochs=3.0,
                             layout="official", source="files")
    if a.layout not in LAYOUTS:
        raise ValueError(f"layout={a.layout!r}; use one of {sorted(LAYOUTS)}")
    c = config_lib.finetune_config()
    c.task = "qa"
    c.data = config_lib.data_config(
        source=a.source, tfds_version="v1.1", doc_stride=128, max_query_length=64,
        max_answer_length=30, n_best=20, null_threshold=0.0)
    c.data.max_length = 384
    c.data.articles = config_lib.ml_collections.ConfigDict(dict(train="", dev="", test=""))
    for split, (name, articles) in LAYOUTS[a.layout].items():
        c.data.files[split], c.data.articles[split] = name, articles
    apply_model(c, a.model)
    apply_recipe(c, a.recipe, a.lr)
    c.train.epochs = a.epochs
    return c
