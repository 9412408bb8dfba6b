"""A sweep's report: the paper's layout with our mean ± std beside the paper's numbers.

    python -m lmtransfer.report <sweep dir> [--out DIR]

Reads `<sweep dir>/summary.json` (written by lmtransfer.sweep) and each run's `metrics.jsonl`,
and writes into `--out` (default: the sweep dir): `results.md` (per task: every metric of every
split at the grid point chosen on dev, as mean ± std over n seeds, the peer's (`--peer hf`, the
HF Trainer on the same runs) and the paper's numbers and the differences; then the dev metric
of every grid point and the wall time of each side), `runs.csv` (one row per run, side, split
and metric; workdirs relative to the sweep dir), and PNG plots in `plots/`, linked from
results.md: `dev_<task>.png` (dev metric per grid point, each seed a dot, mean ± std bars,
the peer beside) and `curves_<task>.png` (training loss of every run at the chosen point;
the task name with spaces and other non-word characters as `_`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shlex
import sys

from lmtransfer import paths


def _shown(metric: str, selection: dict) -> bool:
    """Scores, not bookkeeping (example counts, eval speed; loss unless it is the score)."""
    if metric in ("examples", "sentences", "questions") or metric.endswith("_per_s"):
        return False
    return metric != "loss" or selection["metric"] == "loss"


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def _factors(summary: dict) -> dict:
    """(task, split, metric) -> 100 for fractions (accuracy, F1, MCC, correlations: every run
    within [-1, 1]), so they print as percentages like the paper's tables; else 1."""
    values = {}
    for r in _all_runs(summary):
        for split, metrics in r["metrics"].items():
            for metric, v in metrics.items():
                values.setdefault((r["task"], split, metric), []).append(v)
    return {k: 100 if k[2] not in ("loss", "perplexity") and all(abs(v) <= 1 for v in vs)
            else 1 for k, vs in values.items()}


PEER_NAMES = {"hf": "HF Trainer"}


def _all_runs(summary: dict) -> list[dict]:
    """lmtransfer's runs, then every peer's (each with its `side`)."""
    runs = [dict(r, side="lmtransfer") for r in summary["runs"]]
    for peer, info in summary.get("peers", {}).items():
        runs += [dict(r, side=peer) for r in info["runs"]]
    return runs


def _cell(st: dict | None, f: float) -> str:
    return "" if st is None else f"{_fmt(f * st['mean'])} ± {_fmt(f * st['std'])} ({st['n']})"


