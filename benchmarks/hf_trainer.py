"""The peer: the same fine-tuning run with the Hugging Face `Trainer` (PyTorch).

    python benchmarks/hf_trainer.py --config configs/ner.py:model=minilm \
        --config.data.dir=../shared/data/conll2003/iob2 --out runs/hf_conll

It reads the same lmtransfer config file and flags as `python -m lmtransfer.main`, so both
sides get the same examples (featurized by lmtransfer's task: same tokenizer, max_length,
windows and labels) and the same recipe (batch, epochs, lr, warmup, weight decay, grad-norm
clip, linear decay, seed). The Trainer pads each batch dynamically (its default collators).
Its predictions are scored by the lmtransfer task (scikit-learn / scipy, seqeval, the official
SQuAD rules), so the metrics are computed identically. Writes `<out>/results.json` with the
final model's metrics per eval split (`final`, keyed like lmtransfer's), the `selection` split
and metric a sweep picks on, train time and tokens/s. `python -m lmtransfer.sweep --peer hf`
runs it for every run of a table. Needs `pip install -e ".[bench]"`.
"""

import json
import os
import time

import numpy as np
from absl import app, flags
from ml_collections import config_flags

STARTED = time.perf_counter()  # phases_s: "startup" runs from here to the end of main's imports

_CONFIG = config_flags.DEFINE_config_file("config", None, "lmtransfer config file[:args]")
_OUT = flags.DEFINE_string("out", None, "output directory", required=True)
_THREADS = flags.DEFINE_integer("threads", 0, "torch threads (0 = torch's default)")


def _rows(task, split):
    """Unpadded HF examples from an lmtransfer split."""
    f, rows = split.features, []
    for i in range(len(split)):
        n = int(f["length"][i])
        row = {"input_ids": f["input_ids"][i, :n].tolist(),
               "token_type_ids": f["token_type_ids"][i, :n].tolist(), "attention_mask": [1] * n}
        if task.head == "classification":
            row["labels"] = f["label"][i].item()
        elif task.head == "token_classification":
            row["labels"] = np.where(f["label_mask"][i, :n] > 0, f["labels"][i, :n], -100).tolist()
        else:
            row["start_positions"] = int(f["start_positions"][i])
            row["end_positions"] = int(f["end_positions"][i])
        rows.append(row)
    return rows


def _predictions(task, split, output):
    """Trainer outputs -> the prediction dict the lmtransfer task evaluates."""
    width = split.features["input_ids"].shape[1]

    def widen(x, fill):
        return np.pad(x, [(0, 0), (0, width - x.shape[1])] + [(0, 0)] * (x.ndim - 2),
                      constant_values=fill)

    if task.head == "classification":
        return {"score": output[:, 0], "pred": np.argmax(output, -1)}
    if task.head == "token_classification":
        return {"pred": widen(np.argmax(output, -1), 0)}
    from lmtransfer.tasks.qa import NEG

    start, end = (np.where(x == -100, NEG, x) for x in output)  # -100: Trainer's padding
    return {"start_logits": widen(start, NEG), "end_logits": widen(end, NEG)}


def main(_):
    import torch
    import transformers

    from lmtransfer import logs
    from lmtransfer.tasks import make_task
    from lmtransfer.train import init

    phases = {"startup": time.perf_counter() - STARTED, "compile": 0.0}  # eager: no compile
    mark = time.perf_counter()
    c = _CONFIG.value
    if _THREADS.value:
        torch.set_num_threads(_THREADS.value)
    tok = init.load_tokenizer(c)
    task = make_task(c, tok)
    train_split = task.load("train")
    eval_splits = [task.load(s) for s in task.eval_splits()]
    model_cls = {"classification": transformers.AutoModelForSequenceClassification,
                 "token_classification": transformers.AutoModelForTokenClassification,
                 "qa": transformers.AutoModelForQuestionAnswering}[task.head]
    kw = {}
    if task.head != "qa":
        kw = dict(num_labels=task.num_labels)
    if task.head == "classification":
        kw["problem_type"] = ("regression" if task.num_labels == 1 else
                              "single_label_classification")
    transformers.set_seed(c.seed)
    model = model_cls.from_pretrained(c.init_from, **kw)
    collator = (transformers.DataCollatorForTokenClassification(tok)
                if task.head == "token_classification" else
                transformers.DataCollatorWithPadding(tok))
    o, t = c.optim, c.train
    args = transformers.TrainingArguments(
        output_dir=os.path.join(_OUT.value, "trainer"), per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size, learning_rate=o.lr,
        num_train_epochs=t.epochs, max_steps=t.steps or -1,
        warmup_steps=o.warmup_steps or o.warmup_ratio,
        weight_decay=o.weight_decay, max_grad_norm=o.max_grad_norm, lr_scheduler_type=o.decay,
        adam_beta1=o.b1, adam_beta2=o.b2, adam_epsilon=o.eps, seed=c.seed,
        logging_steps=t.log_every,
        save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_rows(task, train_split),
                                   data_collator=collator)
    start = time.perf_counter()
    phases["load"] = start - mark
    out = trainer.train()
    train_s = time.perf_counter() - start
    phases["train"] = train_s
    results = {}
    for split in eval_splits:
        output = trainer.predict(_rows(task, split)).predictions
        results[split.name] = {**task.evaluate(split, _predictions(task, split, output)),
                               "examples": len(split)}
    phases["eval"] = time.perf_counter() - start - train_s
    mark = time.perf_counter()
    epochs = t.steps * t.batch_size / len(train_split) if t.steps else t.epochs
    tokens = int(train_split.features["length"].sum()) * epochs
    result = {"config": c.get("data", {}).to_dict(), "seed": c.seed, "final": results,
              "selection": {"split": eval_splits[0].name, "metric": task.main_metric,
                            "greater_is_better": bool(task.greater_is_better)},
              "train_seconds": train_s,
              "train_tokens_per_s": tokens / train_s, "steps": out.global_step,
              "torch_threads": torch.get_num_threads()}
    os.makedirs(_OUT.value, exist_ok=True)
    with open(os.path.join(_OUT.value, "metrics.jsonl"), "w") as f:  # lmtransfer's format
        for row in trainer.state.log_history:
            if "loss" in row:
                f.write(json.dumps({"kind": "train", "step": row["step"], "loss": row["loss"]})
                        + "\n")
    phases["write"] = time.perf_counter() - mark
    result["phases_s"] = {**{k: round(v, 3) for k, v in phases.items()},
                          "total": round(time.perf_counter() - STARTED, 3)}
    logs.write_json(os.path.join(_OUT.value, "results.json"), result)  # last: marks it done
    print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))


if __name__ == "__main__":
    app.run(main)
