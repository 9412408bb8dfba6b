"""Evaluation and prediction over whole splits, and the `eval` / `predict` modes.

Every example is predicted exactly once: batches are padded with weight-0 rows whose outputs
are discarded, and predictions are put back in split order by example index.
"""

from __future__ import annotations

import logging
import os
import time

import jax
import numpy as np

from lmtransfer import checkpoints, faults, logs, sharding
from lmtransfer.data import batching
from lmtransfer.tasks.base import Split

log = logging.getLogger(__name__)


def predict_split(eval_step, params, split: Split, batch_size: int, mesh, buckets,
                  sequence_outputs=None):
    """Returns (predictions in split order, mean loss or None, examples/s).

    `sequence_outputs` (name -> fill value) are per-token outputs; batches cut to a shorter
    length bucket are padded back to the split's max_length with the fill value."""
    batcher = batching.Batcher(split.features, batch_size, mesh, buckets)
    sequence_outputs = sequence_outputs or {}
    width = split.features["input_ids"].shape[1]
    outputs, loss_sum, weight = {}, 0.0, 0.0
    start = time.perf_counter()
    for batch, idx in batcher.eval_batches():
        preds, l_sum, w = eval_step(params, batch)
        valid = idx >= 0
        for k, v in preds.items():
            v = batching.gather(v)
            if k in sequence_outputs and v.shape[1] < width:
                pad = [(0, 0), (0, width - v.shape[1])] + [(0, 0)] * (v.ndim - 2)
                v = np.pad(v, pad, constant_values=sequence_outputs[k])
            if k not in outputs:
                outputs[k] = np.zeros((len(split),) + v.shape[1:], v.dtype)
            outputs[k][idx[valid]] = v[valid]
        loss_sum, weight = loss_sum + float(l_sum), weight + float(w)
        faults.point("eval")
    rate = len(split) / max(time.perf_counter() - start, 1e-9)
    return outputs, (loss_sum / weight if split.labelled and weight else None), rate


def evaluate(task, eval_step, params, splits, batch_size, mesh, buckets, out_dir=None):
    """Metrics per labelled split (and prediction files when `out_dir` is given)."""
    results = {}
    for split in splits:
        preds, loss, rate = predict_split(eval_step, params, split, batch_size, mesh, buckets,
                                          task.sequence_outputs)
        m = task.evaluate(split, preds) if split.labelled else {}
        if loss is not None:
            m["loss"] = loss
        m["examples"] = len(split)
        m["examples_per_s"] = rate
        results[split.name] = m
        if out_dir and jax.process_index() == 0:
            task.write_predictions(split, preds, out_dir)
    return results


def _run_splits(config, workdir, which: str, result_file: str):
    """Restores this workdir's best (else latest) checkpoint (a workdir without one:
    config.init_from as it is, e.g. zero-/few-shot scoring) and runs it on the task's
    `which` splits ("eval" or "test"), writing predictions and `result_file`."""
    from lmtransfer.tasks import make_task
    from lmtransfer.train import init
    from lmtransfer.train.step import make_eval_step

    mesh = sharding.make_mesh(config.mesh.to_dict())
    rules = sharding.rules_from_config(config.sharding_rules)
    tokenizer = init.load_tokenizer(config, workdir)
    task = make_task(config, tokenizer, workdir)
    if checkpoints.is_checkpoint(workdir) or not (config.init_from or config.model.preset):
        model, params, meta = checkpoints.load_model(workdir, mesh=mesh, rules=rules,
                                                     **init.config_overrides(config))
        log.info("restored %s (head=%s)", checkpoints.resolve(workdir), meta["head"])
    else:  # zero-/few-shot: the model as it comes, no training
        model, params = init.build(config, task, tokenizer, mesh, rules)
        log.info("%s has no checkpoint: evaluating config.init_from=%s as it is", workdir,
                 config.init_from or config.model.preset)
    init.check_fits(config, model, tokenizer)
    names = task.eval_splits() if which == "eval" else task.test_splits()
    splits = [task.load(s) for s in names]
    step = jax.jit(make_eval_step(model, task))
    with sharding.use_mesh(mesh, rules):
        results = evaluate(task, step, params, splits, config.train.eval_batch_size, mesh,
                           buckets(config), out_dir=os.path.join(workdir, "predictions"))
    logs.write_json(os.path.join(workdir, result_file), results)
    return results


def evaluate_mode(config, workdir):
    """`eval`: metrics of the saved model on the task's dev splits -> eval_results.json."""
    return _run_splits(config, workdir, "eval", "eval_results.json")


def predict_mode(config, workdir):
    """`predict`: predictions for the task's test splits (GLUE: submission files too)."""
    return _run_splits(config, workdir, "test", "predict_results.json")


def buckets(config):
    """Eval's length buckets (and a train run's before it plans its own: ahead.plan_buckets)."""
    return batching.fixed_buckets(config.data)
