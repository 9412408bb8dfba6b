"""Fault handling: non-finite losses, a workdir claimed by another config."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lmtransfer import checkpoints, main
from tests.configs_loader import load_config
from tests.glue_data import make_glue


@pytest.fixture(scope="module")
def glue_root(tmp_path_factory):
    return make_glue(str(tmp_path_factory.mktemp("glue")), n_train=64)


def tiny(glue_root, **train):
    c = load_config("glue.py", "task=sst2,model=tiny")
    c.data.dir = glue_root
    c.train.steps, c.train.batch_size, c.train.eval_batch_size = 12, 8, 32
    c.train.checkpoint_every, c.train.log_every = 1, 1
    for k, v in train.items():
        c.train[k] = v
    return c


def exploding(glue_root, **train):
    """An absurd learning rate without clipping: finite for a step or two, then NaN."""
    c = tiny(glue_root, **train)
    c.optim.lr, c.optim.warmup_ratio, c.optim.max_grad_norm = 1e6, 0.0, 0.0
    return c


def test_nonfinite_loss_stops_naming_step_and_last_good_checkpoint(glue_root, tmp_path):
    with pytest.raises(FloatingPointError) as e:
        main.run(exploding(glue_root), str(tmp_path))
    msg = str(e.value)
    step = int(msg.split(":")[0].split()[1])
    assert msg.startswith(f"step {step}: loss=nan") and "is not finite; training stopped" in msg
    assert "skip_nonfinite=True" in msg and "config.optim.lr" in msg
    mngr = ocp.CheckpointManager(os.path.join(tmp_path, "checkpoints"))
    steps = mngr.all_steps()
    mngr.close()
    assert steps and max(steps) < step  # nothing from the non-finite state was saved
    assert f"the last good checkpoint is step {max(steps)}" in msg
    _, params, _ = checkpoints.load_model(str(tmp_path / "checkpoints" / str(max(steps))))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_skip_nonfinite_counts_skipped_updates(glue_root, tmp_path):
    res = main.run(exploding(glue_root, skip_nonfinite=True), str(tmp_path))
    assert res["final_step"] == 12 and 0 < res["skipped_updates"] <= 12
    rows = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    train = [r for r in rows if r["kind"] == "train"]
    assert train[-1]["skipped_updates"] == res["skipped_updates"]
    assert sum(r["nonfinite"] for r in train) == res["skipped_updates"]
    _, params, _ = checkpoints.load_model(str(tmp_path))  # skipped updates never land
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_workdir_of_another_config_is_refused_unless_overwrite(glue_root, tmp_path):
    main.run(tiny(glue_root, steps=2), str(tmp_path))
    again = tiny(glue_root, steps=2, log_every=2)  # a harmless change: resumes (finished)
    main.run(again, str(tmp_path))
    other = tiny(glue_root, steps=2)
    other.optim.lr = 3e-5
    with pytest.raises(ValueError, match=r"holds a run with a different config \(optim.lr: "
                                         r"2e-05 -> 3e-05\)\. .*--overwrite"):
        main.run(other, str(tmp_path))
    assert json.load(open(tmp_path / "config.json"))["optim"]["lr"] == 2e-5  # untouched
    res = main.run(other, str(tmp_path), overwrite=True)
    assert res["final_step"] == 2
    assert json.load(open(tmp_path / "config.json"))["optim"]["lr"] == 3e-5
    steps = [json.loads(x)["step"] for x in open(tmp_path / "metrics.jsonl")
             if json.loads(x)["kind"] == "train"]
    assert steps == [1, 2]  # the old run's log is gone, not mixed in
    ev = other.copy_and_resolve_references()
    ev.mode = "eval"
    main.run(ev, str(tmp_path))  # eval reads the workdir; it keeps the train config
    assert json.load(open(tmp_path / "config.json"))["mode"] == "train"
    assert json.load(open(tmp_path / "eval_config.json"))["mode"] == "eval"
