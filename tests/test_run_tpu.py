"""run_tpu.sh --dry-run prints the gcloud commands it would run; they are checked here."""

import os
import shlex
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dry_run(*args):
    return subprocess.run(["bash", "run_tpu.sh", "--dry-run", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_dry_run_creates_copies_installs_and_launches_on_every_worker():
    main_args = ["--config", "configs/pretrain.py:objective=mlm,model=bert-base",
                 "--config.data.train_files=gs://b/data/*.txt", "--workdir", "gs://b/runs/r1"]
    r = dry_run("--tpu", "pod1", "--zone", "us-central2-b", "--project", "proj",
                "--create", "--accelerator", "v4-32", "--spot", "--", *main_args)
    assert r.returncode == 0, r.stderr
    cmds = [shlex.split(line) for line in r.stdout.splitlines()]
    create, archive, scp, unpack, install, launch = cmds
    assert create[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "create"]
    assert {"pod1", "--spot"} <= set(create)
    assert create[create.index("--accelerator-type") + 1] == "v4-32"
    assert create[create.index("--project") + 1] == "proj"
    assert archive[:2] == ["git", "archive"] and archive[-1] == "HEAD"
    assert scp[4] == "scp" and "--worker=all" in scp
    for c in (unpack, install, launch):
        assert c[4] == "ssh" and c[5] == "pod1" and "--worker=all" in c
    jax_pin = next(line.split("==")[1].strip() for line in open(os.path.join(REPO, "setup.cfg"))
                   if line.strip().startswith("jax=="))
    assert f"jax[tpu]=={jax_pin}" in install[install.index("--command") + 1]
    remote = shlex.split(launch[launch.index("--command") + 1])  # what each worker's shell runs
    assert remote[:3] == ["cd", "~/lmtransfer", "&&"]
    assert remote[3:8] == ["python", "-m", "lmtransfer.main", "--distributed=on", "--config"]
    assert remote[7:] == main_args  # arguments arrive intact (commas, globs, spaces)
    assert "gcsfuse" not in r.stdout  # the bucket is written directly: nothing to mount


def test_dry_run_mount_is_optional():
    r = dry_run("--tpu", "t", "--zone", "z", "--no-install", "--mount", "bkt", "--",
                "--workdir", "~/bucket/r1")
    assert r.returncode == 0, r.stderr
    mount = [c for c in map(shlex.split, r.stdout.splitlines()) if "gcsfuse" in " ".join(c)]
    assert len(mount) == 1 and "gcsfuse --implicit-dirs bkt ~/bucket" in mount[0][-1]


def test_dry_run_argument_errors():
    r = dry_run("--tpu", "t", "--zone", "z")
    assert r.returncode == 2 and "give the lmtransfer.main arguments after --" in r.stderr
    r = dry_run("--tpu", "t", "--zone", "z", "--create", "--", "--workdir", "w")
    assert r.returncode == 2 and "--create needs --accelerator" in r.stderr
    r = dry_run("--zone", "z", "--", "--workdir", "w")
    assert r.returncode == 2 and "--tpu and --zone are required" in r.stderr
    r = dry_run("--tpu", "t", "--zone", "z", "--bogus")
    assert r.returncode == 2 and "unknown option --bogus" in r.stderr
