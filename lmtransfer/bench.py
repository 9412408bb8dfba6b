"""Fine-tuning step throughput: lmtransfer (JAX) beside PyTorch `transformers`, same run.

    python -m lmtransfer.bench [--model HF_DIR] [--batch 32] [--lengths 32,64,128] [--steps 5]

Both sides run one full training step (forward, backward, AdamW update, dropout on) of a
sequence classifier on the same fixed-shape batch; timings alternate between the two so
background load hits both alike. Compilation / warm-up steps are excluded. FLOPs are analytic
(6 x matmul params x tokens + attention), so TFLOP/s and MFU are comparable across frameworks.
The peer needs torch (`pip install -e ".[test]"`).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmtransfer import perf


def train_flops(model, batch: int, length: int) -> float:
    return perf.train_flops_per_token(model, length) * batch * length


def _timeit(fn, steps):
    fn()  # warm-up / compile
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def lmtransfer_step(path, batch, length):
    from lmtransfer import hf
    from lmtransfer.train.state import TrainState
    from lmtransfer.train.step import make_train_step

    model, params = hf.load_pretrained(path, head="classification", num_labels=2)

    class Loss:
        def prepare(self, batch, rng):
            return batch

        def loss(self, out, b):
            ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, b["label"])
            return jnp.sum(ce * b["weights"]), jnp.sum(b["weights"])

    tx = optax.adamw(2e-5, weight_decay=0.01)
    step = jax.jit(make_train_step(model, Loss(), tx, lambda s: 2e-5, 1, 0), donate_argnums=0)
    rng = np.random.default_rng(0)
    data = dict(input_ids=rng.integers(1000, 20000, (batch, length)).astype(np.int32),
                attention_mask=np.ones((batch, length), np.int32),
                token_type_ids=np.zeros((batch, length), np.int32),
                label=rng.integers(0, 2, batch).astype(np.int32),
                weights=np.ones(batch, np.float32))
    box = {"state": TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))}

    def run():
        box["state"], m = step(box["state"], data)
        jax.block_until_ready(m)

    return run, model


def torch_step(path, batch, length):
    import torch
    import transformers

    model = transformers.BertForSequenceClassification.from_pretrained(path, num_labels=2)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (batch, length), generator=g)
    labels = torch.randint(0, 2, (batch,), generator=g)

    def run():
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()

    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lengths", default="32,64,128")
    p.add_argument("--steps", type=int, default=5)
    a = p.parse_args(argv)
    if not a.model:
        from lmtransfer.hf import packaged_minilm
        a.model = packaged_minilm()
    kind = jax.devices()[0].device_kind
    peak = perf.peak_flops()
    print(f"device: {kind} x{jax.device_count()}; batch {a.batch}; model {a.model}")
    print("| seq len | framework | step s | tokens/s | TFLOP/s | MFU |")
    print("|---:|---|---:|---:|---:|---:|")
    for length in (int(x) for x in a.lengths.split(",")):
        ours, model = lmtransfer_step(a.model, a.batch, length)
        peer = torch_step(a.model, a.batch, length)
        times = {"lmtransfer (JAX)": [], "transformers (PyTorch)": []}
        for _ in range(2):  # alternate so background load is shared
            times["lmtransfer (JAX)"].append(_timeit(ours, a.steps))
            times["transformers (PyTorch)"].append(_timeit(peer, a.steps))
        flops = train_flops(model, a.batch, length)
        for name, ts in times.items():
            t = min(ts)
            mfu = f"{flops / t / peak:.1%}" if peak else "n/a"
            print(f"| {length} | {name} | {t:.3f} | {a.batch * length / t:,.0f} | "
                  f"{flops / t / 1e12:.3f} | {mfu} |", flush=True)


if __name__ == "__main__":
    main()
