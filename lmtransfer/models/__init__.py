"""Flax linen models: functional (init/apply), every parameter with logical axis names."""

from lmtransfer.models.bert import HEADS, PRESETS, Bert, BertConfig, BertOutput

__all__ = ["HEADS", "PRESETS", "Bert", "BertConfig", "BertOutput"]
