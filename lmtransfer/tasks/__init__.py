"""Task plug-ins, by `config.task`."""

from lmtransfer.tasks.base import Split, Task

TASKS = {"classification": "lmtransfer.tasks.classification:ClassificationTask",
         "token_classification": "lmtransfer.tasks.token_classification:TokenClassificationTask",
         "qa": "lmtransfer.tasks.qa:QaTask",
         "clm": "lmtransfer.tasks.pretrain:PretrainTask",
         "mlm": "lmtransfer.tasks.pretrain:PretrainTask"}


def make_task(config, tokenizer) -> Task:
    import importlib

    if config.task not in TASKS:
        raise ValueError(f"config.task={config.task!r}; use one of {sorted(TASKS)}")
    module, cls = TASKS[config.task].split(":")
    return getattr(importlib.import_module(module), cls)(config, tokenizer)


__all__ = ["Split", "Task", "make_task", "TASKS"]
