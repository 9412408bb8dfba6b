"""`quickstart` mode: fine-tune the pretrained encoder and train the same architecture from
scratch on the same task and recipe, then print the two dev results side by side."""

from __future__ import annotations

import os
import time

from lmtransfer import logs, paths
from lmtransfer.train import loop


def run(config, workdir: str) -> dict:
    runs = {}
    for name in ("pretrained", "scratch"):
        sub = os.path.join(workdir, name)
        paths.makedirs(sub)
        done = os.path.join(sub, "results.json")
        c = config.copy_and_resolve_references()
        c.mode = "train"
        if name == "scratch":
            c.init_from = ""
        start = time.perf_counter()
        if paths.exists(done):  # rerun of a finished quickstart: reuse its results
            results = paths.read_json(done)
        else:
            results = loop.train(c, sub)
        runs[name] = {"results": results, "wall_seconds": time.perf_counter() - start}
    table = _table(runs)
    print(table)
    logs.write_json(os.path.join(workdir, "comparison.json"), runs)
    paths.write_text(os.path.join(workdir, "comparison.md"), table + "\n")
    return {name: r["results"]["final"] for name, r in runs.items()}


def _table(runs) -> str:
    lines = ["| model | dev accuracy | dev examples | train steps | train s |",
             "|---|---:|---:|---:|---:|"]
    for name, r in runs.items():
        dev = r["results"]["final"]["dev"]
        label = ("MiniLM, pretrained (fine-tuned)" if name == "pretrained"
                 else "MiniLM architecture, random init")
        lines.append(f"| {label} | {dev['accuracy']:.4f} | {dev['examples']} | "
                     f"{r['results']['final_step']} | {r['results']['train_seconds']:.0f} |")
    return "\n".join(lines)
