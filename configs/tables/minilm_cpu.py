"""The CPU-scale table: the packaged MiniLM (all-MiniLM-L6-v2) fine-tuned on MRPC, CoLA, STS-B
(a train subset), an SST-2 subset, CoNLL-2003 (a train subset) and the SQuAD v1.1 dev split,
`recipe=bert_paper` (batch 32, 10% warmup, linear decay), one learning rate per task, 3 seeds.

    python -m lmtransfer.sweep --table configs/tables/minilm_cpu.py:data=../shared/data \\
        --out runs/table_minilm_cpu
    python -m lmtransfer.report runs/table_minilm_cpu

Budgets are sized for a 2-core CPU (roughly 45 minutes per seed, estimated from the single
runs in the README): MRPC and CoLA train on all of train, STS-B, SST-2 and CoNLL-2003 on seeded
2,000-example subsets, SQuAD on 400 questions of dev articles 0-39 (2 epochs) evaluated on
articles 40-47; every dev split is evaluated in full.

Args: data (a root holding glue/, conll2003/iob2/, squad_v1.1/), seeds (3), lr (0 = 2e-5 for
GLUE, 5e-5 for CoNLL and SQuAD). No paper reports this sentence-embedding MiniLM's
dev scores, so the table has no paper column; compare with the HF Trainer on the same recipe
(benchmarks/hf_trainer.py).
"""

from lmtransfer import config as config_lib


def get_table(arg=None):
    a = config_lib.parse_arg(arg, data="../shared/data", seeds=3, lr=0.0)
    glue = f"{a.data}/glue"

    def task(name, config, lr, **overrides):
        return dict(name=name, config=config, overrides=overrides,
                    grid={"optim.lr": [a.lr or lr]})

    return dict(name="MiniLM-L6-H384 (packaged all-MiniLM-L6-v2), CPU-scale", seeds=list(
        range(a.seeds)), tasks=[
        task("MRPC", "configs/glue.py:task=mrpc,model=minilm,recipe=bert_paper", 2e-5,
             **{"data.dir": glue}),
        task("CoLA", "configs/glue.py:task=cola,model=minilm,recipe=bert_paper", 2e-5,
             **{"data.dir": glue}),
        task("STS-B-2k", "configs/glue.py:task=stsb,model=minilm,recipe=bert_paper", 2e-5,
             **{"data.dir": glue, "data.max_examples.train": 2000}),
        task("SST-2-2k", "configs/glue.py:task=sst2,model=minilm,recipe=bert_paper",
             2e-5, **{"data.dir": glue, "data.max_examples.train": 2000}),
        task("CoNLL-2003-2k", "configs/ner.py:model=minilm,recipe=bert_paper", 5e-5,
             **{"data.dir": f"{a.data}/conll2003/iob2", "data.max_examples.train": 2000}),
        task("SQuAD-v1.1-devsplit-400",
             "configs/squad.py:model=minilm,layout=dev_split,epochs=2", 5e-5,
             **{"data.dir": f"{a.data}/squad_v1.1", "data.max_examples.train": 400}),
    ])
