"""Bucket workdirs, end to end, against a local GCS emulator (tests/conftest.py): a fine-tuning
run written straight to gs://, killed with -9 mid-save and resumed (losses equal an
uninterrupted local run's), eval and predict modes reading it, its HF export loaded back from
the bucket, a sweep and its report there, and a missing bucket refused before training."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from lmtransfer import checkpoints, faults, hf, main, paths
from tests.glue_data import make_glue
from tests.test_faults import REPO, tiny

STEPS = 12


@pytest.fixture(scope="module")
def glue_root(tmp_path_factory):
    return make_glue(str(tmp_path_factory.mktemp("glue")), n_train=64)


def config(glue_root, **train):
    c = tiny(glue_root, **{"steps": STEPS, "checkpoint_every": 4, "eval_every": 4,
                           "keep_checkpoints": 2, **train})
    c.optim.lr = 1e-3
    return c


def cli(glue_root, workdir, kill_at=None):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    env.pop(faults.ENV, None)
    if kill_at:
        env[faults.ENV] = kill_at
    args = ["--config", "configs/glue.py:task=sst2,model=tiny", f"--config.data.dir={glue_root}",
            f"--config.train.steps={STEPS}", "--config.train.batch_size=8",
            "--config.train.eval_batch_size=32", "--config.train.log_every=1",
            "--config.train.checkpoint_every=4", "--config.train.eval_every=4",
            "--config.train.keep_checkpoints=2", "--config.optim.lr=1e-3",
            "--config.train.export_hf=True", "--workdir", workdir]
    return subprocess.run([sys.executable, "-m", "lmtransfer.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def losses(workdir):
    out = {}
    for line in paths.read_text(paths.join(workdir, "metrics.jsonl")).splitlines():
        row = json.loads(line)
        if row["kind"] == "train":
            out[row["step"]] = row["loss"]
    return out


def test_finetune_in_bucket_kill9_resume_eval_predict_export(glue_root, bucket_dir, tmp_path):
    ref = config(glue_root, export_hf=True)
    want = main.run(ref, str(tmp_path / "ref"))
    r = cli(glue_root, bucket_dir, kill_at="save:8")
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert not os.path.exists(os.path.join(REPO, "gs:"))  # not taken as a local path
    assert paths.isdir(paths.join(bucket_dir, "checkpoints", "4"))
    r = cli(glue_root, bucket_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from step " in r.stderr
    got, ref_losses = losses(bucket_dir), losses(str(tmp_path / "ref"))
    assert sorted(got) == list(range(1, STEPS + 1))
    for step, loss in ref_losses.items():
        assert got[step] == pytest.approx(loss, abs=1e-6), step
    res = paths.read_json(paths.join(bucket_dir, "results.json"))
    assert res["final"]["dev"]["accuracy"] == want["final"]["dev"]["accuracy"]
    names = paths.listdir(bucket_dir)
    assert {"checkpoints", "best", "hf", "tb", "tokenizer", "metrics.jsonl", "config.json",
            "results.json"} <= set(names), names
    assert ".lmtransfer-write-probe" not in names
    # Every checkpoint Orbax lists in the bucket is committed (its commit_success.txt).
    steps = checkpoints.resolve(paths.join(bucket_dir, "checkpoints"))
    assert steps[1] == STEPS
    # The HF export, read back from the bucket, is the local run's export.
    _, p_got = hf.load_pretrained(paths.join(bucket_dir, "hf"))
    _, p_want = hf.load_pretrained(str(tmp_path / "ref" / "hf"))
    for a, b in zip(jax.tree.leaves(p_got), jax.tree.leaves(p_want), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    # eval and predict read the bucket workdir and write their outputs into it.
    ev = config(glue_root)
    ev.mode = "eval"
    out = main.run(ev, bucket_dir)
    assert out["dev"]["accuracy"] == res["final"]["dev"]["accuracy"]
    assert paths.exists(paths.join(bucket_dir, "eval_results.json"))
    pr = config(glue_root)
    pr.mode = "predict"
    main.run(pr, bucket_dir)
    rows = paths.read_text(paths.join(bucket_dir, "predictions", "test.jsonl")).splitlines()
    assert len(rows) == 13
    # A run that reads everything from the bucket: its data files, the tokenizer the run kept,
    # and init_from = the bucket workdir (Orbax reads the checkpoint in place).
    paths.upload_dir(os.path.join(glue_root, "SST-2"), paths.join(bucket_dir, "glue", "SST-2"))
    c = config(glue_root, steps=2, eval_every=0)
    c.data.dir, c.init_from = paths.join(bucket_dir, "glue"), bucket_dir
    c.model.tokenizer = paths.join(bucket_dir, "tokenizer")
    res2 = main.run(c, str(tmp_path / "from-bucket"))
    assert res2["final_step"] == 2
    cfg = json.load(open(tmp_path / "from-bucket" / "config.json"))
    assert cfg["init_from"] == bucket_dir and cfg["data"]["dir"].startswith("gs://")


def test_missing_bucket_is_refused_before_training(glue_root, gcs_emulator, tmp_path):
    r = cli(glue_root, "gs://no-such-bucket/run")
    assert r.returncode == 2, r.stderr[-3000:]
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("error: gs://no-such-bucket/run: writing failed")
    assert "gcloud auth application-default login" in err and "bucket exists" in err
    assert "Traceback" not in r.stderr and "step 1" not in r.stderr


def test_sweep_and_report_in_bucket(bucket_dir, tmp_path):
    from lmtransfer import report, sweep
    from tests.test_sweep import write_table

    root = make_glue(str(tmp_path / "glue"), n_train=32)
    table = write_table(tmp_path / "t.py", root)
    out = paths.join(bucket_dir, "sweep")
    args = ["--table", table, "--out", out, "--only", "MRPC", "--compilation_cache", ""]
    summary = sweep.main(args)
    assert set(summary["selected"]["MRPC"]["dev_by_point"]) == {"lr=0.001", "lr=0.0001"}
    assert paths.read_json(paths.join(out, "summary.json"))["selected"] == summary["selected"]
    runs = sweep.expand(sweep.load_table(table), out, only=("MRPC",))
    assert [r.status() for r in runs] == ["done", "done"]  # a rerun skips them
    md = report.main([out])
    assert md == paths.join(out, "results.md")
    assert "| MRPC | dev | accuracy |" in paths.read_text(md)
    with paths.open(paths.join(out, "plots", "curves_MRPC.png"), "rb") as f:
        assert f.read(4) == b"\x89PNG"  # drawn from the runs' metrics.jsonl in the bucket
    rows = paths.read_text(paths.join(out, "runs.csv")).splitlines()
    assert rows[1].endswith("MRPC/lr=0.001/seed0")  # relative to the sweep dir


def test_pretraining_corpus_store_and_run_in_bucket(bucket_dir, tmp_path):
    """Raw text globbed from the bucket, the token store prepared into it (each shard uploaded
    JSON last) and read back through the local mirror: the same shards and losses as local."""
    from lmtransfer import prepare
    from tests.corpus_data import corpus_tokenizer, make_corpus
    from tests.test_store import config_for

    root = make_corpus(str(tmp_path / "corpus"), n_train=120)
    corpus_tokenizer(root, "wordpiece")
    remote = paths.join(bucket_dir, "corpus")
    for name in ("train.txt", "eval.jsonl"):
        paths.write_bytes(paths.join(remote, name), open(os.path.join(root, name), "rb").read())
    c = config_for(root, train_files=paths.join(remote, "*.txt"),
                   eval_files=paths.join(remote, "eval.jsonl"), shards=2)
    got = prepare.prepare(c, paths.join(bucket_dir, "store"), progress=False)
    want = prepare.prepare(config_for(root, shards=2), str(tmp_path / "store"), progress=False)
    for split, shards in (("train", ("shard-00000", "shard-00001")), ("dev", ("shard-00000",))):
        for s in shards:
            assert (paths.read_json(paths.join(got[split], s + ".json"))
                    == paths.read_json(os.path.join(want[split], s + ".json")))
    losses_of = {}
    for name, store, workdir in (("bucket", paths.join(bucket_dir, "store"),
                                  paths.join(bucket_dir, "run")),
                                 ("local", str(tmp_path / "store"), str(tmp_path / "run"))):
        t = config_for(root, store=store, train_files="", eval_files="", shards=2)
        t.train.eval_every = 0
        main.run(t, workdir)
        losses_of[name] = losses(workdir)
    assert losses_of["bucket"] == pytest.approx(losses_of["local"], abs=1e-6)
