"""Model presets and fine-tuning hyper-parameter recipes shared by the config files."""

RECIPES = {
    "seed": dict(batch_size=16, eval_batch_size=64, epochs=3.0, warmup_steps=500,
                 warmup_ratio=0.0, weight_decay=0.01, lr=5e-5),
    "bert_paper": dict(batch_size=32, eval_batch_size=64, epochs=3.0, warmup_steps=0,
                       warmup_ratio=0.1, weight_decay=0.01, lr=2e-5),
}
PAPER_LRS = (5e-5, 4e-5, 3e-5, 2e-5)


def apply_model(c, model: str) -> None:
    """model=minilm | a preset (tiny, gpt-tiny, llama-tiny, ...: random init) | an HF
    checkpoint dir, a Hugging Face Hub id (`roberta-base`, `org/name@rev`) or an lmtransfer
    workdir, of any family (resolved by lmtransfer.train.init)."""
    from lmtransfer.models import bert, gpt, llama

    if model in bert.PRESETS or model in gpt.PRESETS or model in llama.PRESETS:
        c.init_from, c.model.preset = "", model
    elif model == "minilm":
        from lmtransfer.hf import packaged_minilm

        c.init_from = str(packaged_minilm())
    else:
        c.init_from = model


def apply_recipe(c, recipe: str, lr: float) -> None:
    if recipe not in RECIPES:
        raise ValueError(f"recipe={recipe!r}; use one of {sorted(RECIPES)}")
    r = RECIPES[recipe]
    c.train.batch_size, c.train.eval_batch_size = r["batch_size"], r["eval_batch_size"]
    c.train.epochs = r["epochs"]
    c.optim.warmup_steps, c.optim.warmup_ratio = r["warmup_steps"], r["warmup_ratio"]
    c.optim.weight_decay = r["weight_decay"]
    c.optim.lr = lr or r["lr"]
    if recipe == "bert_paper" and c.optim.lr not in PAPER_LRS:
        raise ValueError(f"lr={c.optim.lr} is not in the paper's grid {PAPER_LRS}")
