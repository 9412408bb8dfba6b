"""Training-step throughput: lmtransfer (JAX) beside PyTorch `transformers`, in one run.

    python -m lmtransfer.bench [--model minilm|PRESET|HF_DIR|HUB_ID] [--head classification|mlm]
        [--batch 32] [--lengths 128] [--steps 20] [--dtype float32|bfloat16] [--devices N]
        [--remat] [--parity TOL] [--no-peer] [--peft lora [--lora-rank 8]] [--json FILE]

Both sides run full training steps (forward, backward, AdamW, dropout on) of the same model
with the same weights on the same fixed-shape random batch: a sequence classifier
(fine-tuning) or the MLM head on 15% of the positions (pretraining). A preset name
(bert-base, bert-large, ...) starts both from one random init. `--parity TOL` first checks
that the two frameworks' fp32 logits agree within TOL (and exits non-zero if not). Timings
alternate between the two frameworks so background load hits both alike; the median step
after warm-up is reported. `--batch` takes one size or one per length.
FLOPs are analytic (lmtransfer.perf), so TFLOP/s and MFU compare across frameworks; MFU is
against the device's bf16 peak on GPU/TPU and against a matmul peak measured in this run on
CPU. `--devices N` runs lmtransfer data-parallel over N devices (simulate them on CPU with
XLA_FLAGS=--xla_force_host_platform_device_count=N). The peer needs torch (".[test]").

`--peft lora` adds LoRA rows beside full fine-tuning at every length: lmtransfer with adapters
on the query and value projections (the classifier trained in full, the rest frozen) and, as
its peer, `peft`'s LoRA on the transformers model holding the same adapters. Memory columns:
peak MiB is the device allocator's running peak (GPU/TPU; LoRA sides are built first at each
length, so theirs is not raised by full fine-tuning's), XLA MiB the step executable's buffers
(arguments + outputs - donated + temporaries, any platform), opt MiB the optimizer state and
ckpt MiB a resume checkpoint written by the training loop's checkpointer (what trains, with its
optimizer state: a LoRA run's base is a reference, not a copy).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmtransfer import perf, xla_flags
from lmtransfer.tasks.pretrain import max_predictions, mlm_positions

HEADS = ("classification", "mlm")
MASK_RATE = 0.15


def train_flops(model, batch: int, length: int) -> float:
    """The step's model FLOPs (the MLM decoder counted at the positions it must run on)."""
    decoded = max_predictions(length, MASK_RATE) if model.head == "mlm" else None
    return perf.train_flops_per_token(model, length, decoded) * batch * length


def random_batch(batch: int, length: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Ordinary-word ids (past the special tokens every vocabulary starts with)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(min(1000, vocab // 4), min(20000, vocab), (batch, length))
    ids = ids.astype(np.int32)
    return dict(input_ids=ids, label=rng.integers(0, 2, batch).astype(np.int32),
                masked=rng.random((batch, length)) < MASK_RATE)


def measure_matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of the best of JAX's and PyTorch's fp32 [n, n] matmul on this host."""
    a = jnp.ones((n, n), jnp.float32)
    mm = jax.jit(lambda a: a @ a)
    best = _median(lambda: mm(a).block_until_ready(), repeats)
    try:
        import torch
        t = torch.ones(n, n)
        best = min(best, _median(lambda: t @ t, repeats))
    except ImportError:
        pass
    return 2 * n ** 3 / best


def _median(fn, steps: int) -> float:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def build(name: str, head: str, dtype: str = "float32", remat: bool = False):
    """(lmtransfer model, its fp32 params): an HF dir's or the packaged MiniLM's weights, or a
    preset's random init. Both frameworks then run these same weights."""
    import os

    from lmtransfer import hf
    from lmtransfer.hf import hub
    from lmtransfer.models import PRESETS, from_preset, gpt, llama
    from lmtransfer.sharding import unbox
    path = hf.packaged_minilm() if name == "minilm" else name
    if not os.path.isdir(path) and name not in {*PRESETS, *gpt.PRESETS, *llama.PRESETS}:
        path = hub.resolve(path, "--model")  # presets win over hub ids of the same name
    if os.path.isdir(path):
        model, params = hf.load_pretrained(path, head=head, num_labels=2)
    else:
        model = from_preset(name, head, 2)
        params = unbox(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 2), jnp.int32)))
        params = params["params"]
    # Host copies: each timed step donates its own device buffers.
    return (model.clone(config=model.config.replace(dtype=dtype, remat=remat)),
            jax.device_get(params))