def markdown(summary: dict, report_command: str = "") -> str:
    commands = [*summary.get("commands", {}).values(), *filter(None, [report_command])]
    peers = summary.get("peers", {})
    lines = [f"# {summary['table']}", "", "Made by " + ", then ".join(
        f"`{c}`" for c in commands) + ".", ""]
    head = "| task | split | metric | ours (mean ± std, n) |"
    for peer in peers:
        name = PEER_NAMES.get(peer, peer)
        head += f" {name} (mean ± std, n) | ours − {name} |"
    has_paper = any(t.get("paper") for t in summary["tasks"].values())  # else no such columns
    lines += [head + (" paper | ours − paper |" if has_paper else "") + " grid point |",
              "|---|---|---|" + "---:|" * (1 + 2 * len(peers) + 2 * has_paper) + "---|"]
    scale = _factors(summary)
    for task, sel in summary["selected"].items():
        paper = (summary["tasks"].get(task) or {}).get("paper") or {}
        for split, metrics in sel["stats"].items():
            for metric, st in metrics.items():
                if not _shown(metric, sel["selection"]):
                    continue
                f = scale[task, split, metric]
                row = f"| {task} | {split} | {metric} | {_cell(st, f)} |"
                for info in peers.values():
                    other = (info["selected"].get(task, {}).get("stats", {}).get(split, {})
                             .get(metric))
                    diff = "" if other is None else _fmt(f * (st["mean"] - other["mean"]))
                    row += f" {_cell(other, f)} | {diff} |"
                # paper numbers: {"dev/f1": ..} or {"f1": ..} for the selection (dev) split
                ref = paper.get(f"{split}/{metric}")
                if ref is None and split == sel["selection"]["split"]:
                    ref = paper.get(metric)
                diff = _fmt(f * st["mean"] - ref) if ref is not None else ""
                if has_paper:
                    row += f" {'' if ref is None else _fmt(ref)} | {diff} |"
                lines.append(f"{row} {sel['point']} |")
    sources = [f"{t}: {info['source']}" for t, info in summary["tasks"].items()
               if info.get("source")]
    if sources:
        lines += ["", "Paper numbers: " + "; ".join(sources) + "."]
    lines += [""]
    lines += ["## Dev metric per grid point (mean over seeds; the chosen point in bold)", "",
              "| task | metric | grid point | dev |", "|---|---|---|---:|"]
    for task, sel in summary["selected"].items():
        split, metric = sel["selection"]["split"], sel["selection"]["metric"]
        for point, value in sel["dev_by_point"].items():
            name = f"**{point}**" if point == sel["point"] else point
            lines.append(f"| {task} | {metric} | {name} | "
                         f"{_fmt(scale[task, split, metric] * value)} |")
    phases = ("startup", "load", "compile", "train", "eval", "write")
    lines += ["", "## Time (sum over runs, seconds)", "",
              "wall: the whole command; train: the steps after the first; then each run's "
              "phases (results.json `phases_s`; blank where a run does not record them)", "",
              "| side | task | runs | wall | train | " + " | ".join(f"{p} phase" for p in phases)
              + " |", "|---|---|---:|---:|---:|" + "---:|" * len(phases)]
    runs = _all_runs(summary)
    for side in dict.fromkeys(r["side"] for r in runs):
        mine = [r for r in runs if r["side"] == side]
        for task in [*dict.fromkeys(r["task"] for r in mine), "all"]:
            rs = [r for r in mine if task in ("all", r["task"])]
            walls = [r.get("wall_seconds") for r in rs]
            wall = "" if None in walls else f"{sum(walls):.0f}"
            split = [""] * len(phases)
            if all(r.get("phases") for r in rs):
                split = [f"{sum(r['phases'].get(p, 0.0) for r in rs):.0f}" for p in phases]
            lines.append(f"| {PEER_NAMES.get(side, side)} | {task} | {len(rs)} | {wall} | "
                         f"{sum(r['train_seconds'] for r in rs):.0f} | " + " | ".join(split)
                         + " |")
    return "\n".join(lines) + "\n"


def write_csv(summary: dict, path: str, sweep_dir: str = "") -> None:
    """One row per run, side, split and metric; workdirs relative to `sweep_dir` (if given),
    so a committed CSV names no machine's paths."""
    def where(workdir):
        return os.path.relpath(workdir, sweep_dir) if sweep_dir else workdir

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["side", "task", "grid_point", "seed", "split", "metric", "value",
                    "train_seconds", "wall_seconds", "workdir"])
        for r in _all_runs(summary):
            for split, metrics in r["metrics"].items():
                for metric, value in metrics.items():
                    w.writerow([r["side"], r["task"], r["point"], r["seed"], split, metric,
                                value, r["train_seconds"], r.get("wall_seconds"),
                                where(r["workdir"])])


def _losses(workdir: str) -> tuple[list[int], list[float]]:
    steps, losses = [], []
    path = paths.join(workdir, "metrics.jsonl")
    if paths.exists(path):
        for line in paths.read_text(path).splitlines():
            row = json.loads(line)
            if row.get("kind") == "train" and "loss" in row:
                steps.append(row["step"])
                losses.append(row["loss"])
    return steps, losses


def _file(task: str) -> str:
    """A task name as a file name that Markdown links keep whole ('MRPC-1k LoRA r8' ->
    'MRPC-1k_LoRA_r8')."""
    return re.sub(r"[^\w.-]+", "_", task)


