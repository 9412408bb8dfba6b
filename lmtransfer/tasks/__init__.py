"""Task plug-ins, by `config.task`."""

from lmtransfer.errors import ConfigError
from lmtransfer.tasks.base import Split, Task

TASKS = {"classification": "lmtransfer.tasks.classification:ClassificationTask",
         "token_classification": "lmtransfer.tasks.token_classification:TokenClassificationTask",
         "qa": "lmtransfer.tasks.qa:QaTask",
         "sft": "lmtransfer.tasks.sft:SftTask",
         "clm": "lmtransfer.tasks.pretrain:PretrainTask",
         "mlm": "lmtransfer.tasks.pretrain:PretrainTask"}


def make_task(config, tokenizer, workdir: str | None = None) -> Task:
    """The task of `config.task`; `workdir` is where a pretraining task prepares its token
    store when config.data.store is not set."""
    import importlib

    if config.task not in TASKS:
        raise ConfigError(f"config.task={config.task!r}; use one of {sorted(TASKS)}")
    module, cls = TASKS[config.task].split(":")
    task = getattr(importlib.import_module(module), cls)
    return task(config, tokenizer, workdir) if config.task in ("clm", "mlm") else task(
        config, tokenizer)


__all__ = ["Split", "Task", "make_task", "TASKS"]
