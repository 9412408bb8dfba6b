"""Sweeps: grid expansion, skip/resume, best-on-dev selection, mean ± std aggregation."""

import json
import os

import numpy as np
import pytest

from lmtransfer import sweep
from tests.glue_data import make_glue

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_table(path, root, seeds=(0,), lrs=(1e-3, 1e-4)):
    path.write_text(f'''
def get_table(arg=None):
    return dict(name="tiny", seeds={list(seeds)}, tasks=[
        dict(name="MRPC", config="{REPO}/configs/glue.py:task=mrpc,model=tiny",
             overrides={{"data.dir": "{root}", "train.steps": 2, "train.checkpoint_every": 1}},
             grid={{"optim.lr": {list(lrs)}}}, paper={{"f1": 88.9}}),
        dict(name="RTE", config="{REPO}/configs/glue.py:task=rte,model=tiny",
             overrides={{"data.dir": "{root}"}},
             grid={{"optim.lr": [5e-5], "train.epochs": [2.0, 3.0]}}),
    ])
''')
    return str(path)


def test_grid_expansion_and_configs(tmp_path):
    table = sweep.load_table(write_table(tmp_path / "t.py", "/data", seeds=(0, 1)))
    runs = sweep.expand(table, str(tmp_path / "out"))
    assert len(runs) == 2 * 2 + 2 * 2  # MRPC: 2 lrs x 2 seeds; RTE: 2 epochs x 2 seeds
    assert len({r.workdir for r in runs}) == len(runs)
    first = runs[0]
    assert first.workdir == str(tmp_path / "out" / "MRPC" / "lr=0.001" / "seed0")
    c = first.make_config()
    assert (c.optim.lr, c.seed, c.data.dir, c.train.steps) == (1e-3, 0, "/data", 2)
    assert "--config.optim.lr=0.001" in first.command() and "--config.seed=0" in first.command()
    rte = [r for r in runs if r.task == "RTE"]
    assert {r.point_name for r in rte} == {"lr=5e-05,epochs=2.0", "lr=5e-05,epochs=3.0"}
    assert len(sweep.expand(table, "out", only=("RTE",))) == 4
    with pytest.raises(ValueError, match="SST2"):
        sweep.expand(table, "out", only=("SST2",))
    bad = dict(table, tasks=[dict(table["tasks"][0], overrides={"optim.learning_rate": 1})])
    with pytest.raises(ValueError, match="no field 'learning_rate'"):
        sweep.expand(bad, "out")[0].make_config()