class _Loss:
    """Cross-entropy of the classifier, or of the MLM logits at the masked positions (the
    decoder runs there only, as in lmtransfer's pretraining; the peer decodes every one)."""

    def __init__(self, head, length):
        self.head = head
        self.budget = max_predictions(length, MASK_RATE)

    def prepare(self, batch, rng):
        if self.head != "mlm":
            return batch
        chosen, positions = mlm_positions(batch["masked"], self.budget)
        return {**batch, "masked": chosen, "mlm_positions": positions}

    def loss(self, out, b):
        if self.head == "mlm":
            pos = b["mlm_positions"]
            labels = jnp.take_along_axis(b["input_ids"], pos, axis=1)
            w = jnp.take_along_axis(b["masked"], pos, axis=1).astype(jnp.float32)
            ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, labels)
            return jnp.sum(ce * w), jnp.sum(w)
        ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, b["label"])
        return jnp.sum(ce), jnp.asarray(ce.shape[0], jnp.float32)


def with_lora(model, params, rank: int):
    """(model with LoRA adapters on query/value, params with them: A random, B = 0)."""
    from lmtransfer import peft, sharding
    from lmtransfer.models import lora

    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
    model, params = peft.add_adapters(model, params, lora.LoraSpec(rank=rank, alpha=2 * rank,
                                                                   dropout=0.1),
                                      0, mesh, sharding.DEFAULT_RULES)
    return model, jax.device_get(params)


def _tree_bytes(tree) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


def _dir_bytes(path: str) -> int:
    import os
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def checkpoint_bytes(state) -> int:
    """Bytes on disk of `state` saved by the training loop's checkpointer."""
    import tempfile

    from lmtransfer.checkpoints import TrainCheckpointer
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = TrainCheckpointer(tmp, keep=1)
        ckpt.save(0, state, {}, {})
        ckpt.wait()
        ckpt.close()
        return _dir_bytes(tmp)


def lowered_step(model, params, head, batch, length, devices=1):
    """(lmtransfer's train step lowered for a random batch, its arguments (state, batch,
    frozen, run)): what `lmtransfer_step` compiles, and what benchmarks/step_xla.py compiles
    with other XLA options. A LoRA model trains its adapters and head; the rest of `params`
    goes in as the frozen base."""
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from lmtransfer import peft
    from lmtransfer.train.state import TrainState
    from lmtransfer.train.step import make_train_step

    tx = optax.adamw(1.0, weight_decay=0.01)  # at lr 1: the step scales it by run["lr"]
    mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
    replicated, rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    data = random_batch(batch, length, model.config.vocab_size)
    data = jax.device_put(data, rows)
    trained, frozen = peft.split(model, params)
    frozen = jax.device_put(frozen, replicated) if frozen else None
    state = jax.device_put(TrainState(jnp.zeros((), jnp.int32), trained, tx.init(trained)),
                           replicated)
    run_args = jax.device_put({"seed": np.uint32(0), "lr": np.float32(2e-5)}, replicated)
    args = (state, data, frozen, run_args)
    step = jax.jit(make_train_step(model, _Loss(head, length), tx, lambda s, r: r["lr"], 1),
                   donate_argnums=0)
    return step.lower(*args), args


def lmtransfer_step(model, params, head, batch, length, devices=1):
    """(run one step, compile seconds, peak bytes or None, {xla, opt, ckpt bytes})."""
    start = time.perf_counter()
    lowered, (state, data, frozen, run_args) = lowered_step(model, params, head, batch, length,
                                                            devices)
    step = lowered.compile()
    compile_s = time.perf_counter() - start
    m = step.memory_analysis()
    memory = dict(opt_bytes=_tree_bytes(state.opt_state))
    memory["xla_bytes"] = (m.argument_size_in_bytes + m.output_size_in_bytes
                           - m.alias_size_in_bytes + m.temp_size_in_bytes) if m else None
    box = {"state": state}

    def run():
        box["state"], metrics = step(box["state"], data, frozen, run_args)
        jax.block_until_ready(metrics)

    run()
    memory["ckpt_bytes"] = checkpoint_bytes(box["state"])  # trained moments, not zeros
    stats = jax.devices()[0].memory_stats() or {}
    return run, compile_s, stats.get("peak_bytes_in_use"), memory


def torch_net(model, params):
    """The PyTorch `transformers` twin of `model` (fp32, any family) holding the same
    weights: the HF class an export would name, built from the exported config."""
    import torch
    import transformers

    from lmtransfer import hf
    cfg = {**hf.hf_config(model), "dtype": "float32"}
    cls = getattr(transformers, cfg.pop("architectures")[0])
    net = cls(transformers.AutoConfig.for_model(**cfg))
    tensors = {k: torch.from_numpy(v.astype(np.float32))
               for k, v in hf.to_hf_tensors(model, params).items()}
    missing, unexpected = net.load_state_dict(tensors, strict=False)
    tied = set(getattr(net, "_tied_weights_keys", None) or ())  # copies of the word table
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"weights do not match {cls.__name__}: missing {missing}, "
                           f"unexpected {unexpected}")
    net.tie_weights()
    return net.to("cuda" if torch.cuda.is_available() else "cpu")


