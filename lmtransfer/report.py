"""A sweep's report: the paper's layout with our mean ± std beside the paper's numbers.

    python -m lmtransfer.report <sweep dir>

Reads `<sweep dir>/summary.json` (written by lmtransfer.sweep) and each run's `metrics.jsonl`,
and writes into the sweep dir: `results.md` (per task: every metric of every split at the grid
point chosen on dev, as mean ± std over n seeds, the paper's number and the difference; then
the dev metric of every grid point), `runs.csv` (one row per run, split and metric), and PNG
plots: `dev_<task>.png` (dev metric per grid point, each seed a dot, mean ± std bars) and
`curves_<task>.png` (training loss of every run at the chosen point).
"""

from __future__ import annotations

import argparse
import csv
import json
import os


def _shown(metric: str, selection: dict) -> bool:
    """Scores, not bookkeeping (example counts, eval speed; loss unless it is the score)."""
    if metric == "examples" or metric.endswith("_per_s"):
        return False
    return metric != "loss" or selection["metric"] == "loss"


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def _factors(summary: dict) -> dict:
    """(task, split, metric) -> 100 for fractions (accuracy, F1, MCC, correlations: every run
    within [-1, 1]), so they print as percentages like the paper's tables; else 1."""
    values = {}
    for r in summary["runs"]:
        for split, metrics in r["metrics"].items():
            for metric, v in metrics.items():
                values.setdefault((r["task"], split, metric), []).append(v)
    return {k: 100 if k[2] not in ("loss", "perplexity") and all(abs(v) <= 1 for v in vs)
            else 1 for k, vs in values.items()}


def markdown(summary: dict) -> str:
    lines = [f"# {summary['table']}", "", f"Made by `{summary.get('command', '')}`.", ""]
    lines += ["| task | split | metric | ours (mean ± std, n) | paper | ours − paper "
              "| grid point |", "|---|---|---|---:|---:|---:|---|"]
    scale = _factors(summary)
    for task, sel in summary["selected"].items():
        paper = (summary["tasks"].get(task) or {}).get("paper") or {}
        for split, metrics in sel["stats"].items():
            for metric, st in metrics.items():
                if not _shown(metric, sel["selection"]):
                    continue
                f = scale[task, split, metric]
                mean, std = f * st["mean"], f * st["std"]
                # paper numbers: {"dev/f1": ..} or {"f1": ..} for the selection (dev) split
                ref = paper.get(f"{split}/{metric}")
                if ref is None and split == sel["selection"]["split"]:
                    ref = paper.get(metric)
                diff = _fmt(mean - ref) if ref is not None else ""
                lines.append(f"| {task} | {split} | {metric} | {_fmt(mean)} ± {_fmt(std)} "
                             f"({st['n']}) | {'' if ref is None else _fmt(ref)} | {diff} | "
                             f"{sel['point']} |")
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
    return "\n".join(lines) + "\n"


def write_csv(summary: dict, path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["task", "grid_point", "seed", "split", "metric", "value", "train_seconds",
                    "workdir"])
        for r in summary["runs"]:
            for split, metrics in r["metrics"].items():
                for metric, value in metrics.items():
                    w.writerow([r["task"], r["point"], r["seed"], split, metric, value,
                                r["train_seconds"], r["workdir"]])


def _losses(workdir: str) -> tuple[list[int], list[float]]:
    steps, losses = [], []
    path = os.path.join(workdir, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                if row.get("kind") == "train" and "loss" in row:
                    steps.append(row["step"])
                    losses.append(row["loss"])
    return steps, losses


def plots(summary: dict, out: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    files, scale = [], _factors(summary)
    for task, sel in summary["selected"].items():
        runs = [r for r in summary["runs"] if r["task"] == task]
        split, metric = sel["selection"]["split"], sel["selection"]["metric"]
        points = list(sel["dev_by_point"])
        fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(points), 3.2))
        for i, p in enumerate(points):
            v = [scale[task, split, metric] * r["metrics"][split][metric]
                 for r in runs if r["point"] == p]
            ax.scatter([i] * len(v), v, s=14, color="C0", alpha=0.6)
            ax.errorbar([i], [np.mean(v)], yerr=[np.std(v, ddof=1) if len(v) > 1 else 0],
                        fmt="o", color="C3" if p == sel["point"] else "k", capsize=4)
        ax.set_xticks(range(len(points)), points, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(f"{split} {metric}")
        ax.set_title(f"{task}: {split} {metric} per grid point", fontsize=9)
        fig.tight_layout()
        files.append(os.path.join(out, f"dev_{task}.png"))
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        for r in runs:
            if r["point"] == sel["point"]:
                ax.plot(*_losses(r["workdir"]), label=f"seed {r['seed']}", lw=1, marker=".")
        ax.set_xlabel("step")
        ax.set_ylabel("train loss")
        ax.set_title(f"{task}: training loss at {sel['point']}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        files.append(os.path.join(out, f"curves_{task}.png"))
        fig.savefig(files[-1], dpi=110)
        plt.close(fig)
    return files


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir")
    a = p.parse_args(argv)
    path = os.path.join(a.sweep_dir, "summary.json")
    if not os.path.exists(path):
        raise SystemExit(f"{path} does not exist: run `python -m lmtransfer.sweep --table ... "
                         f"--out {a.sweep_dir}` first")
    with open(path) as f:
        summary = json.load(f)
    md = os.path.join(a.sweep_dir, "results.md")
    with open(md, "w") as f:
        f.write(markdown(summary))
    write_csv(summary, os.path.join(a.sweep_dir, "runs.csv"))
    for file in plots(summary, a.sweep_dir):
        print("wrote", file)
    print("wrote", md)
    return md


if __name__ == "__main__":
    main()
