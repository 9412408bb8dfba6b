"""Exact resume: SIGTERM (preemption) / kill -9 a training process, rerun, and the per-step
losses equal an uninterrupted run's; one workdir, one run. (Kill -9 in every phase of a
fine-tuning run: tests/test_faults.py.)"""

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time

import orbax.checkpoint as ocp
import pytest

from tests.glue_data import make_glue

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 60


@pytest.fixture(scope="module")
def glue_root(tmp_path_factory):
    return make_glue(str(tmp_path_factory.mktemp("glue")), n_train=40, n_dev=9)


def command(glue_root, workdir):
    return [sys.executable, "-m", "lmtransfer.main", "--config",
            "configs/glue.py:task=sst2,model=tiny", f"--config.data.dir={glue_root}",
            f"--config.train.steps={STEPS}", "--config.train.batch_size=8",
            "--config.train.log_every=1", "--config.train.checkpoint_every=5",
            "--config.train.eval_every=0", "--config.optim.lr=1e-3", "--workdir", str(workdir)]


def env():
    return {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}


def losses(workdir):
    """step -> loss (the last logged value for a step wins: a resumed run re-logs steps)."""
    out = {}
    for line in open(os.path.join(workdir, "metrics.jsonl")):
        row = json.loads(line)
        if row["kind"] == "train":
            out[row["step"]] = row["loss"]
    return out


def start_and_interrupt(glue_root, workdir, sig, after_step=22, cmd=None):
    proc = subprocess.Popen(cmd or command(glue_root, workdir), cwd=REPO, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics = os.path.join(workdir, "metrics.jsonl")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.exists(metrics) and max(losses(workdir), default=0) >= after_step:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(sig)
    sent = time.time()
    proc.wait(timeout=120)
    proc.seconds_to_exit = time.time() - sent
    return proc


@pytest.fixture(scope="module")
def reference(glue_root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    r = subprocess.run(command(glue_root, workdir), cwd=REPO, env=env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    ref = losses(workdir)
    assert sorted(ref) == list(range(1, STEPS + 1))
    return ref


def finished_steps_restore(workdir, steps_per_epoch=5):
    """Every step the manager lists restores (nothing half-written poses as finished)."""
    mngr = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    steps = mngr.all_steps()
    for s in steps:
        meta = mngr.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        assert meta["data"]["epoch"] * steps_per_epoch + meta["data"]["batch"] == s
    mngr.close()
    return steps


def test_sigterm_saves_and_resumes(glue_root, tmp_path, reference):
    workdir = tmp_path / "run"
    proc = start_and_interrupt(glue_root, workdir, signal.SIGTERM)
    assert proc.returncode == 0, proc.stderr.read()[-3000:]
    assert proc.seconds_to_exit < 60  # one step, one checkpoint, then out
    stopped_at = max(losses(workdir))
    assert max(finished_steps_restore(workdir)) == stopped_at  # saved at the step it stopped
    r = subprocess.run(command(glue_root, workdir), cwd=REPO, env=env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = losses(workdir)
    for step in range(stopped_at + 1, STEPS + 1):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6), step


def test_second_run_on_same_workdir_is_refused(glue_root, tmp_path):
    os.makedirs(tmp_path, exist_ok=True)
    with open(tmp_path / ".lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write("4242")
        f.flush()
        r = subprocess.run(command(glue_root, tmp_path), cwd=REPO, env=env(),
                           capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "is in use by another run (pid 4242)" in r.stderr


def test_pretraining_kill_9_then_resume_matches_uninterrupted(tmp_path):
    """The same for causal-LM pretraining from the token store (StoreBatcher), dropout on."""
    from tests.corpus_data import corpus_tokenizer, make_corpus

    root = make_corpus(str(tmp_path / "corpus"))
    corpus_tokenizer(root, "bpe")

    def cmd(workdir):
        return [sys.executable, "-m", "lmtransfer.main", "--config",
                f"configs/pretrain.py:objective=clm,model=gpt-tiny,tokenizer={root}/tok_bpe,"
                f"steps=40", f"--config.data.train_files={root}/train.txt",
                f"--config.data.eval_files={root}/eval.jsonl", "--config.data.max_length=32",
                "--config.train.batch_size=16", "--config.train.log_every=1",
                "--config.train.checkpoint_every=5", "--config.train.eval_every=0",
                "--workdir", str(workdir)]

    r = subprocess.run(cmd(tmp_path / "ref"), cwd=REPO, env=env(), capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    reference = losses(tmp_path / "ref")
    workdir = tmp_path / "run"
    proc = start_and_interrupt(None, workdir, signal.SIGKILL, after_step=17, cmd=cmd(workdir))
    assert proc.returncode == -signal.SIGKILL
    rows = int(re.search(r"-> (\d+) rows", r.stderr).group(1))
    steps = finished_steps_restore(workdir, steps_per_epoch=-(-rows // 16))
    assert steps and max(steps) < 40
    r = subprocess.run(cmd(workdir), cwd=REPO, env=env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from step {max(steps)}" in r.stderr
    assert "to build" not in r.stderr  # the token store of the first start: not tokenized again
    resumed = losses(workdir)
    assert sorted(resumed) == list(range(1, 41))
    for step in range(max(steps) + 1, 41):
        assert resumed[step] == pytest.approx(reference[step], abs=1e-6), step
