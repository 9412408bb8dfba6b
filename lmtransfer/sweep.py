"""Sweeps: a table config expanded into runs (task x grid point x seed), run one after another
or printed one command per run; the grid point is picked per task on the dev split, and every
split's metrics are aggregated as mean ± std over seeds.

    python -m lmtransfer.sweep --table configs/tables/<file>.py[:k=v,...] --out DIR
        [--print] [--only TASK,...] [--peer hf]

A table file defines `get_table(arg)` returning a dict: `name`, `seeds` (list), and `tasks`, a
list of dicts with `name`, `config` ("configs/<file>.py:args", as for lmtransfer.main),
`overrides` ({"data.dir": ...}), `grid` ({"optim.lr": [...], ...}) and optionally `paper`
({metric: value}) and `source` (where the paper's numbers are from). Run i of task T lives in
`DIR/T/<k=v,...>/seed<s>`: a run with `results.json` is done and skipped, one with only
checkpoints resumes (lmtransfer.main's exact resume), so an interrupted sweep is rerun with the
same command. The selection reads each run's `results.json` `selection` (the task's dev split
and main metric) and never looks at any other split.

`--peer hf` runs the same runs (same config, overrides, grid point and seed) with the Hugging
Face `Trainer` (benchmarks/hf_trainer.py, one process per run, restarted if interrupted) into
`DIR/peer-hf/...`; every invocation's `summary.json` holds lmtransfer's results and the peer's,
each selected and aggregated the same way, with every run's wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np

from lmtransfer import config as config_lib
from lmtransfer import paths
from lmtransfer.errors import ConfigError

log = logging.getLogger("lmtransfer.sweep")  # not "__main__" under python -m

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = {"hf": os.path.join(REPO, "benchmarks", "hf_trainer.py")}  # name -> script


@dataclasses.dataclass(frozen=True)
class Run:
    task: str
    config: str  # "configs/<file>.py[:args]"
    overrides: tuple[tuple[str, object], ...]  # the table's fixed ones, e.g. ("data.dir", ...)
    point: tuple[tuple[str, object], ...]
    seed: int
    workdir: str
    peer: str = ""  # "" = lmtransfer, else a key of PEERS

    @property
    def point_name(self) -> str:
        return ",".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in self.point) or "default"

    def all_overrides(self) -> list[tuple[str, object]]:
        return [*self.overrides, *self.point, ("seed", self.seed)]

    def status(self) -> str:
        if paths.exists(paths.join(self.workdir, "results.json")):
            return "done"
        return "partial" if paths.isdir(paths.join(self.workdir, "checkpoints")) else "todo"

    def command(self) -> list[str]:
        flags = [f"--config.{k}={_flag(v)}" for k, v in self.all_overrides()]
        if self.peer:
            return [sys.executable, PEERS[self.peer], "--config", self.config_file(), *flags,
                    "--out", self.workdir]
        return [sys.executable, "-m", "lmtransfer.main", "--config", self.config, *flags,
                "--workdir", self.workdir]

    def config_file(self) -> str:
        """`config` with its path resolved (relative to the checkout when not found here)."""
        path, sep, arg = self.config.partition(":")
        if not os.path.exists(path) and not os.path.isabs(path):
            path = os.path.join(REPO, path)
        return path + sep + arg

    def make_config(self):
        path, _, arg = self.config_file().partition(":")
        c = config_lib.import_config_file(path).get_config(arg or None)
        for key, value in self.all_overrides():
            *parents, leaf = key.split(".")
            node = c
            for part in parents:
                node = _field(node, part, key, self)
            _field(node, leaf, key, self)
            node[leaf] = value
        return c


def _field(node, name: str, key: str, run: Run):
    if name not in node:
        raise ValueError(f"table override {key!r}: the config of {run.task} ({run.config}) "
                         f"has no field {name!r}")
    return node[name]


def _flag(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def load_table(spec: str) -> dict:
    path, _, arg = spec.partition(":")
    mod = config_lib.import_config_file(path, "get_table", "--table")
    table = mod.get_table(arg or None)
    for i, t in enumerate(table["tasks"]):
        missing = {"name", "config"} - set(t)
        if missing:
            raise ConfigError(f"{path}: task {i} has no {sorted(missing)}")
    return table


def expand(table: dict, out: str, only: tuple[str, ...] = (), peer: str = "") -> list[Run]:
    """Every (task, grid point, seed) of the table, in table order; a peer's runs live in
    `out/peer-<peer>/`."""
    names = [t["name"] for t in table["tasks"]]
    if peer:
        if peer not in PEERS:
            raise ValueError(f"--peer {peer!r}: the peers are {sorted(PEERS)}")
        out = os.path.join(out, f"peer-{peer}")
    unknown = set(only) - set(names)
    if unknown:
        raise ValueError(f"--only {sorted(unknown)}: the table's tasks are {names}")
    runs = []
    for t in table["tasks"]:
        if only and t["name"] not in only:
            continue
        grid = t.get("grid", {})
        keys = sorted(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            point = tuple(zip(keys, values, strict=True))
            for seed in table["seeds"]:
                run = Run(t["name"], t["config"], tuple(t.get("overrides", {}).items()), point,
                          int(seed), "", peer)
                runs.append(dataclasses.replace(run, workdir=os.path.join(
                    out, t["name"], run.point_name, f"seed{seed}")))
    return runs


class Preempted(SystemExit):
    """SIGTERM reached the sweep: it stopped after the current run (rerun to continue)."""


def execute(runs: list[Run]) -> None:
    """Runs every run that is not done, one after another (resuming partial lmtransfer runs;
    a peer's unfinished run starts again). Each run's wall time goes to `<workdir>/wall.json`.
    A SIGTERM (preemption) stops the sweep once the current run has checkpointed or finished,
    instead of going on to the next run; the same command continues it."""
    terminated = []
    old = signal.signal(signal.SIGTERM, lambda *_: terminated.append(True))
    try:
        _execute(runs, terminated)
    finally:
        signal.signal(signal.SIGTERM, old)


def _execute(runs: list[Run], terminated: list) -> None:
    from lmtransfer import logs, main

    for i, run in enumerate(runs):
        state = run.status()
        name = f"[{i + 1}/{len(runs)}] {run.peer or 'lmtransfer'} {run.task} {run.point_name} " \
               f"seed {run.seed}"
        if state == "done":
            log.info("%s: done, skipped", name)
            continue
        log.info("%s: %s", name, "resuming" if state == "partial" and not run.peer else
                 "starting")
        start = time.time()
        if run.peer:
            if paths.is_url(run.workdir):
                raise ConfigError(f"--peer {run.peer} writes local files only; give a local "
                                  f"--out (not {run.workdir})")
            os.makedirs(run.workdir, exist_ok=True)
            path = os.path.join(run.workdir, "log.txt")
            with open(path, "w") as f:
                done = subprocess.run(run.command(), stdout=f, stderr=subprocess.STDOUT,
                                      env=_with_checkout_on_path())
            if done.returncode:
                raise RuntimeError(f"{name} failed (exit {done.returncode}): see {path}")
        else:
            main.run(run.make_config(), run.workdir)
        logs.write_json(paths.join(run.workdir, "wall.json"),
                        {"wall_seconds": time.time() - start, "resumed": state == "partial"})
        finished = run.status() == "done"
        if terminated or not finished:  # not finished: the run's loop saw the SIGTERM first
            log.warning("%s: SIGTERM; the sweep stops here (%s). Rerun the same command to "
                        "continue.", name, "run finished" if finished else "checkpointed")
            raise Preempted(128 + signal.SIGTERM)


def _with_checkout_on_path() -> dict:
    """The environment with this checkout importable (the peer script imports lmtransfer)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": REPO + (os.pathsep + path if path else "")}


def collect(runs: list[Run]) -> list[dict]:
    """One row per finished run: its task, grid point, seed and every split's metrics."""
    rows = []
    for run in runs:
        path = paths.join(run.workdir, "results.json")
        if not paths.exists(path):
            continue
        res = paths.read_json(path)
        rows.append(dict(task=run.task, point=run.point_name, seed=run.seed,
                         workdir=run.workdir, selection=res["selection"],
                         # lmtransfer: the best checkpoint on dev; the Trainer: its final model
                         metrics=res["best"]["results"] if "best" in res else res["final"],
                         train_seconds=res["train_seconds"],
                         phases=res.get("phases_s"),  # where the run's time went
                         wall_seconds=_wall_seconds(run.workdir)))
    return rows


def _wall_seconds(workdir: str) -> float | None:
    """The run's wall time as the sweep timed it (`wall.json`); for a run made elsewhere
    (`--print`), from its config.json (written first) to its results.json (written last)."""
    path = paths.join(workdir, "wall.json")
    if paths.exists(path):
        return paths.read_json(path)["wall_seconds"]
    first = paths.join(workdir, "config.json")
    if not paths.exists(first):
        return None
    return paths.getmtime(paths.join(workdir, "results.json")) - paths.getmtime(first)


def select(rows: list[dict]) -> dict[str, dict]:
    """Per task: the grid point with the best mean dev metric over its seeds, and mean ± std
    (sample std, n seeds) of every split's metrics at that point. Only the selection split
    (the task's dev split) is read to choose."""
    out = {}
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task]
        sel = mine[0]["selection"]
        sign = 1 if sel["greater_is_better"] else -1
        by_point = {}
        for r in mine:
            by_point.setdefault(r["point"], []).append(r)
        dev = {p: float(np.mean([r["metrics"][sel["split"]][sel["metric"]] for r in rs]))
               for p, rs in by_point.items()}
        best = max(dev, key=lambda p: sign * dev[p])
        chosen = by_point[best]
        stats = {}
        for split in chosen[0]["metrics"]:
            for metric in chosen[0]["metrics"][split]:
                v = np.array([r["metrics"][split][metric] for r in chosen], float)
                stats.setdefault(split, {})[metric] = dict(
                    mean=float(v.mean()), std=float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                    n=len(v))
        out[task] = dict(point=best, selection=sel, dev_by_point=dev, stats=stats,
                         seeds=sorted(r["seed"] for r in chosen))
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", required=True, help="configs/tables/<file>.py[:k=v,...]")
    p.add_argument("--out", required=True, help="the sweep directory")
    p.add_argument("--print", action="store_true", help="print one command per unfinished run")
    p.add_argument("--only", default="", help="comma-separated task names")
    p.add_argument("--peer", default="", choices=["", *PEERS],
                   help="run the peer's runs instead of lmtransfer's (hf: the HF Trainer)")
    p.add_argument("--compilation_cache", default="~/.cache/lmtransfer/xla",
                   help="JAX's persistent compilation cache ('' = off): runs of one task "
                        "share compiled steps")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("lmtransfer").setLevel(logging.INFO)  # ours, not orbax's chatter
    if not a.print:
        from lmtransfer.main import use_compilation_cache
        use_compilation_cache(a.compilation_cache)
    table = load_table(a.table)
    out = paths.resolve(a.out)
    only = tuple(filter(None, a.only.split(",")))
    runs = expand(table, out, only, a.peer)
    if a.print:  # with --out as given: '~/bucket/...' expands on the machine that runs it
        for run in runs:
            if run.status() != "done":
                print(shlex.join(dataclasses.replace(
                    run, workdir=a.out + run.workdir[len(out):]).command()))
        return {}
    execute(runs)
    rows = collect(expand(table, out, only))
    peers = {}
    for peer in PEERS:
        peer_rows = collect(expand(table, out, only, peer))
        if peer_rows:
            peers[peer] = {"selected": select(peer_rows), "runs": peer_rows}
    base = ["python", "-m", "lmtransfer.sweep", "--table", a.table, "--out", a.out,
            *(["--only", a.only] if a.only else [])]
    commands = {"lmtransfer": shlex.join(base),
                **{p: shlex.join([*base, "--peer", p]) for p in peers}}
    summary = {"table": table.get("name", a.table), "commands": commands,
               "tasks": {t["name"]: {k: t.get(k) for k in ("paper", "source", "config")}
                         for t in table["tasks"]},
               "selected": select(rows), "runs": rows, "peers": peers}
    paths.write_text(paths.join(out, "summary.json"), json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