def plot_links(summary: dict) -> str:
    lines = ["", "## Plots", ""]
    for task in summary["selected"]:
        lines.append(f"![{task} dev](plots/dev_{_file(task)}.png) "
                     f"![{task} training loss](plots/curves_{_file(task)}.png)")
    return "\n".join(lines) + "\n"


def plots(summary: dict, out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    files, scale = [], _factors(summary)
    os.makedirs(out, exist_ok=True)
    sides = ["lmtransfer", *summary.get("peers", {})]
    for task, sel in summary["selected"].items():
        runs = [r for r in _all_runs(summary) if r["task"] == task]
        split, metric = sel["selection"]["split"], sel["selection"]["metric"]
        points = list(sel["dev_by_point"])
        fig, ax = plt.subplots(figsize=(3.4 + 1.1 * len(points), 3.2))
        for i, p in enumerate(points):
            for j, side in enumerate(sides):
                v = [scale[task, split, metric] * r["metrics"][split][metric]
                     for r in runs if r["point"] == p and r["side"] == side]
                if not v:
                    continue
                x = i + 0.25 * j
                label = PEER_NAMES.get(side, side) if i == 0 else None
                ax.scatter([x] * len(v), v, s=14, color=f"C{j}", alpha=0.6, label=label)
                ax.errorbar([x], [np.mean(v)], yerr=[np.std(v, ddof=1) if len(v) > 1 else 0],
                            fmt="o", color="C3" if p == sel["point"] and j == 0 else "k",
                            capsize=4)
        if len(sides) > 1:
            ax.legend(fontsize=7)
        ax.set_xticks(range(len(points)), points, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"{split} {metric}")
        ax.set_xlim(-0.5, len(points) - 0.5 + 0.25 * (len(sides) - 1))
        ax.set_title(f"{task}: {split} {metric}\nper grid point", fontsize=9)
        fig.tight_layout()
        files.append(os.path.join(out, f"dev_{_file(task)}.png"))
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for r in runs:
            if r["point"] == sel["point"]:
                side = "" if r["side"] == "lmtransfer" else f"{PEER_NAMES.get(r['side'])} "
                ax.plot(*_losses(r["workdir"]), label=f"{side}seed {r['seed']}", lw=1,
                        marker="o^sDv*"[r["seed"] % 6], ms=3, ls="-" if not side else "--",
                        color=f"C{sides.index(r['side'])}", alpha=0.7)
        ax.set_xlabel("step")
        ax.set_ylabel("train loss")
        ax.set_title(f"{task}: training loss at {sel['point']}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        files.append(os.path.join(out, f"curves_{_file(task)}.png"))
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    return files


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir")
    p.add_argument("--out", default="", help="where the report goes (default: the sweep dir)")
    a = p.parse_args(argv)
    sweep_dir = paths.resolve(a.sweep_dir)
    out = paths.resolve(a.out or a.sweep_dir)
    path = paths.join(sweep_dir, "summary.json")
    if not paths.exists(path):
        raise SystemExit(f"{path} does not exist: run `python -m lmtransfer.sweep --table ... "
                         f"--out {a.sweep_dir}` first")
    summary = paths.read_json(path)
    staged = paths.Staged(out)  # a bucket's report is written here, then uploaded
    paths.makedirs(staged.local)
    with open(os.path.join(staged.local, "results.md"), "w") as f:
        command = shlex.join(["python", "-m", "lmtransfer.report",
                              *(sys.argv[1:] if argv is None else argv)])
        f.write(markdown(summary, command) + plot_links(summary))
    write_csv(summary, os.path.join(staged.local, "runs.csv"), sweep_dir)
    files = plots(summary, os.path.join(staged.local, "plots"))
    staged.close()
    for file in [*files, os.path.join(staged.local, "results.md")]:
        print("wrote", paths.join(out, os.path.relpath(file, staged.local)))
    return paths.join(out, "results.md")


if __name__ == "__main__":
    main()