def test_print_keeps_home_for_the_machine_that_runs(tmp_path, capsys):
    table = write_table(tmp_path / "t.py", "~/bucket/glue")
    sweep.main(["--table", table, "--out", "~/bucket/t1", "--print", "--only", "MRPC"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].endswith("--workdir '~/bucket/t1/MRPC/lr=0.001/seed0'")
    assert "'--config.data.dir=~/bucket/glue'" in lines[0]
    c = sweep.expand(sweep.load_table(table), "out")[0].make_config()
    assert c.data.dir == "~/bucket/glue"
    from lmtransfer import config as config_lib
    config_lib.expand_user_paths(c)  # lmtransfer.main does this where it runs
    assert c.data.dir == os.path.expanduser("~/bucket/glue") and c.init_from == ""


def row(point, seed, dev, test, task="T", greater=True):
    return dict(task=task, point=point, seed=seed, workdir="", train_seconds=1.0,
                selection={"split": "dev", "metric": "f1", "greater_is_better": greater},
                metrics={"dev": {"f1": dev}, "test": {"f1": test}})


def test_selection_is_on_dev_only_and_aggregates_over_seeds():
    rows = [row("lr=a", 0, 80.0, 60.0), row("lr=a", 1, 82.0, 61.0), row("lr=a", 2, 84.0, 62.0),
            row("lr=b", 0, 79.0, 90.0), row("lr=b", 1, 81.0, 91.0), row("lr=b", 2, 83.0, 92.0)]
    out = sweep.select(rows)["T"]
    assert out["point"] == "lr=a"  # best mean dev (82 > 81) though test prefers lr=b
    assert out["dev_by_point"] == {"lr=a": 82.0, "lr=b": 81.0}
    assert out["stats"]["dev"]["f1"] == dict(mean=82.0, std=2.0, n=3)
    assert out["stats"]["test"]["f1"]["mean"] == 61.0
    assert out["stats"]["test"]["f1"]["std"] == pytest.approx(np.std([60, 61, 62], ddof=1))
    # lower is better (a loss): the smaller mean dev wins
    low = sweep.select([row("x", 0, 2.0, 0.0, greater=False), row("y", 0, 1.0, 9.0,
                                                                   greater=False)])
    assert low["T"]["point"] == "y"


def test_tiny_sweep_runs_skips_finished_and_resumes_partial(tmp_path, monkeypatch):
    root = make_glue(str(tmp_path / "glue"), n_train=32)
    table = write_table(tmp_path / "t.py", root)
    out = tmp_path / "sweep"
    args = ["--table", table, "--out", str(out), "--only", "MRPC", "--compilation_cache", ""]
    summary = sweep.main(args)
    sel = summary["selected"]["MRPC"]
    assert sel["selection"]["split"] == "dev" and sel["point"] in ("lr=0.001", "lr=0.0001")
    assert set(sel["dev_by_point"]) == {"lr=0.001", "lr=0.0001"}
    assert json.loads((out / "summary.json").read_text())["selected"]["MRPC"]["point"] == (
        sel["point"])

    started = []
    from lmtransfer import main as main_lib
    real = main_lib.run
    monkeypatch.setattr(main_lib, "run", lambda c, w: started.append(w) or real(c, w))
    sweep.main(args)
    assert started == []  # everything finished: nothing reruns
    partial = out / "MRPC" / "lr=0.0001" / "seed0"
    (partial / "results.json").unlink()  # as if killed after its last checkpoint
    runs = sweep.expand(sweep.load_table(table), str(out), only=("MRPC",))
    assert [r.status() for r in runs] == ["done", "partial"]
    again = sweep.main(args)
    assert started == [str(partial)]
    assert again["selected"]["MRPC"]["dev_by_point"] == sel["dev_by_point"]  # exact resume

    from lmtransfer import report
    md = open(report.main([str(out)])).read()
    acc = again["selected"]["MRPC"]["stats"]["dev"]["accuracy"]
    assert f"| MRPC | dev | accuracy | {100 * acc['mean']:.2f} ± 0.00 (1) |" in md
    assert "| MRPC | dev | f1 |" in md and "| 88.90 |" in md  # the paper's number beside ours
    for png in ("dev_MRPC.png", "curves_MRPC.png"):
        assert (out / "plots" / png).read_bytes()[:4] == b"\x89PNG"
        assert f"(plots/{png})" in md
    import csv
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert {r["grid_point"] for r in rows} == {"lr=0.001", "lr=0.0001"}
    assert {r["split"] for r in rows} == {"dev"}
    # relative to the sweep dir, so a committed CSV names no machine's paths
    assert {r["workdir"] for r in rows} == {f"MRPC/{p}/seed0" for p in ("lr=0.001", "lr=0.0001")}
    assert report._file("MRPC-1k LoRA r8") == "MRPC-1k_LoRA_r8"  # a whole Markdown link


def test_peer_sweep_runs_the_hf_trainer_on_the_same_runs(tmp_path, minilm_path):
    root = make_glue(str(tmp_path / "glue"), n_train=32)
    table = tmp_path / "t.py"
    table.write_text(f'''
def get_table(arg=None):
    return dict(name="peer", seeds=[0], tasks=[dict(
        name="MRPC", config="{REPO}/configs/glue.py:task=mrpc,model={minilm_path}",
        overrides={{"data.dir": "{root}", "train.steps": 2, "train.log_every": 1}},
        grid={{"optim.lr": [1e-4]}})])
''')
    out = tmp_path / "sweep"
    args = ["--table", str(table), "--out", str(out), "--compilation_cache", ""]
    first = sweep.main([*args, "--peer", "hf"])  # the peer alone first: a sweep order is free
    assert first["selected"] == {} and set(first["peers"]) == {"hf"}
    peer_dir = out / "peer-hf" / "MRPC" / "lr=0.0001" / "seed0"
    res = json.loads((peer_dir / "results.json").read_text())
    assert res["steps"] == 2 and res["selection"]["split"] == "dev"
    losses = [json.loads(line) for line in open(peer_dir / "metrics.jsonl")]
    assert [r["step"] for r in losses] == [1, 2] and all(r["kind"] == "train" for r in losses)
    summary = sweep.main(args)
    ours, peer = summary["selected"]["MRPC"], summary["peers"]["hf"]["selected"]["MRPC"]
    # the same examples on both sides, scored by the same task code
    assert ours["stats"]["dev"]["examples"] == peer["stats"]["dev"]["examples"]
    assert set(ours["stats"]["dev"]) >= set(peer["stats"]["dev"]) >= {"accuracy", "f1"}
    assert summary["commands"]["hf"] == summary["commands"]["lmtransfer"] + " --peer hf"
    assert all(r["wall_seconds"] > 0 for r in summary["runs"] + summary["peers"]["hf"]["runs"])

    from lmtransfer import report
    md = open(report.main([str(out)])).read()
    f1, peer_f1 = (100 * s["stats"]["dev"]["f1"]["mean"] for s in (ours, peer))
    assert (f"| MRPC | dev | f1 | {f1:.2f} ± 0.00 (1) | {peer_f1:.2f} ± 0.00 (1) | "
            f"{f1 - peer_f1:.2f} |") in md
    assert "| HF Trainer | all | 1 |" in md and "| lmtransfer | all | 1 |" in md
    import csv
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert {r["side"] for r in rows} == {"lmtransfer", "hf"}


@pytest.mark.parametrize("spec", [
    "bert_paper.py:size=large,uncased=/u,cased=/c,seeds=2",
    "bert_paper.py:uncased=/u,tables=glue,seeds=1",
    "minilm_cpu.py:data=/d", "peft_minilm_cpu.py:data=/d"])
def test_table_configs_build_every_run(spec):
    table = sweep.load_table(os.path.join(REPO, "configs", "tables", spec))
    runs = sweep.expand(table, "out")
    assert runs and len({r.workdir for r in runs}) == len(runs)
    for run in runs:  # every override names a real field of its config
        c = run.make_config()
        assert c.seed == run.seed and c.optim.lr == dict(run.point)["optim.lr"]
    if spec.startswith("bert_paper.py:size=large"):
        tasks = {t["name"]: t for t in table["tasks"]}
        assert tasks["MRPC"]["paper"] == {"f1": 89.3}
        assert tasks["SQuAD-v2.0"]["paper"] == {"exact_match": 78.7, "f1": 81.9}
        assert len([r for r in runs if r.task == "RTE"]) == 4 * 2  # 4 lrs x 2 seeds
    if spec.startswith("peft"):  # full: the paper's 4 lrs x 3 seeds; LoRA: 4 (SST-2), 2 (MRPC)
        assert len(runs) == (4 + 4) * 3 + (4 + 2) * 3
        assert {r.make_config().peft.method for r in runs if "LoRA" in r.task} == {"lora"}
        assert {r.make_config().peft.method for r in runs if "full" in r.task} == {""}
    with pytest.raises(ValueError, match="cased"):
        sweep.load_table(os.path.join(REPO, "configs", "tables", "bert_paper.py:tables=conll,"
                                      "uncased=/u"))


def test_sigterm_stops_the_sweep_after_the_current_run(tmp_path, monkeypatch):
    """Preemption: the run in progress checkpoints (or finishes) and the sweep stops there,
    instead of starting the next run; the same command continues it."""
    import signal

    from lmtransfer import main as main_lib
    from lmtransfer.train import loop

    table, out = write_table(tmp_path / "t.py", str(tmp_path)), str(tmp_path / "sweep")
    started, before = [], signal.getsignal(signal.SIGTERM)

    def preempted_mid_run(config, workdir):  # the loop's handler sees it, saves and returns
        started.append(workdir)
        os.makedirs(workdir, exist_ok=True)
        preempt = loop._Preemption()
        os.kill(os.getpid(), signal.SIGTERM)
        assert preempt.requested
        preempt.restore()

    def signalled_in_final_eval(config, workdir):  # after the last step: the run completes
        started.append(workdir)
        os.kill(os.getpid(), signal.SIGTERM)
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "results.json"), "w") as f:
            f.write("{}")

    args = ["--table", table, "--out", out, "--only", "MRPC"]
    for fake in (preempted_mid_run, signalled_in_final_eval):
        monkeypatch.setattr(main_lib, "run", fake)
        with pytest.raises(sweep.Preempted) as e:
            sweep.main(args)
        assert e.value.code == 128 + signal.SIGTERM
    first = os.path.join(out, "MRPC", "lr=0.001", "seed0")
    assert started == [first, first]  # neither invocation went on to lr=0.0001
    assert signal.getsignal(signal.SIGTERM) is before  # the sweep put back what it found
