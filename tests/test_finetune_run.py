"""A whole fine-tuning run through the CLI entry point: outputs, HF export that predicts the
same labels in transformers, eval / predict modes and GLUE submission files."""

import json
import os

import numpy as np
import pytest
import torch
import transformers

from lmtransfer import main
from tests.configs_loader import load_config
from tests.glue_data import make_glue


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = make_glue(str(tmp_path_factory.mktemp("glue")), n_train=48, n_dev=21, n_test=13)
    workdir = str(tmp_path_factory.mktemp("rte"))
    c = load_config("glue.py", "task=rte,model=tiny")
    c.data.dir = root
    c.train.batch_size, c.train.eval_batch_size = 8, 16
    c.train.epochs, c.train.eval_every, c.train.log_every = 2.0, 3, 2
    c.train.export_hf = True
    c.optim.lr = 1e-3
    results = main.run(c, workdir)
    return c, workdir, results


def test_run_outputs(trained):
    _, workdir, results = trained
    for name in ("config.json", "metrics.jsonl", "results.json", "predictions/dev.jsonl",
                 "hf/config.json", "hf/model.safetensors", "hf/tokenizer.json"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tb")))
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == [2, 4, 6, 8, 10, 12]  # 2 epochs x 6 batches
    for key in ("loss", "lr", "grad_norm", "param_norm", "tokens_per_s", "step_time_s"):
        assert np.isfinite(train_rows[-1][key]), key
    assert {r["step"] for r in rows if r["kind"] == "eval/dev"} == {3, 6, 9, 12}
    assert results["final_step"] == 12 and results["final"]["dev"]["examples"] == 21
    assert results["best"]["metric"] == "accuracy"
    preds = [json.loads(line) for line in open(os.path.join(workdir, "predictions/dev.jsonl"))]
    assert len(preds) == 21 and {"id", "gold", "prediction", "logits"} <= set(preds[0])
    # the predictions are the best checkpoint's (written by the final eval when it is the best)
    best = results["best"]["results"]["dev"]["accuracy"]
    assert np.mean([p["gold"] == p["prediction"] for p in preds]) == pytest.approx(best)
    phases = results["phases_s"]
    assert set(phases) == {"startup", "load", "compile", "train", "eval", "write", "total"}
    assert min(phases.values()) >= 0 and phases["compile"] > 0
    assert sum(v for k, v in phases.items() if k != "total") == pytest.approx(phases["total"],
                                                                               rel=0.02)


def test_hf_export_predicts_the_same_labels(trained):
    config, workdir, _ = trained
    from lmtransfer.tasks import make_task
    from lmtransfer.train import init

    task = make_task(config, init.load_tokenizer(config))
    dev = task.load("dev")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        os.path.join(workdir, "hf")).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(dev.features["input_ids"]).long(),
                       attention_mask=torch.tensor(dev.features["attention_mask"]).long(),
                       token_type_ids=torch.tensor(dev.features["token_type_ids"]).long()).logits
    hf_labels = [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
    ours = [json.loads(line) for line in open(os.path.join(workdir, "predictions/dev.jsonl"))]
    assert hf_labels == [r["prediction"] for r in ours]
    np.testing.assert_allclose(logits.numpy(), [r["logits"] for r in ours], atol=1e-4)


def test_eval_and_predict_modes(trained):
    config, workdir, results = trained
    c = config.copy_and_resolve_references()
    c.mode = "eval"
    ev = main.run(c, workdir)
    best = results["best"]["results"]["dev"]
    assert ev["dev"]["accuracy"] == pytest.approx(best["accuracy"])
    c.mode = "predict"
    main.run(c, workdir)
    lines = open(os.path.join(workdir, "predictions/glue/RTE.tsv")).read().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 14
    assert all(row.split("\t")[1] in ("entailment", "not_entailment") for row in lines[1:])
    assert [row.split("\t")[0] for row in lines[1:]] == [str(i) for i in range(13)]


def test_init_from_lmtransfer_workdir_new_head(trained, tmp_path, caplog):
    config, workdir, _ = trained
    c = load_config("glue.py", "task=stsb,model=tiny")
    c.init_from = workdir  # our own fine-tuned encoder, a regression head instead
    c.data.dir = config.data.dir
    c.train.batch_size, c.train.eval_batch_size, c.train.steps = 8, 16, 2
    with caplog.at_level("INFO", logger="lmtransfer.train.init"):
        results = main.run(c, str(tmp_path / "stsb"))
    assert "initialised fresh: classifier/bias, classifier/kernel" in caplog.text
    assert "pearson_spearman" in results["final"]["dev"]


def test_resume_of_finished_run_and_head_mismatch(trained, tmp_path):
    config, workdir, _ = trained
    c = load_config("glue.py", "task=stsb,model=tiny")
    c.data.dir = config.data.dir
    with pytest.raises(ValueError, match=r"holds a run with a different config \(data.glue_task: "
                                         r"'rte' -> 'stsb'; .*pass --overwrite"):
        main.run(c, workdir)
    # Without the config file (an older run), the checkpoint itself refuses the other head.
    os.rename(os.path.join(workdir, "config.json"), os.path.join(workdir, "config.json.bak"))
    try:
        with pytest.raises(ValueError, match="holds a classification model with 2 labels but "
                                             "the task needs classification with 1"):
            main.run(c, workdir)
    finally:
        os.replace(os.path.join(workdir, "config.json.bak"), os.path.join(workdir, "config.json"))
