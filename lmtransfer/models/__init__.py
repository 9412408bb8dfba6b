"""Flax linen models: functional (init/apply), every parameter with logical axis names."""

from lmtransfer.models.bert import HEADS, PRESETS, Bert, BertConfig, BertOutput
from lmtransfer.models.gpt import Gpt, GptConfig

# model.arch -> (model class, config class): what a checkpoint's metadata rebuilds. A new
# family adds one entry here and one Family in lmtransfer.hf.
ARCHS = {"bert": (Bert, BertConfig), "gpt": (Gpt, GptConfig)}


def heads_of(arch: str) -> tuple[str, ...]:
    """The task heads a model family has (its class's HEADS without the bare encoder)."""
    return tuple(h for h in ARCHS[arch][0].HEADS if h)


def from_preset(name: str, head: str | None, num_labels: int = 2, **overrides):
    """A model from a BERT, GPT or Llama-family preset name (`PRESETS`, `gpt.PRESETS`,
    `llama.PRESETS`)."""
    from lmtransfer.models import gpt, llama

    if name in gpt.PRESETS or name in llama.PRESETS:
        return Gpt(GptConfig.preset(name, **overrides), head=head or "lm",
                   num_labels=num_labels)
    if name in PRESETS:
        return Bert(BertConfig.preset(name, **overrides), head=head, num_labels=num_labels)
    raise ValueError(f"unknown model preset {name!r}; BERT: {sorted(PRESETS)}, "
                     f"GPT: {sorted(gpt.PRESETS)}, Llama: {sorted(llama.PRESETS)}")


__all__ = ["ARCHS", "HEADS", "PRESETS", "Bert", "BertConfig", "BertOutput", "Gpt", "GptConfig",
           "from_preset", "heads_of"]
