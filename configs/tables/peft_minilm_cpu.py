"""LoRA beside full fine-tuning at CPU scale: the packaged MiniLM (all-MiniLM-L6-v2) on SST-2
and MRPC with `recipe=bert_paper` (batch 32, 10% warmup, linear decay, 3 epochs), 3 seeds,
the best grid point per row picked on dev.

    python -m lmtransfer.sweep --table configs/tables/peft_minilm_cpu.py:data=../shared/data \\
        --out runs/table_peft_minilm_cpu
    python -m lmtransfer.report runs/table_peft_minilm_cpu --out docs/peft

Rows: full fine-tuning over the BERT paper's GLUE grid, lr in {5e-5, 4e-5, 3e-5, 2e-5}, and
LoRA (`peft.method=lora`: rank 8, alpha 16, dropout 0.1 on the query and value projections,
the classifier trained in full, the pooler frozen as in PEFT) over a stated grid. LoRA trains
0.33% of MiniLM's weights and wants far more than full fine-tuning's rate (the LoRA paper's
GLUE runs use 4e-4 to 5e-4 over far more steps; these have 96). SST-2: lr in {5e-4, 1e-3,
2e-3, 5e-3} (5e-3 added when 2e-3 was the best of the first three). MRPC: {2e-3, 5e-3}, SST-2's
two best, because MRPC's longer pairs cost twice SST-2's time per run on this machine.

As in configs/tables/minilm_cpu.py, every task trains on the same seeded random 1,000 examples
of its train split (`data.max_examples.train`) so that the 42 runs fit a 2-core CPU session;
the dev splits are evaluated in full. Args: data (a root holding glue/), seeds (3, or the seeds
joined by "/"), train (1000; 0 = all), only (GLUE task names joined by "+", default
"sst2+mrpc"), full_lrs and lora_lrs (grids joined by "/", lora_lrs for every task). A subset
of seeds or points runs only those runs, in the same run directories, so several sweep
processes can share one table's runs.
"""

from lmtransfer import config as config_lib

FULL_LRS = "5e-5/4e-5/3e-5/2e-5"  # BERT, Section 4 / Appendix A.3
LORA_LRS = {"sst2": "5e-4/1e-3/2e-3/5e-3", "mrpc": "2e-3/5e-3"}  # per task; others: SST-2's
NAMES = {"sst2": "SST-2", "mrpc": "MRPC", "cola": "CoLA", "stsb": "STS-B", "rte": "RTE",
         "qnli": "QNLI", "qqp": "QQP", "mnli": "MNLI"}


def get_table(arg=None):
    a = config_lib.parse_arg(arg, data="../shared/data", seeds="3", train=1000,
                             only="sst2+mrpc", full_lrs=FULL_LRS, lora_lrs="")
    seeds = ([int(x) for x in a.seeds.split("/")] if "/" in a.seeds
             else list(range(int(a.seeds))))
    k = "full" if not a.train else f"{a.train // 1000}k" if a.train % 1000 == 0 else a.train
    tasks = []
    for name in a.only.split("+"):
        if name not in NAMES:
            raise ValueError(f"table arg only={a.only!r}: {name!r} is not one of {sorted(NAMES)}")
        full_lrs, lora_lrs = (_grid(v) for v in (
            a.full_lrs, a.lora_lrs or LORA_LRS.get(name, LORA_LRS["sst2"])))
        common = dict(config=f"configs/glue.py:task={name},model=minilm,recipe=bert_paper")
        data = {"data.dir": f"{a.data}/glue", "data.max_examples.train": a.train}
        tasks += [
            dict(name=f"{NAMES[name]}-{k} full", grid={"optim.lr": full_lrs}, overrides=data,
                 **common),
            dict(name=f"{NAMES[name]}-{k} LoRA r8", grid={"optim.lr": lora_lrs},
                 overrides={**data, "peft.method": "lora"}, **common)]
    return dict(name="LoRA vs full fine-tuning, MiniLM-L6-H384 (packaged all-MiniLM-L6-v2), "
                "CPU-scale", seeds=seeds, tasks=tasks)


def _grid(spec: str) -> list[float]:
    return [float(x) for x in spec.split("/")]
