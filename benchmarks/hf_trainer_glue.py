"""The peer: the same GLUE fine-tuning recipe with the Hugging Face `Trainer` (PyTorch).

    python benchmarks/hf_trainer_glue.py --task mrpc --glue_dir ../shared/data/glue \
        --model <HF dir, default: packaged MiniLM> --out runs/hf_mrpc [--seed 0]

Same data (read by lmtransfer's GLUE reader, so the same examples), same tokenizer and
max_length 128, same recipe as `configs/glue.py:recipe=bert_paper` (batch 32, 3 epochs, lr 2e-5,
10% linear warmup then linear decay, weight decay 0.01, grad-norm clip 1.0), dynamic padding
per batch (Trainer's default collator). Writes `<out>/results.json` with the dev metrics
(computed by lmtransfer.metrics, i.e. scikit-learn / scipy), wall time and tokens/s.
Needs `pip install -e ".[bench]"`.
"""

import argparse
import json
import os
import time

import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--task", required=True)
    p.add_argument("--glue_dir", required=True)
    p.add_argument("--model", default="")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args()

    import ml_collections
    import torch
    import transformers

    from lmtransfer.hf import packaged_minilm
    from lmtransfer.tasks.classification import ClassificationTask

    if a.threads:
        torch.set_num_threads(a.threads)
    model_dir = a.model or packaged_minilm()
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    cfg = ml_collections.ConfigDict(dict(data=dict(
        source="glue", dir=a.glue_dir, glue_task=a.task, max_length=a.max_length,
        max_examples=dict(train=0, dev=0))))
    task = ClassificationTask(cfg, tok)

    def dataset(split):
        s = task.load(split)
        rows = []
        for i in range(len(s)):
            L = int(s.features["length"][i])
            rows.append({"input_ids": s.features["input_ids"][i, :L].tolist(),
                         "token_type_ids": s.features["token_type_ids"][i, :L].tolist(),
                         "attention_mask": [1] * L,
                         "labels": s.features["label"][i].item()})
        return rows, s

    train_rows, train_split = dataset("train")
    dev_rows, dev_split = dataset(task.eval_splits()[0])
    transformers.set_seed(a.seed)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=task.num_labels,
        problem_type="regression" if task.regression else "single_label_classification")
    args = transformers.TrainingArguments(
        output_dir=os.path.join(a.out, "trainer"), per_device_train_batch_size=a.batch_size,
        per_device_eval_batch_size=64, learning_rate=a.lr, num_train_epochs=a.epochs,
        warmup_steps=0.1, weight_decay=0.01, max_grad_norm=1.0, lr_scheduler_type="linear",
        seed=a.seed, logging_steps=50, save_strategy="no", report_to=[], use_cpu=True,
        dataloader_num_workers=0)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=train_rows,
        data_collator=transformers.DataCollatorWithPadding(tok))
    start = time.perf_counter()
    out = trainer.train()
    train_s = time.perf_counter() - start
    pred = trainer.predict(dev_rows).predictions
    pred = pred[:, 0] if task.regression else np.argmax(pred, -1)
    dev_metrics = task.evaluate(dev_split, {"score": pred, "pred": pred})
    tokens = int(train_split.features["length"].sum()) * a.epochs
    result = {"task": a.task, "seed": a.seed, "dev": dev_metrics, "train_seconds": train_s,
              "train_tokens_per_s": tokens / train_s, "steps": out.global_step,
              "torch_threads": torch.get_num_threads(), "main_metric": task.main_metric}
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
