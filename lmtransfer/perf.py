"""Performance accounting: analytic training FLOPs of a model and per-device peaks, so
tokens/s becomes TFLOP/s per device and MFU (model FLOPs utilisation) the same way for every
framework and device.

FLOPs per token of a training step (forward + backward = 3 x forward):
  6 x (weights of every matmul, read from the model's kernels, any family: the output
       projection included, tied or not; embedding lookups are free; a shared layer counts
       per use; the MLM decoder counts only at the positions it runs on; LoRA's A and B too)
  - 2 x (the weights a LoRA run freezes: their input gradient is needed, their own is not)
  + 12 x layer runs x length x hidden   (attention scores QK^T and the weighted sum PV)
  + DeBERTa: 12 x layer runs x att_span x hidden per relative-attention type (c2p, p2c)
Causal and sliding-window attention are counted in full, as PaLM's MFU does.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import traverse_util

from lmtransfer import peft, sharding

# Dense bf16 peak FLOP/s per device kind (jax device_kind), for MFU.
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5p": 459e12,
              "TPU v6 lite": 918e12, "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12,
              "NVIDIA A100-SXM4-80GB": 312e12}


@functools.lru_cache(maxsize=64)
def _weights(model) -> tuple[tuple[float, float], tuple[float, float]]:
    """((matmul weights every token runs through, those only decoded positions run through),
    the frozen share of each), read once per model from its kernels and LoRA adapters (the
    training loop asks every step)."""
    def trace(m):
        return jax.eval_shape(m.init_with_output, jax.random.key(0),
                              jnp.zeros((1, 2), jnp.int32))

    out, abstract = trace(model)
    params = traverse_util.flatten_dict(sharding.unbox(abstract)["params"])
    base = (set(traverse_util.flatten_dict(sharding.unbox(trace(model.clone(head=None))[1])
                                           ["params"]))
            if model.head is not None else set(params))
    vocab = model.config.vocab_size
    logits = getattr(out, "logits", None) if model.head is not None else None
    decodes = logits is not None and logits.ndim == 3 and logits.shape[-1] == vocab
    uses = model.module_uses() if hasattr(model, "module_uses") else {}
    every, decoded, untied = [0.0, 0.0], [0.0, 0.0], False  # [all, frozen]

    def add(counts, n, path):
        counts[0] += n
        counts[1] += 0 if peft.trainable(model, "/".join(path)) else n

    for path, x in params.items():
        if path[-1] not in ("kernel", *peft.ADAPTERS):
            continue
        in_head = path not in base
        untied |= in_head and x.shape[-1] == vocab
        add(decoded if decodes and in_head else every,
            math.prod(x.shape) * uses.get(path[0], 1), path)
    if decodes and not untied:  # the tied decoder: logits = h @ table.T
        path, x = next((p, x) for p, x in params.items()
                       if p[-1] == "embedding" and x.shape[0] == vocab)
        add(decoded, math.prod(x.shape), path)
    return tuple(every), tuple(decoded)


def matmul_weights(model, decoded_fraction: float = 1.0, frozen: bool = False) -> float:
    """Weights that take part in a matmul per token for `model` (any family, with its head and
    LoRA adapters), read from its kernels (embedding lookups are free): a shared layer counts
    once per use (ALBERT's `module_uses`); the head of an MLM / LM counts for
    `decoded_fraction` of the tokens (it runs at the masked ones), and a decoder tied to the
    word table adds that table. Heads on one token (pooler, classifier) are counted per token,
    a small overcount. `frozen`: only those a LoRA run does not train."""
    (every, every_frozen), (decoded, decoded_frozen) = _weights(model)
    if frozen:
        return every_frozen + decoded_frozen * decoded_fraction
    return every + decoded * decoded_fraction


def train_flops_per_token(model, length: int, decoded: int | None = None) -> float:
    """Training FLOPs per token at `length`; `decoded`: MLM positions decoded per row.
    Attention scores and the weighted sum count for every layer run; DeBERTa adds one
    score matmul per relative-attention type over its 2 x att_span relative positions."""
    c = model.config
    fraction = 1.0 if decoded is None else decoded / length
    uses = model.module_uses() if hasattr(model, "module_uses") else {}
    layer_runs = sum(uses.values()) or c.num_hidden_layers
    width = c.num_attention_heads * c.head_dim
    relative = len(getattr(c, "pos_att_type", ())) * 2 * getattr(c, "att_span", 0) \
        if getattr(c, "relative_attention", False) else 0
    # A frozen weight needs no gradient of its own: 2 (forward) + 2 (input gradient).
    return (6 * matmul_weights(model, fraction) - 2 * matmul_weights(model, fraction, True)
            + 12 * layer_runs * length * width + 6 * layer_runs * relative * width)


def peak_flops(device=None) -> float | None:
    """The device's dense peak (None where unknown, e.g. CPUs: benchmarks measure one)."""
    return PEAK_FLOPS.get((device or jax.devices()[0]).device_kind)
