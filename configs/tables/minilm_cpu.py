"""The CPU-scale table: the packaged MiniLM (all-MiniLM-L6-v2) fine-tuned on MRPC, CoLA, STS-B,
SST-2, CoNLL-2003 and the SQuAD v1.1 dev split with `recipe=bert_paper` (batch 32, 10% warmup,
linear decay, 3 epochs), one learning rate per task, 3 seeds.

    python -m lmtransfer.sweep --table configs/tables/minilm_cpu.py:data=../shared/data \\
        --out runs/table_minilm_cpu
    python -m lmtransfer.sweep --table configs/tables/minilm_cpu.py:data=../shared/data \\
        --out runs/table_minilm_cpu --peer hf
    python -m lmtransfer.report runs/table_minilm_cpu --out docs

Measured on 2 cores: 4,967 s (lmtransfer) and 3,302 s (the Trainer); docs/results.md.

Budgets are sized so that both sides (lmtransfer, then the Hugging Face Trainer on the same
recipe) run 3 seeds in well under three hours on a 2-core CPU: every task trains on a seeded random
1,000 examples of its train split (the same subset for every seed, `data.max_examples.train`),
SQuAD on 300 questions of dev articles 0-39 for 2 epochs and is evaluated on a seeded 500 of
the 1,589 questions of articles 40-47; every other dev (and CoNLL test) split is evaluated in
full. With ~90 steps per run, the learning rate is the largest of the paper's grid (5e-5).

Args: data (a root holding glue/, conll2003/iob2/, squad_v1.1/), seeds (3), lr (5e-5), train
(1000: the train subset size; 0 = all). No paper reports this sentence-embedding MiniLM's dev
scores, so the table has no paper column; the peer column is the HF Trainer (`--peer hf`).
"""

from lmtransfer import config as config_lib


def get_table(arg=None):
    a = config_lib.parse_arg(arg, data="../shared/data", seeds=3, lr=5e-5, train=1000)
    glue = f"{a.data}/glue"
    k = "full" if not a.train else f"{a.train // 1000}k" if a.train % 1000 == 0 else a.train

    def task(name, config, data_dir, **overrides):
        return dict(name=name, config=config, grid={"optim.lr": [a.lr]}, overrides={
            "data.dir": data_dir, "data.max_examples.train": a.train, **overrides})

    def glue_task(name, task_name):
        return task(f"{name}-{k}", f"configs/glue.py:task={task_name},model=minilm,"
                    "recipe=bert_paper", glue)

    return dict(name="MiniLM-L6-H384 (packaged all-MiniLM-L6-v2), CPU-scale", seeds=list(
        range(a.seeds)), tasks=[
        glue_task("MRPC", "mrpc"), glue_task("CoLA", "cola"), glue_task("STS-B", "stsb"),
        glue_task("SST-2", "sst2"),
        task(f"CoNLL-2003-{k}", "configs/ner.py:model=minilm,recipe=bert_paper",
             f"{a.data}/conll2003/iob2"),
        task("SQuAD-v1.1-devsplit-300", "configs/squad.py:model=minilm,layout=dev_split,epochs=2",
             f"{a.data}/squad_v1.1", **{"data.max_examples.train": 300,
                                        "data.max_examples.dev": 500}),
    ])
