"""Fault handling: kill -9 in every phase, non-finite losses, a workdir claimed by another
config, a checkpoint save that fails."""

import json
import os
import re
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lmtransfer import checkpoints, faults, main, sharding
from lmtransfer.models import from_preset
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


# ------------------------------------------------------------------ kill -9 at every phase

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KILLS = ("step:4", "save:10", "eval:15", "step:18", "save:20", "eval:25")


def command(glue_root, workdir):
    return [sys.executable, "-m", "lmtransfer.main", "--config",
            "configs/glue.py:task=sst2,model=tiny", f"--config.data.dir={glue_root}",
            "--config.train.steps=30", "--config.train.batch_size=8",
            "--config.train.eval_batch_size=8", "--config.train.log_every=1",
            "--config.train.checkpoint_every=5", "--config.train.eval_every=5",
            "--config.train.keep_checkpoints=2", "--config.optim.lr=1e-3",
            "--workdir", str(workdir)]


def run(glue_root, workdir, kill_at=None):
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    env.pop(faults.ENV, None)
    if kill_at:
        env[faults.ENV] = kill_at
    return subprocess.run(command(glue_root, workdir), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)


def train_losses(workdir):
    """step -> loss; a resumed run re-logs steps after its checkpoint and the last one wins."""
    out = {}
    for row in map(json.loads, open(os.path.join(workdir, "metrics.jsonl"))):
        if row["kind"] == "train":
            out[row["step"]] = row["loss"]
    return out


def complete_steps(workdir):
    mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    steps = mngr.all_steps()
    for s in steps:  # every listed step restores: nothing half-written poses as finished
        mngr.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    mngr.close()
    return steps


