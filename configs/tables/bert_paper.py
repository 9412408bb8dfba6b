"""BERT paper tables (Devlin et al. 2019) as one sweep: Table 1 (GLUE), Table 2 (SQuAD v1.1),
Table 3 (SQuAD v2.0) and Table 7 (CoNLL-2003 NER), for BERT-base or BERT-large.

    python -m lmtransfer.sweep --table configs/tables/bert_paper.py:size=base,\\
uncased=/ckpt/bert-base-uncased,cased=/ckpt/bert-base-cased,data=/data --out runs/table_base
    python -m lmtransfer.report runs/table_base

Args: size (base | large: which paper column), uncased / cased (HF BERT dirs; GLUE and SQuAD use
the uncased model, CoNLL the cased one, as the paper), data (a root holding glue/<TASK>/,
squad_v1.1/{train,dev}-v1.1.json, squad_v2.0/{train,dev}-v2.0.json, conll2003/iob2/), seeds
(default 5), tables (comma-separated subset of glue,squad1,squad2,conll).

Grids, from the paper's Section 4 and Appendix A.3: GLUE batch 32, 3 epochs, lr in {5e-5, 4e-5,
3e-5, 2e-5}, best on dev; SQuAD v1.1 3 epochs, lr 5e-5, batch 32; SQuAD v2.0 2 epochs, lr 5e-5,
batch 48; CoNLL-2003 batch 32, 3 epochs, lr in {5e-5, 4e-5, 3e-5, 2e-5} (A.3's range).

Paper numbers and where they come from: Table 1 is the GLUE *test* server (our runs measure
dev, the only labelled split), F1 for QQP and MRPC, Spearman for STS-B, MCC for CoLA, accuracy
otherwise; Table 2 is SQuAD v1.1 dev (single model); Table 3 is SQuAD v2.0 dev (BERT-large
only); Table 7 is CoNLL-2003 dev and test F1 (fine-tuning approach).
"""

from lmtransfer import config as config_lib

GLUE_LRS = [5e-5, 4e-5, 3e-5, 2e-5]
# Table 1 (GLUE test server): task -> {metric: (base, large)}
TABLE1 = {
    "MNLI": ("mnli", {"dev_matched/accuracy": (84.6, 86.7),
                      "dev_mismatched/accuracy": (83.4, 85.9)}),
    "QQP": ("qqp", {"f1": (71.2, 72.1)}),
    "QNLI": ("qnli", {"accuracy": (90.5, 92.7)}),
    "SST-2": ("sst2", {"accuracy": (93.5, 94.9)}),
    "CoLA": ("cola", {"mcc": (52.1, 60.5)}),
    "STS-B": ("stsb", {"spearman": (85.8, 86.5)}),
    "MRPC": ("mrpc", {"f1": (88.9, 89.3)}),
    "RTE": ("rte", {"accuracy": (66.4, 70.1)}),
}
SQUAD1 = {"exact_match": (80.8, 84.1), "f1": (88.5, 90.9)}  # Table 2, dev
SQUAD2 = {"exact_match": (None, 78.7), "f1": (None, 81.9)}  # Table 3, dev
CONLL = {"dev/f1": (96.4, 96.6), "test/f1": (92.4, 92.8)}  # Table 7


def _paper(numbers: dict, size: str) -> dict:
    i = ("base", "large").index(size)
    return {k: v[i] for k, v in numbers.items() if v[i] is not None}


def get_table(arg=None):
    a = config_lib.parse_arg(arg, size="base", uncased="", cased="", data="../shared/data",
                             seeds=5, tables="glue,squad1,squad2,conll")
    if a.size not in ("base", "large"):
        raise ValueError(f"size={a.size!r}; use base or large")
    tables = set(a.tables.split(","))
    unknown = tables - {"glue", "squad1", "squad2", "conll"}
    if unknown:
        raise ValueError(f"tables={a.tables!r}: unknown {sorted(unknown)}")
    if not a.uncased or ("conll" in tables and not a.cased):
        raise ValueError("give the HF BERT dirs: uncased=<dir> (GLUE, SQuAD) and cased=<dir> "
                         "(CoNLL-2003)")
    tasks = []
    if "glue" in tables:
        for name, (task, numbers) in TABLE1.items():
            tasks.append(dict(
                name=name, config=f"configs/glue.py:task={task},model={a.uncased},"
                                  "recipe=bert_paper",
                overrides={"data.dir": f"{a.data}/glue"}, grid={"optim.lr": GLUE_LRS},
                paper=_paper(numbers, a.size), source="BERT Table 1 (GLUE test server)"))
    if "squad1" in tables:
        tasks.append(dict(
            name="SQuAD-v1.1", config=f"configs/squad.py:model={a.uncased},epochs=3",
            overrides={"data.dir": f"{a.data}/squad_v1.1"}, grid={"optim.lr": [5e-5]},
            paper=_paper(SQUAD1, a.size), source="BERT Table 2 (dev, single model)"))
    if "squad2" in tables:
        tasks.append(dict(
            name="SQuAD-v2.0", config=f"configs/squad.py:model={a.uncased},epochs=2",
            overrides={"data.dir": f"{a.data}/squad_v2.0", "data.files.train": "train-v2.0.json",
                       "data.files.dev": "dev-v2.0.json", "train.batch_size": 48},
            grid={"optim.lr": [5e-5]}, paper=_paper(SQUAD2, a.size),
            source="BERT Table 3 (dev, BERT-large only)"))
    if "conll" in tables:
        tasks.append(dict(
            name="CoNLL-2003", config=f"configs/ner.py:model={a.cased},recipe=bert_paper",
            overrides={"data.dir": f"{a.data}/conll2003/iob2"}, grid={"optim.lr": GLUE_LRS},
            paper=_paper(CONLL, a.size), source="BERT Table 7 (fine-tuning approach)"))
    return dict(name=f"BERT-{a.size} (Devlin et al. 2019, Tables 1, 2, 3, 7)",
                seeds=list(range(a.seeds)), tasks=tasks)
