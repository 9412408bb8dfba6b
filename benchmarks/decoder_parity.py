"""Parity of lmtransfer's decoders with PyTorch transformers, per family and head.

    python benchmarks/decoder_parity.py

Small random HF models (tests/decoder_models.py: GPT-2; Llama with GQA and llama3 rope
scaling; Mistral with a 5-token sliding window and head_dim 12; Qwen2 with q/k/v biases and
tied embeddings), every parameter perturbed; max |ours - torch| of fp32 outputs over the real
tokens of a right-padded batch, and whether greedy generation (12 new tokens, 3 prompts
batched with the KV cache) gives transformers' tokens. Prints a markdown table.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from lmtransfer import hf  # noqa: E402
from lmtransfer.generate import generate  # noqa: E402
from tests import decoder_models as dm  # noqa: E402

HEADS = [None, "lm", "classification", "token_classification", "qa"]
PROMPTS = [[5, 9, 13, 2, 7], [11, 3], [40, 41, 42, 43, 44, 45, 46, 47, 48, 49]]


def main():
    ids, mask = dm.batch()
    names = ["Model", "ForCausalLM", "ForSequenceClassification", "ForTokenClassification",
             "ForQuestionAnswering"]
    print("| family | " + " | ".join(names) + " | greedy generate = HF |")
    print("|---|" + "---:|" * (len(HEADS) + 1))
    for family in dm.HF_FAMILIES:
        cells = []
        for head in HEADS:
            torch_model = dm.make_torch(family, head)
            with tempfile.TemporaryDirectory() as d:
                torch_model.save_pretrained(d)
                model, params = hf.load_pretrained(d, head=head)
            err = max(dm.max_errors(model, params, torch_model, head, ids, mask).values())
            cells.append(f"{err:.1e}")
            if head == "lm":
                ours = generate(model, params, PROMPTS, 12)
                theirs = [torch_model.generate(torch.tensor([p]), max_new_tokens=12,
                                               do_sample=False, pad_token_id=dm.PAD)[0, len(p):]
                          .tolist() for p in PROMPTS]
                same = ours == theirs
        print(f"| {family} | " + " | ".join(cells) + f" | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
