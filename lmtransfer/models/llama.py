"""The Llama family (Llama, Mistral, Qwen2) as `Gpt` configs: RMSNorm, rotary positions,
grouped-query attention, SwiGLU, no biases (Qwen2: q/k/v biases), untied output embeddings.
The blocks are the decoder's (lmtransfer.models.gpt); HF conversion is lmtransfer.hf.llama.

    model = Gpt(GptConfig.preset("llama-tiny"))
"""

from __future__ import annotations

from typing import Any

LLAMA = dict(family="llama", positions="rotary", norm="rmsnorm", mlp="gated", hidden_act="silu",
             qkv_bias=False, out_bias=False, mlp_bias=False, tie_word_embeddings=False,
             layer_norm_eps=1e-6, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
             max_position_embeddings=2048)

PRESETS: dict[str, dict[str, Any]] = {
    "llama-tiny": dict(LLAMA, vocab_size=1024, hidden_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, intermediate_size=192,
                       max_position_embeddings=512),
    "llama-mini": dict(LLAMA, vocab_size=32000, hidden_size=256, num_hidden_layers=4,
                       num_attention_heads=8, num_key_value_heads=4, intermediate_size=688),
    # Llama 3.2 1B's shape (its 128256 vocabulary and rope scaling).
    "llama3-1b": dict(LLAMA, vocab_size=128256, hidden_size=2048, num_hidden_layers=16,
                      num_attention_heads=32, num_key_value_heads=8, intermediate_size=8192,
                      layer_norm_eps=1e-5, rotary_base=500000.0, tie_word_embeddings=True,
                      max_position_embeddings=131072,
                      rope_scaling=(("factor", 32.0), ("high_freq_factor", 4.0),
                                    ("low_freq_factor", 1.0),
                                    ("original_max_position_embeddings", 8192),
                                    ("rope_type", "llama3"))),
}