def test_six_kill_9s_at_step_save_and_eval_then_equal_to_uninterrupted(glue_root, tmp_path):
    ref = run(glue_root, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    workdir = tmp_path / "killed"
    resume_from = None
    for kill_at in KILLS:
        r = run(glue_root, workdir, kill_at)
        assert r.returncode == -signal.SIGKILL, (kill_at, r.stderr[-3000:])
        assert (f"resumed from step {resume_from} " in r.stderr if resume_from else
                "resumed from" not in r.stderr), kill_at
        point, step = kill_at.split(":")
        steps = complete_steps(workdir)
        # step:N / eval:N die before checkpoint N is written; save:N while writing it (if it
        # had already finished, it must restore like any other). A kill may also land while
        # an earlier async save is still in flight: that one is then not complete either.
        assert max(steps, default=0) <= int(step) - (point != "save"), (kill_at, steps)
        resume_from = max(steps, default=None)
        assert not os.path.exists(workdir / "results.json")  # no partial results
    r = run(glue_root, workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert resume_from and f"resumed from step {resume_from} " in r.stderr
    got, want = train_losses(workdir), train_losses(tmp_path / "ref")
    assert sorted(got) == list(range(1, 31))
    for step in want:
        assert got[step] == pytest.approx(want[step], abs=1e-6), step
    _, p_got, _ = checkpoints.load_model(str(workdir / "checkpoints" / "30"))
    _, p_want, _ = checkpoints.load_model(str(tmp_path / "ref" / "checkpoints" / "30"))
    for a, b in zip(jax.tree.leaves(p_got), jax.tree.leaves(p_want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    final = [json.load(open(w / "results.json"))["final"]["dev"] for w in (workdir,
                                                                            tmp_path / "ref")]
    assert final[0]["accuracy"] == final[1]["accuracy"]
    assert final[0]["loss"] == pytest.approx(final[1]["loss"], abs=1e-6)


def test_failed_checkpoint_save_keeps_the_previous_one(glue_root, tmp_path, monkeypatch):
    """The disk fills while checkpoint 6 is written: the run stops with an error naming the
    last complete checkpoint, which restores; the same command then resumes from it."""
    import errno

    from orbax.checkpoint._src.path import atomicity

    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def disk_full(self, *args, **kwargs):
        if self.get_final().name == "6":
            raise OSError(errno.ENOSPC, "No space left on device")
        return await finalize(self, *args, **kwargs)

    c = tiny(glue_root, steps=10, checkpoint_every=3, keep_checkpoints=1)
    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", disk_full)
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"No space left on device\). The last complete checkpoint is step "
                             r"3; .*rerun the same command"):
        main.run(c, str(tmp_path))
    assert complete_steps(tmp_path) == [3]  # keep_checkpoints=1 did not drop it for 6
    assert not os.path.exists(tmp_path / "results.json")
    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", finalize)
    res = main.run(c, str(tmp_path))
    assert res["final_step"] == 10 and complete_steps(tmp_path) == [10]


# ---------------------------------------------------------------------- bad input matrix

def _checkpoint(path, preset, head, **overrides):
    """A random model saved as an lmtransfer checkpoint (no tokenizer beside it)."""
    model = from_preset(preset, head, 2, **overrides)
    params = sharding.unbox(model.init(jax.random.key(0), np.zeros((1, 4), np.int32)))
    checkpoints.save_model(str(path), 0, model, params["params"])
    return str(path)


def _gpt_without_pad(path):
    """A GPT workdir whose tokenizer, like GPT-2's, has no pad token."""
    from lmtransfer import tokenization

    _checkpoint(path, "gpt-tiny", "lm")
    tok = tokenization.train_tokenizer("bpe", ["a few words of text"] * 10, 300,
                                       str(path / "tokenizer"))
    tok.pad_token = None
    tok.save_pretrained(str(path / "tokenizer"))
    return str(path)


def _bad_utf8(root):
    with open(os.path.join(root, "SST-2", "train.tsv"), "ab") as f:
        f.write(b"caf\xe9 au lait\t1\n")


def _unknown_dev_label(root):
    with open(os.path.join(root, "SST-2", "dev.tsv"), "a") as f:
        f.write("odd\t7\n")


BAD_INPUTS = {  # name -> (how to break a working config, the error it must give)
    "missing data file": (lambda c, tmp: setattr(c.data, "dir", str(tmp / "nowhere")),
                          r"nowhere/SST-2/train.tsv: file not found"),
    "non-UTF-8 bytes": (lambda c, tmp: _bad_utf8(c.data.dir),
                        r"SST-2/train.tsv:66: bytes that are not UTF-8"),
    "unknown label at eval": (lambda c, tmp: _unknown_dev_label(c.data.dir),
                              r"SST-2/dev.tsv:23: label '7' is not in the label set"),
    "tokenizer larger than the vocabulary": (  # the MiniLM tokenizer, a 300-token model
        lambda c, tmp: setattr(c, "init_from", _checkpoint(tmp / "bert", "tiny", None,
                                                           vocab_size=300)),
        r"has 30522 tokens but the model \(config.init_from=.*/bert\) has a vocabulary of 300"),
    "decoder tokenizer without a pad token": (
        lambda c, tmp: setattr(c, "init_from", _gpt_without_pad(tmp / "gpt")),
        r"the tokenizer \(.*/gpt/tokenizer\) has no pad token; set config.model.pad_token"),
    "batch not divisible by data parallelism": (
        lambda c, tmp: setattr(c.train, "batch_size", 12),
        r"config.train.batch_size=12 must be divisible by data x fsdp = 8"),
    "mesh larger than the devices": (
        lambda c, tmp: setattr(c.mesh, "data", 16),
        r"config.mesh=.* needs 16 devices but 8 are available"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_gives_one_clear_error_and_no_results(case, tmp_path):
    """Each bad input stops the run before training with an error naming the file / line or
    the config key, and leaves no results or checkpoints that could pass for a run. (More in
    test_cli, test_classification_data, test_ner, test_qa, test_pretrain, test_bad_input.)"""
    c = tiny(make_glue(str(tmp_path / "glue"), n_train=64))
    breaks, message = BAD_INPUTS[case]
    breaks(c, tmp_path)
    with pytest.raises(ValueError) as e:
        main.run(c, str(tmp_path / "run"))
    assert re.search(message, str(e.value)), str(e.value)
    assert not os.path.exists(tmp_path / "run" / "results.json")
    assert not os.listdir(tmp_path / "run" / "checkpoints") if os.path.exists(
        tmp_path / "run" / "checkpoints") else True
