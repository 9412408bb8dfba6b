"""Named-entity recognition (token classification) on CoNLL-2003 or any CoNLL-style files.

    python -m lmtransfer.main --config configs/ner.py:model=minilm \
        --config.data.dir=../shared/data/conll2003/iob2 --workdir runs/conll

Args (`:k=v,...`):
  model   minilm (the packaged MiniLM), tiny (2-layer random BERT, smoke tests), or an HF dir
  recipe  bert_paper (default; batch 32, 3 epochs, 10% warmup, lr from {5e-5,4e-5,3e-5,2e-5})
          or seed (batch 16, 500 warmup steps, lr 5e-5)
  lr      the learning rate (default 5e-5)
  files   iob2: train.txt / dev.txt / test.txt (the common IOB2 copy; default)
          original: eng.train / eng.testa / eng.testb (the original IOB1 release)
  source  files (config.data.dir) or tfds (conll2003 via tfds.data_source)

Data fields (`--config.data.<field>`): files.{train,dev,test} (names in dir), tag_column
(-1 = last), labels (() = discovered from train), label_all_subwords, to_iob2 (convert IOB1
tags when reading), entity_mode (conlleval | strict), tag_scheme (for strict), eval_splits.
"""

from lmtransfer import config as config_lib
from lmtransfer.recipes import apply_model, apply_recipe

FILES = {"iob2": ("train.txt", "dev.txt", "test.txt"),
         "original": ("eng.train", "eng.testa", "eng.testb")}


def get_config(arg=None):
    a = config_lib.parse_arg(arg, model="minilm", recipe="bert_paper", lr=5e-5, files="iob2",
                             source="files")
    if a.files not in FILES:
        raise ValueError(f"files={a.files!r}; use one of {sorted(FILES)}")
    c = config_lib.finetune_config()
    c.task = "token_classification"
    c.data = config_lib.data_config(
        source=a.source, tag_column=-1, labels=(), label_all_subwords=False, to_iob2=False,
        entity_mode="conlleval", tag_scheme="IOB2", eval_splits=("dev", "test"))
    c.data.files.train, c.data.files.dev, c.data.files.test = FILES[a.files]
    apply_model(c, a.model)
    apply_recipe(c, a.recipe, a.lr)
    return c
