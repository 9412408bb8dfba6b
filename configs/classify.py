"""Classification or regression on your own TSV / CSV / JSONL files, no code change.

    python -m lmtransfer.main --config configs/classify.py:model=minilm \
        --config.data.files.train=train.csv --config.data.files.dev=dev.csv \
        --config.data.text_column=review --config.data.label_column=stars --workdir runs/mine

Labels are discovered from the training file (sorted); set --config.data.labels to fix them,
--config.data.regression=True for a numeric target, --config.data.text_pair_column for pairs.
"""

from lmtransfer import config as config_lib
from lmtransfer.recipes import apply_model, apply_recipe


def get_config(arg=None):
    a = config_lib.parse_arg(arg, model="minilm", recipe="seed", lr=0.0)
    c = config_lib.finetune_config()
    c.data.source = "files"
    apply_model(c, a.model)
    apply_recipe(c, a.recipe, a.lr)
    return c
