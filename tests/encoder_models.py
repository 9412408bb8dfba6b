"""Small random HF encoders of every family built by transformers with torch: the references
of the encoder parity, export and fine-tuning tests. One entry per family; a new family adds
its tiny config here and its own parity test file."""

import numpy as np

VOCAB = 99

# family -> (HF config class, its kwargs, HF class prefix, heads HF has). Each config turns on
# what makes the family different: RoBERTa's padding-offset positions, ELECTRA's and ALBERT's
# factorized embeddings (ALBERT: one layer shared by 3), DeBERTa-v3's relative position
# buckets shorter than the test rows, ModernBERT's local windows shorter than the rows.
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=48, max_position_embeddings=40)
_HEADS = (None, "mlm", "classification", "token_classification", "qa")
HF_FAMILIES = {
    "roberta": ("RobertaConfig", dict(_COMMON, type_vocab_size=1, pad_token_id=1),
                "Roberta", _HEADS),
    "xlm-roberta": ("XLMRobertaConfig", dict(_COMMON, type_vocab_size=1, pad_token_id=1),
                    "XLMRoberta", _HEADS),
    "distilbert": ("DistilBertConfig", dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4,
                                            hidden_dim=48, max_position_embeddings=40,
                                            pad_token_id=0), "DistilBert", _HEADS),
    "electra": ("ElectraConfig", dict(_COMMON, embedding_size=16, pad_token_id=0), "Electra",
                _HEADS + ("pretraining",)),
    "albert": ("AlbertConfig", dict(_COMMON, embedding_size=16, num_hidden_layers=3,
                                    pad_token_id=0), "Albert", _HEADS + ("pretraining",)),
    "deberta-v2": ("DebertaV2Config", dict(
        _COMMON, relative_attention=True, position_buckets=8, max_relative_positions=-1,
        pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm",
        position_biased_input=False, type_vocab_size=0, pad_token_id=0), "DebertaV2", _HEADS),
    "modernbert": ("ModernBertConfig", dict(
        _COMMON, num_hidden_layers=3, max_position_embeddings=64, global_attn_every_n_layers=2,
        local_attention=4, pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2,
        sep_token_id=3), "ModernBert", _HEADS),
}
HEAD_CLASSES = {None: "Model", "mlm": "ForMaskedLM", "pretraining": "ForPreTraining",
                "classification": "ForSequenceClassification",
                "token_classification": "ForTokenClassification", "qa": "ForQuestionAnswering"}
# Families whose HF forward takes token_type_ids (and whose tokenizers make pairs with them).
TOKEN_TYPES = ("electra", "albert")


def hf_class(family: str, head) -> str:
    return HF_FAMILIES[family][2] + HEAD_CLASSES[head]


def hf_config(family: str, num_labels: int = 3, **overrides):
    import transformers

    cfg_cls, kw, _, _ = HF_FAMILIES[family]
    return getattr(transformers, cfg_cls)(num_labels=num_labels, **{**kw, **overrides})


def pad_id(family: str) -> int:
    return HF_FAMILIES[family][1]["pad_token_id"]


def make_torch(family: str, head, num_labels: int = 3, seed: int = 0, **overrides):
    """A random HF model with every parameter perturbed (biases non-zero, norms not 1), so a
    mixed-up layout cannot pass."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = hf_config(family, 2 if head == "qa" else num_labels, **overrides)
    model = getattr(transformers, hf_class(family, head))(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def batch(family: str, length: int = 12, seed: int = 0):
    """(ids, mask, token types) of a right-padded batch: rows of different lengths, real
    tokens never the pad id, sentence-pair token types where the family has them."""
    rng = np.random.default_rng(seed)
    pad = pad_id(family)
    ids = rng.integers(4, VOCAB, size=(3, length)).astype(np.int32)
    lengths = np.array([length, length - 4, 5])
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    ids[mask == 0] = pad
    types = np.zeros_like(ids)
    if family in TOKEN_TYPES:
        types = ((np.arange(length)[None] >= (lengths // 2)[:, None]) & (mask == 1))
    return ids, mask, types.astype(np.int32)


# our output field -> the HF output field(s) it must equal, per head.
FIELDS = {None: [("last_hidden_state", "last_hidden_state")], "mlm": [("logits", "logits")],
          "classification": [("logits", "logits")],
          "token_classification": [("logits", "logits")],
          "qa": [("start_logits", "start_logits"), ("end_logits", "end_logits")]}
PRETRAINING_FIELDS = {"electra": [("logits", "logits")],
                      "albert": [("logits", "prediction_logits"),
                                 ("seq_relationship_logits", "sop_logits")]}


def torch_out(family, model, ids, mask, types):
    import torch

    kw = dict(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long())
    if family in TOKEN_TYPES:
        kw["token_type_ids"] = torch.tensor(types).long()
    with torch.no_grad():
        return model(**kw)


def max_errors(family, model, params, torch_model, head, ids, mask, types):
    """{field: max |ours - torch|} over real tokens (every field of the head)."""
    out = model.apply({"params": params}, ids, mask, types, deterministic=True)
    ref = torch_out(family, torch_model, ids, mask, types)
    fields = PRETRAINING_FIELDS[family] if head == "pretraining" else FIELDS[head]
    errors = {}
    for ours, theirs in fields:
        a, b = np.asarray(getattr(out, ours)), getattr(ref, theirs).numpy()
        if a.ndim >= 2 and a.shape[:2] == ids.shape:
            a, b = a[mask.astype(bool)], b[mask.astype(bool)]
        assert a.shape == b.shape, (ours, a.shape, b.shape)
        errors[ours] = float(np.abs(a - b).max())
    return errors


def check_export(family, model, params, head, out_dir):
    """Exports `model` and checks transformers loads it (no missing, unexpected or mismatched
    keys) and computes the same; returns the max error."""
    import transformers

    from lmtransfer import hf

    id2label = {i: f"tag{i}" for i in range(model.num_labels)} if head in (
        "classification", "token_classification") else None
    out = hf.save_pretrained(model, params, str(out_dir), id2label=id2label)
    cls = hf_class(family, head)
    torch_model, info = getattr(transformers, cls).from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and \
        not info["mismatched_keys"], info
    ids, mask, types = batch(family)
    return max(max_errors(family, model, params, torch_model.eval(), head, ids, mask,
                          types).values())
