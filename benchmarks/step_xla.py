"""What XLA:CPU makes of lmtransfer's train step: which library runs each dot, and what other
compiler options do to the step time, measured in one process.

    python benchmarks/step_xla.py dots                  # the MiniLM b32 x 128 step's dots
    python benchmarks/step_xla.py ab --repeats 5 \\
        'default={}' 'ynn_off={"xla_cpu_experimental_ynn_fusion_type": ""}'

`dots` reads the optimized HLO: a dot inside a `__ynn_fusion` runs in YNNPACK, a dot left at
the top level runs in XLA's own dot thunk (Eigen); FLOPs are counted from the shapes. `ab`
compiles the same lowered step once per variant (`compile(compiler_options=...)`, the keys
are XLA debug options, repeated enums by their proto names such as
LIBRARY_FUSION_TYPE_DOT) and times the variants interleaved, so they share the machine's
state; each prints its compile seconds, and its first loss so that a variant that miscomputes
shows.
"""

import argparse
import collections
import json
import re
import time

import jax
import numpy as np

from lmtransfer import bench

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_SHAPED = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = \w+\[([\d,]*)\]")


def _dims(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _part(op_name: str) -> str:
    """'jit(train_step)/transpose(jvp(Bert.apply))/Bert/layer_5/mlp/wo/dot_general' -> 'mlp/wo'"""
    path = op_name.rsplit(")/", 1)[-1].split("/")[1:]  # less the model's class name
    return "/".join(x for x in path if not re.fullmatch(r"layer_\d+|dot_general|transpose", x))


def dot_table(hlo: str) -> list[dict]:
    """One row per (library, operand layout): dots, GFLOP, and the model parts they come from
    (from each dot's op_name metadata)."""
    body, name = collections.defaultdict(list), None
    for line in hlo.splitlines():
        m = _COMPUTATION.match(line)
        if m and not line.startswith(" "):
            name = m.group(1)
        elif name:
            body[name].append(line)
    library, shapes = {}, {}
    for comp, lines in body.items():
        for line in lines:
            if m := re.search(r"fusion\(.*calls=%?([\w.\-]+)", line):
                library[m.group(1)] = "YNNPACK" if "__ynn_fusion" in line else "XLA loop"
            if m := _SHAPED.match(line):
                shapes[comp, m.group(1)] = _dims(m.group(2))
    rows = collections.defaultdict(lambda: {"dots": 0, "gflop": 0.0, "parts": set()})
    for comp, lines in body.items():
        for line in (x for x in lines if " dot(" in x):
            out = _dims(re.search(r"= \w+\[([\d,]*)\]", line).group(1))
            lhs = shapes[comp, re.search(r"dot\(%([\w.\-]+),", line).group(1)]
            contracting = _dims(re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line).group(1))
            layout = ("batched" if "lhs_batch_dims" in line else
                      "row-major" if contracting == [len(lhs) - 1] else "transposed LHS")
            op = re.search(r'op_name="([^"]*)"', line)
            op = op.group(1) if op else "?"
            where = "backward " if "transpose(" in op else "forward "
            row = rows[library.get(comp, "Eigen (dot thunk)"), layout]
            row["dots"] += 1
            row["gflop"] += 2 * np.prod(out) * np.prod([lhs[d] for d in contracting]) / 1e9
            row["parts"].add(where + _part(op))
    total = sum(r["gflop"] for r in rows.values())
    return [dict(library=k[0], layout=k[1], dots=r["dots"], gflop=float(r["gflop"]),
                 share=float(r["gflop"] / total), parts=sorted(r["parts"]))
            for k, r in sorted(rows.items(), key=lambda kv: -kv[1]["gflop"])]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["dots", "ab"])
    p.add_argument("variants", nargs="*", help="ab: name={XLA option: value, ...}")
    p.add_argument("--model", default="minilm")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_intermixed_args(argv)
    model, params = bench.build(a.model, "classification")
    lowered, args = bench.lowered_step(model, params, "classification", a.batch, a.length)
    if a.what == "dots":
        rows = dot_table(lowered.compile().as_text())
        print("| library | operands | dots | GFLOP | share | from |\n|---|---|---:|---:|---:|---|")
        for r in rows:
            print(f"| {r['library']} | {r['layout']} | {r['dots']} | {r['gflop']:.1f} | "
                  f"{100 * r['share']:.1f}% | {', '.join(r['parts'])} |")
        return rows
    variants = dict(v.split("=", 1) for v in a.variants or ["default={}"])
    exes = {}
    for name, opts in variants.items():
        start = time.perf_counter()
        exes[name] = lowered.compile(compiler_options=json.loads(opts))
        print(f"{name}: compiled in {time.perf_counter() - start:.1f} s")
    state, batch, *rest = args
    states = {name: jax.tree.map(lambda x: x.copy(), state) for name in exes}
    times = {name: [] for name in exes}
    for rep in range(a.repeats + 1):  # the first round warms up
        for name, exe in exes.items():
            start = time.perf_counter()
            states[name], metrics = exe(states[name], batch, *rest)
            jax.block_until_ready(metrics)
            if rep:
                times[name].append(time.perf_counter() - start)
            else:
                print(f"{name}: first loss {float(metrics['loss']):.7f}")
    for name, t in times.items():
        print(f"{name}: median step {np.median(t):.3f} s ({', '.join(f'{x:.2f}' for x in t)})")
    return times


if __name__ == "__main__":
    main()
