"""Multi-host: two local processes x 4 CPU devices (jax.distributed on localhost) train exactly
like one process x 8 devices, and no document is read by both processes."""

import json
import os
import re
import socket
import subprocess
import sys

import pytest

from tests.corpus_data import corpus_tokenizer, make_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 6


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = make_corpus(str(tmp_path_factory.mktemp("corpus")))
    corpus_tokenizer(root, "bpe")
    return root


def command(root, workdir, *extra, steps=STEPS):
    return [sys.executable, "-m", "lmtransfer.main", "--config",
            f"configs/pretrain.py:objective=clm,model=gpt-tiny,tokenizer={root}/tok_bpe,"
            f"steps={steps}",
            f"--config.data.train_files={root}/train.txt",
            f"--config.data.eval_files={root}/eval.jsonl", "--config.data.max_length=32",
            "--config.train.batch_size=16", "--config.train.eval_batch_size=16",
            "--config.train.log_every=1", "--config.train.eval_every=3",
            "--workdir", str(workdir), *extra]


def env(devices):
    return {**os.environ, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}


def losses(workdir, kind="train"):
    return {r["step"]: r["loss"] for r in map(json.loads, open(os.path.join(workdir,
                                                                          "metrics.jsonl")))
            if r["kind"] == kind}


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_and_read_disjoint_shards(root, tmp_path):
    one = subprocess.run(command(root, tmp_path / "one"), cwd=REPO, env=env(8),
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    port = free_port()
    procs = [subprocess.Popen(
        command(root, tmp_path / "two", f"--coordinator_address=localhost:{port}",
                "--num_processes=2", f"--process_id={i}"),
        cwd=REPO, env=env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "process 1 of 2 (4 local devices, 8 in all)" in outs[1][1]

    ref, got = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(got) == list(range(1, STEPS + 1))
    for step in ref:
        assert got[step] == pytest.approx(ref[step], abs=1e-5), step
    ref_eval, got_eval = losses(tmp_path / "one", "eval/dev"), losses(tmp_path / "two", "eval/dev")
    assert got_eval and got_eval == pytest.approx(ref_eval, abs=1e-5)

    # Each process packed only its own shards; together they are all 8, none twice.
    shards = [re.search(r"shards \[([\d, ]+)\] of 8", err).group(1) for _, err in outs]
    owned = [set(map(int, s.split(", "))) for s in shards]
    assert owned == [{0, 1, 2, 3}, {4, 5, 6, 7}]
    counts = [int(re.search(r"train: (\d+) documents", err).group(1)) for _, err in outs]
    assert sum(counts) == 160  # every training document read once, by one process
    assert re.search(r"train: 160 documents", one.stderr)
    # Only process 0 writes logs and results.
    assert os.path.exists(tmp_path / "two" / "results.json")


def test_a_dead_process_stops_the_other_instead_of_hanging(root, tmp_path):
    """kill -9 one of two processes mid-training: the survivor exits with an error within a
    bounded time (heartbeat 10 s), it does not wait in a collective forever."""
    import signal
    import time

    port = free_port()
    cmds = [command(root, tmp_path / "run", f"--coordinator_address=localhost:{port}",
                    "--num_processes=2", f"--process_id={i}", "--heartbeat_timeout=10",
                    steps=200) for i in range(2)]
    procs = [subprocess.Popen(c, cwd=REPO, env=env(4), stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for c in cmds]
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and len(losses(tmp_path / "run")) >= 3):
        assert all(p.poll() is None for p in procs), procs[0].stderr.read()[-3000:]
        time.sleep(0.2)
    procs[1].send_signal(signal.SIGKILL)
    killed = time.time()
    procs[0].wait(timeout=240)
    waited = time.time() - killed
    assert procs[0].returncode != 0
    assert waited < 120, waited
    assert not (tmp_path / "run" / "results.json").exists()
