"""Parity of lmtransfer's encoder families with PyTorch transformers, per family and head.

    python benchmarks/encoder_parity.py

Small random HF models (tests/encoder_models.py: RoBERTa and XLM-R with padding-offset
positions; DistilBERT; ELECTRA and ALBERT with factorized embeddings; DeBERTa-v3 with relative
position buckets shorter than the rows; ModernBERT with local windows shorter than the rows),
every parameter perturbed. Each cell: max |ours - torch| of the head's fp32 outputs over the
real tokens of a right-padded batch, for the HF checkpoint loaded into lmtransfer (import)
and, after a slash, for our random model exported and loaded by transformers (export: no
missing or unexpected keys). Prints a markdown table.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


from lmtransfer import hf  # noqa: E402
from tests import encoder_models as em  # noqa: E402
from tests.helpers import perturbed_init  # noqa: E402

HEADS = [None, "mlm", "pretraining", "classification", "token_classification", "qa"]


def cell(family, head):
    if head not in em.HF_FAMILIES[family][3]:
        return "—"
    ids, mask, types = em.batch(family)
    torch_model = em.make_torch(family, head)
    with tempfile.TemporaryDirectory() as d:
        torch_model.save_pretrained(d)
        model, params = hf.load_pretrained(d, head=head)
    imported = max(em.max_errors(family, model, params, torch_model, head, ids, mask,
                                 types).values())
    fresh = model.clone()
    params = perturbed_init(fresh)
    with tempfile.TemporaryDirectory() as d:
        exported = em.check_export(family, fresh, params, head, d)
    return f"{imported:.1e} / {exported:.1e}"


def main():
    names = ["Model", "ForMaskedLM", "ForPreTraining", "ForSequenceClassification",
             "ForTokenClassification", "ForQuestionAnswering"]
    print("| family | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(HEADS))
    for family in em.HF_FAMILIES:
        print(f"| {family} | " + " | ".join(cell(family, h) for h in HEADS) + " |")


if __name__ == "__main__":
    main()
