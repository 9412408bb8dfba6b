"""Experiment tracking: `config.logging.wandb_project` logs the run's metrics, its resolved
config and its results to Weights & Biases, here in W&B's offline mode (no network)."""

import glob
import hashlib
import json

from lmtransfer import main
from tests.glue_data import make_glue
from tests.test_faults import tiny


def test_wandb_offline_run_has_metrics_config_and_results(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    c = tiny(make_glue(str(tmp_path / "glue"), n_train=16), steps=4, eval_every=2)
    c.logging.wandb_project, c.logging.wandb_mode = "lmtransfer-test", "offline"
    workdir = str(tmp_path / "run")
    res = main.run(c, workdir)
    assert res["runtime"]["backend"] == "cpu" and "xla_flags" in res["runtime"]
    run_id = hashlib.sha256(workdir.encode()).hexdigest()[:16]  # stable: a resume continues it
    files = glob.glob(f"{workdir}/wandb/offline-run-*-{run_id}/run-{run_id}.wandb")
    assert len(files) == 1, glob.glob(f"{workdir}/wandb/*")
    record = open(files[0], "rb").read()  # W&B's protobuf log: keys and JSON values as bytes
    rows = [json.loads(x) for x in open(f"{workdir}/metrics.jsonl")]
    last_loss = [r for r in rows if r["kind"] == "train"][-1]["loss"]
    for needle in ("train/loss", json.dumps(last_loss), "eval/dev/accuracy",
                   "final/dev/accuracy", json.dumps(res["final"]["dev"]["accuracy"]),
                   "glue_task", '"sst2"'):
        assert needle.encode() in record, needle
