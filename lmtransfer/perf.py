"""Performance accounting: analytic training FLOPs of a model and per-device peaks, so
tokens/s becomes TFLOP/s per device and MFU (model FLOPs utilisation) the same way for every
framework and device.

FLOPs per token of a training step (forward + backward = 3 x forward):
  6 x (weights of every matmul, the output projection included; embedding lookups are free;
       the MLM decoder counts only at the positions it runs on)
  + 12 x layers x length x hidden   (attention scores QK^T and the weighted sum PV)
Causal attention is counted in full, as PaLM's MFU does.
"""

from __future__ import annotations

import jax

# Dense bf16 peak FLOP/s per device kind (jax device_kind), for MFU.
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5p": 459e12,
              "TPU v6 lite": 918e12, "NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12,
              "NVIDIA A100-SXM4-80GB": 312e12}


def matmul_weights(model, decoded_fraction: float = 1.0) -> float:
    """Weights that take part in a matmul per token for `model` (Bert or Gpt with its head);
    the MLM head counts for `decoded_fraction` of the tokens (it runs at the masked ones)."""
    c = model.config
    h, layers = c.hidden_size, c.num_hidden_layers
    q = c.num_attention_heads * c.head_dim
    kv = getattr(c, "kv_heads", c.num_attention_heads) * c.head_dim  # grouped-query: fewer
    mlp = 3 if getattr(c, "mlp", "standard") == "gated" else 2  # SwiGLU: gate, up, down
    n = layers * (2 * h * q + 2 * h * kv + mlp * h * c.intermediate_size)
    head = model.head
    if head == "lm":  # tied or untied, the output projection is one matmul
        n += h * c.vocab_size
    if head in ("mlm", "pretraining"):
        n += (h * c.vocab_size + h * h) * decoded_fraction  # decoder + transform
    if model.arch == "bert" and model.has_pooler:
        n += h * h
    if head in ("classification", "token_classification"):
        n += h * model.num_labels
    if head == "qa":
        n += 2 * h
    return n


def train_flops_per_token(model, length: int, decoded: int | None = None) -> float:
    """Training FLOPs per token at `length`; `decoded`: MLM positions decoded per row."""
    c = model.config
    fraction = 1.0 if decoded is None else decoded / length
    return (6 * matmul_weights(model, fraction)
            + 12 * c.num_hidden_layers * length * c.num_attention_heads * c.head_dim)


def peak_flops(device=None) -> float | None:
    """The device's dense peak (None where unknown, e.g. CPUs: benchmarks measure one)."""
    return PEAK_FLOPS.get((device or jax.devices()[0]).device_kind)
