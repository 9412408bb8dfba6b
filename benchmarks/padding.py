"""Padding and compiles of each run of a sweep table under the fixed length buckets (multiples of
16) and under the per-run plan (lmtransfer.train.ahead.plan_buckets), computed on the host from
the runs' own batches: nothing is trained.

    python benchmarks/padding.py --table configs/tables/minilm_cpu.py:data=../shared/data,seeds=1

For each run: the train buckets each way, the padded tokens over the run against padding every
batch to its longest row (the HF Trainer's dynamic padding), and the number of executables.
"""

import argparse
import tempfile

from lmtransfer import sharding, sweep
from lmtransfer.data import batching, bucket_plan
from lmtransfer.tasks import make_task
from lmtransfer.train import ahead, init


def _padding(longest, buckets):
    """(the buckets the steps use, padded tokens / each batch's longest row - 1)."""
    padded = bucket_plan.padded(longest, buckets)
    return sorted({int(n) for n in padded}), padded.sum() / longest.sum() - 1


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", required=True)
    p.add_argument("--only", default="", help="comma-separated task names")
    a = p.parse_args(argv)
    runs = sweep.expand(sweep.load_table(a.table), tempfile.mkdtemp(),
                        tuple(filter(None, a.only.split(","))))
    print("| run | steps | buckets: fixed / planned | padded tokens vs each batch's longest: "
          "fixed / planned | executables: fixed / planned |")
    print("|---|---:|---|---:|---:|")
    for run in runs:
        config = run.make_config()
        mesh = sharding.make_mesh(config.mesh.to_dict())
        tokenizer = init.load_tokenizer(config)
        task = make_task(config, tokenizer, tempfile.mkdtemp())
        t = config.train
        batcher = batching.Batcher(task.load("train").features, t.batch_size, mesh, (1,))
        total = t.steps or int(round(t.epochs * batcher.steps_per_epoch))
        model = init.build(config, task, tokenizer, mesh, sharding.rules_from_config(
            config.sharding_rules))[0]
        planned = ahead.plan_buckets(config, batcher, total, model, task)
        fixed = batching.default_buckets(config.data.max_length)
        longest = batcher.step_longest(0, total, config.seed)
        (f_used, f_pad), (p_used, p_pad) = (_padding(longest, b) for b in (fixed, planned))
        print(f"| {run.task} seed {run.seed} | {total} | {f_used} / {p_used} | "
              f"+{f_pad:.1%} / +{p_pad:.1%} | {len(f_used)} / {len(p_used)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
