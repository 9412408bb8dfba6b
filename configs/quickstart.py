"""Quickstart: transfer learning in a few minutes on a laptop CPU, offline.

    python -m lmtransfer.main --config configs/quickstart.py --workdir runs/quickstart

Task: is an English word positive or negative? Labels are the mean of 10 human ratings from
the VADER sentiment lexicon (shipped inside the vaderSentiment wheel); dev words are never seen
in training. The packaged pretrained MiniLM is fine-tuned on it, and the same architecture is
trained from scratch with the same recipe; both dev accuracies are printed side by side.
"""

from lmtransfer import config as config_lib
from lmtransfer.recipes import apply_model


def get_config(arg=None):
    a = config_lib.parse_arg(arg, epochs=3.0, lr=1e-4, batch_size=32)
    c = config_lib.finetune_config()
    c.mode = "quickstart"
    c.task = "classification"
    c.data.source = "vader"
    c.data.max_length = 16
    c.data.buckets = (8, 16)
    apply_model(c, "minilm")
    c.model.preset = "minilm-l6"  # the scratch run: same architecture, random init
    c.train.batch_size = a.batch_size
    c.train.eval_batch_size = 256
    c.train.epochs = a.epochs
    c.train.log_every = 20
    c.train.checkpoint_every = 0
    c.optim.lr = a.lr
    c.optim.warmup_ratio = 0.1
    return c
