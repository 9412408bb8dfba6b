"""Small random HF decoders (GPT-2, Llama, Mistral, Qwen2) built by transformers with torch,
and our decoders with non-trivial random weights: the references of the decoder tests."""

import numpy as np

VOCAB = 97
PAD = 0

# family -> (HF config class, its kwargs, HF class prefix). Llama has rope scaling and GQA,
# Mistral a sliding window shorter than the test rows, Qwen2 q/k/v biases and tied
# embeddings.
HF_FAMILIES = {
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_positions=64), "GPT2"),
    "llama": ("LlamaConfig", dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, max_position_embeddings=64,
        rope_parameters=dict(rope_type="llama3", rope_theta=500.0, factor=8.0,
                             low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=16)), "Llama"),
    "mistral": ("MistralConfig", dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
        intermediate_size=48, max_position_embeddings=64, sliding_window=5, head_dim=12),
        "Mistral"),
    "qwen2": ("Qwen2Config", dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=48, max_position_embeddings=64, tie_word_embeddings=True), "Qwen2"),
}
HEAD_CLASSES = {None: "Model", "lm": "LMHeadModel", "classification": "ForSequenceClassification",
                "token_classification": "ForTokenClassification", "qa": "ForQuestionAnswering"}


def hf_class(family: str, head):
    suffix = HEAD_CLASSES[head]
    if head == "lm" and family != "gpt2":
        suffix = "ForCausalLM"
    return HF_FAMILIES[family][2] + suffix


def make_torch(family: str, head, num_labels: int = 3, seed: int = 0):
    """A random HF model with every parameter perturbed (biases non-zero, norms not 1), so a
    mixed-up layout cannot pass."""
    import torch
    import transformers

    cfg_cls, kw, _ = HF_FAMILIES[family]
    config = getattr(transformers, cfg_cls)(vocab_size=VOCAB, pad_token_id=PAD,
                                            num_labels=num_labels, **kw)
    torch.manual_seed(seed)
    model = getattr(transformers, hf_class(family, head))(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def batch(length: int = 12, seed: int = 0):
    """A right-padded batch: rows of different lengths, real tokens never the pad id."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, VOCAB, size=(3, length)).astype(np.int32)
    lengths = np.array([length, length - 4, 5])
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    ids[mask == 0] = PAD
    return ids, mask


def torch_out(model, ids, mask):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long())


FIELDS = {None: [("last_hidden_state", "last_hidden_state")], "lm": [("logits", "logits")],
          "classification": [("logits", "logits")],
          "token_classification": [("logits", "logits")],
          "qa": [("start_logits", "start_logits"), ("end_logits", "end_logits")]}


def max_errors(model, params, torch_model, head, ids, mask):
    """{field: max |ours - torch|} over real tokens."""
    out = model.apply({"params": params}, ids, mask, deterministic=True)
    ref = torch_out(torch_model, ids, mask)
    errors = {}
    for ours, theirs in FIELDS[head]:
        a, b = np.asarray(getattr(out, ours)), getattr(ref, theirs).numpy()
        if a.ndim >= 2 and a.shape[:2] == ids.shape:
            a, b = a[mask.astype(bool)], b[mask.astype(bool)]
        assert a.shape == b.shape, (ours, a.shape, b.shape)
        errors[ours] = float(np.abs(a - b).max())
    return errors


def random_ours(preset: str, head, num_labels: int = 3, seed: int = 0, **overrides):
    """One of our decoder presets with perturbed random params."""
    from lmtransfer.models import Gpt, GptConfig
    from tests.helpers import perturbed_init

    config = GptConfig.preset(preset, **{"vocab_size": VOCAB, "pad_token_id": PAD, **overrides})
    model = Gpt(config, head=head, num_labels=num_labels)
    return model, perturbed_init(model, seed)
