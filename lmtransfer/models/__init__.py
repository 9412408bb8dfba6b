"""Flax linen models: functional (init/apply), every parameter with logical axis names."""

from lmtransfer.models.albert import Albert, AlbertConfig
from lmtransfer.models.bert import HEADS, PRESETS, Bert, BertConfig, BertOutput
from lmtransfer.models.deberta_v2 import DebertaV2, DebertaV2Config
from lmtransfer.models.distilbert import DistilBert, DistilBertConfig
from lmtransfer.models.electra import Electra, ElectraConfig
from lmtransfer.models.gpt import Gpt, GptConfig
from lmtransfer.models.modernbert import ModernBert, ModernBertConfig
from lmtransfer.models.roberta import Roberta, RobertaConfig

# model.arch -> (model class, config class): what a checkpoint's metadata rebuilds. A new
# family adds one entry here and one Family in lmtransfer.hf.
ARCHS = {"bert": (Bert, BertConfig), "gpt": (Gpt, GptConfig),
         "roberta": (Roberta, RobertaConfig),
         "electra": (Electra, ElectraConfig), "albert": (Albert, AlbertConfig),
         "deberta_v2": (DebertaV2, DebertaV2Config),
         "modernbert": (ModernBert, ModernBertConfig),
         "distilbert": (DistilBert, DistilBertConfig)}


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