def peft_net(net, model, params):
    """A copy of the PyTorch twin `net` with `peft`'s LoRA holding the adapters and trained
    modules of the LoRA `model` (through lmtransfer's PEFT export)."""
    import copy
    import tempfile

    from peft import PeftModel

    from lmtransfer import peft
    with tempfile.TemporaryDirectory() as tmp:
        peft.save_adapter(model, params, tmp)
        return PeftModel.from_pretrained(copy.deepcopy(net), tmp, is_trainable=True)


def parity(model, params, net, batch: int, length: int) -> float:
    """Max |logit difference| of the two frameworks' fp32 eval forwards on one batch."""
    import torch

    data = random_batch(batch, length, model.config.vocab_size, seed=1)
    fp32 = model.clone(config=model.config.replace(dtype="float32", remat=False))
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(fp32.apply({"params": params}, jnp.asarray(data["input_ids"])).logits)
    device = next(net.parameters()).device
    net.eval()
    with torch.no_grad():
        ids = torch.as_tensor(data["input_ids"], dtype=torch.long, device=device)
        theirs = net(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.cpu().numpy()
    net.train()
    return float(np.max(np.abs(ours - theirs)))


def torch_step(net, model, batch, length, dtype="float32"):
    """(run one step, first-step seconds, peak bytes or None, {opt bytes}) for the PyTorch
    peer; only parameters that require a gradient are trained (all but a PEFT base)."""
    import contextlib

    import torch

    head = model.head
    device = next(net.parameters()).device.type
    net.train()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=2e-5,
                            weight_decay=0.01)
    data = random_batch(batch, length, model.config.vocab_size)
    ids = torch.as_tensor(data["input_ids"], dtype=torch.long, device=device)
    if head == "mlm":
        labels = torch.where(torch.as_tensor(data["masked"], device=device), ids, -100)
    else:
        labels = torch.as_tensor(data["label"], dtype=torch.long, device=device)
    autocast = (torch.autocast(device, dtype=torch.bfloat16) if dtype == "bfloat16"
                else contextlib.nullcontext())

    def run():
        with autocast:
            loss = net(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if device == "cuda":
            torch.cuda.synchronize()

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    opt_bytes = sum(t.numel() * t.element_size() for st in opt.state.values()
                    for t in st.values() if torch.is_tensor(t))
    return run, first, peak, dict(opt_bytes=opt_bytes)


def _mib(n) -> str:
    return f"{n / 2 ** 20:,.{1 if n >= 10 * 2 ** 20 else 2}f}" if n else "n/a"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="minilm", help="minilm, a preset, an HF BERT dir or a hub id")
    p.add_argument("--head", default="classification", choices=HEADS)
    p.add_argument("--batch", default="32", help="batch size, or one per length")
    p.add_argument("--lengths", default="128", help="sequence lengths, comma-separated")
    p.add_argument("--steps", type=int, default=20, help="timed steps per side (median)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--devices", type=int, default=1, help="data-parallel devices for JAX")
    p.add_argument("--remat", action="store_true", help="lmtransfer recomputes activations")
    p.add_argument("--no-peer", action="store_true", help="time lmtransfer only")
    p.add_argument("--parity", type=float, default=0.0, metavar="TOL",
                   help="first check that both frameworks' fp32 logits agree within TOL")
    p.add_argument("--peft", default="", choices=("", "lora"),
                   help="add LoRA rows (lmtransfer and peft) beside full fine-tuning")
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--json", default="", help="write the figures to this file")
    a = p.parse_args(argv)
    if a.parity and a.no_peer:
        p.error("--parity compares with the PyTorch peer; drop --no-peer")
    lengths = [int(x) for x in a.lengths.split(",")]
    batches = [int(x) for x in a.batch.split(",")]
    if len(batches) == 1:
        batches *= len(lengths)
    if len(batches) != len(lengths):
        p.error(f"--batch {a.batch}: give one batch size or one per length ({a.lengths})")
    if any(b % a.devices for b in batches):
        p.error(f"--batch {a.batch} is not divisible by --devices {a.devices}")
    kind = jax.devices()[0].device_kind
    peak = perf.peak_flops()
    peak_source = "device table"
    on_cpu = jax.devices()[0].platform == "cpu"
    if peak is None and on_cpu:
        peak, peak_source = measure_matmul_peak(), "measured fp32 matmul"
    # Simulated CPU devices share the host whose peak was measured; real devices add up.
    peak_total = peak * (1 if on_cpu else a.devices) if peak else None
    print(f"device: {kind} x{a.devices}; model {a.model}, head {a.head}, "
          f"{a.dtype}; MFU peak {peak_total / 1e12 if peak else 0:.3f} TFLOP/s "
          f"({peak_source})")
    model, params = build(a.model, a.head, a.dtype, a.remat)
    net = None if a.no_peer else torch_net(model, params)
    lora_model = lora_params = lora_net = None
    if a.peft:
        lora_model, lora_params = with_lora(model, params, a.lora_rank)
        lora_net = None if a.no_peer else peft_net(net, lora_model, lora_params)
    if a.parity:
        length = lengths[0]
        err = parity(model, params, net, min(batches[0], 8), length)
        print(f"parity: max |logit difference| JAX vs PyTorch (fp32, seq {length}) = {err:.2e}"
              f" (tolerance {a.parity:g})", flush=True)
        if not err <= a.parity:
            raise SystemExit(f"parity check failed: {err:.2e} > {a.parity:g}")
    lora_name = f"LoRA r{a.lora_rank}"
    names = dict(ours="lmtransfer (JAX)", peer="transformers (PyTorch)",
                 ours_lora=f"lmtransfer {lora_name} (JAX)",
                 peer_lora=f"transformers+peft {lora_name} (PyTorch)")
    memory_columns = " XLA MiB | opt MiB | ckpt MiB |" if a.peft else ""
    print("| seq | batch | framework | step s | tokens/s | TFLOP/s | MFU | compile s | peak MiB |"
          + memory_columns)
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|" + "---:|" * memory_columns.count("|"))
    rows = []
    for batch, length in zip(batches, lengths, strict=True):
        sides = {}  # name -> (model, (run, first s, peak bytes, memory))
        if lora_model is not None:  # first, so full fine-tuning can't raise its device peak
            sides[names["ours_lora"]] = lora_model, lmtransfer_step(
                lora_model, lora_params, a.head, batch, length, a.devices)
        sides[names["ours"]] = model, lmtransfer_step(model, params, a.head, batch, length,
                                                      a.devices)
        if lora_net is not None:
            sides[names["peer_lora"]] = lora_model, torch_step(lora_net, model, batch, length,
                                                               a.dtype)
        if net is not None:
            sides[names["peer"]] = model, torch_step(net, model, batch, length, a.dtype)
        times = {k: [] for k in sides}
        for _ in range(a.steps):  # interleaved, one step each, so load drifts hit all alike
            for k, (_, (run, *_)) in sides.items():
                start = time.perf_counter()
                run()
                times[k].append(time.perf_counter() - start)
        for k, (m, (_, first_s, mem, memory)) in sides.items():
            t = float(np.median(times[k]))
            flops = train_flops(m, batch, length)
            denom = peak_total if k.startswith("lmtransfer") else peak
            row = dict(length=length, batch=batch, framework=k, step_s=t,
                       tokens_per_s=batch * length / t,
                       tflops=flops / t / 1e12, mfu=flops / t / denom if peak else None,
                       compile_s=first_s, peak_bytes=mem, **memory)
            rows.append(row)
            mfu = f"{row['mfu']:.1%}" if peak else "n/a"
            line = (f"| {length} | {batch} | {k} | {t:.3f} | {row['tokens_per_s']:,.0f} | "
                    f"{row['tflops']:.3f} | {mfu} | {first_s:.1f} | {_mib(mem)} |")
            if a.peft:
                line += "".join(f" {_mib(memory.get(c))} |"
                                for c in ("xla_bytes", "opt_bytes", "ckpt_bytes"))
            print(line, flush=True)
        here = {r["framework"]: r["tokens_per_s"] for r in rows[-len(sides):]}
        for ours, peer in (("ours", "peer"), ("ours_lora", "peer_lora")):
            if names[ours] in here and names[peer] in here:
                ratio = here[names[ours]] / here[names[peer]]
                what = "" if ours == "ours" else f" ({lora_name})"
                print(f"| {length} | {batch} | ratio JAX / PyTorch{what} | | {ratio:.2f}x | | | "
                      "| |" + " |" * memory_columns.count("|"), flush=True)
    if a.json:
        def last(name, key="tokens_per_s"):
            found = [r[key] for r in rows if r["framework"] == names[name]]
            return found[-1] if found else None

        summary = dict(device=kind, devices=a.devices, model=a.model, head=a.head,
                       batch=batches, dtype=a.dtype, peak_flops=peak_total,
                       peak_source=peak_source, lmtransfer_tokens_per_s=last("ours"),
                       mfu=last("ours", "mfu"), peer_tokens_per_s=last("peer"),
                       peft=a.peft or None, runtime=xla_flags.runtime(), rows=rows)
        summary["ratio"] = (summary["lmtransfer_tokens_per_s"] / summary["peer_tokens_per_s"]
                            if summary["peer_tokens_per_s"] else None)
        if a.peft:
            summary.update(lora_tokens_per_s=last("ours_lora"),
                           lora_peer_tokens_per_s=last("peer_lora"))
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
