"""What XLA:CPU makes of lmtransfer's train step: which library runs each dot, and what other
compiler options do to the step time, measured in one process.

    python benchmarks/step_xla.py dots                  # the MiniLM b32 x 128 step's dots
    python benchmarks/step_xla.py profile --top 30      # op time per step, by op and part
    python benchmarks/step_xla.py ab --repeats 5 \\
        'default={}' 'ynn_off={"xla_cpu_experimental_ynn_fusion_type": ""}'

`dots` reads the optimized HLO: a dot inside a `__ynn_fusion` runs in YNNPACK, a dot left at
the top level runs in XLA's own dot thunk (Eigen); FLOPs are counted from the shapes.
`profile` traces three steps with `jax.profiler` and joins each op's time with the dots it
holds (GFLOP/s per op kind and model part). `ab`
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


def _parse(hlo: str):
    """(instructions of each computation, {(computation, instruction): shape},
    {fusion computation: library}, {instruction: (its computation, its line, the computation
    it calls if it is a fusion)})."""
    body, name = collections.defaultdict(list), None
    for line in hlo.splitlines():
        m = _COMPUTATION.match(line)
        if m and not line.startswith(" "):
            name = m.group(1)
        elif name:
            body[name].append(line)
    library, shapes, insts = {}, {}, {}
    for comp, lines in body.items():
        for line in lines:
            called = re.search(r"fusion\(.*calls=%?([\w.\-]+)", line)
            if called:
                library[called.group(1)] = "YNNPACK" if "__ynn_fusion" in line else "XLA loop"
            if m := _SHAPED.match(line):
                shapes[comp, m.group(1)] = _dims(m.group(2))
                insts[m.group(1)] = comp, line, called and called.group(1)
    return body, shapes, library, insts


def _dot(comp: str, line: str, shapes) -> tuple[float, str]:
    """(GFLOP, operand layout) of one dot instruction."""
    out = _dims(re.search(r"= \w+\[([\d,]*)\]", line).group(1))
    lhs = shapes[comp, re.search(r"dot\(%([\w.\-]+),", line).group(1)]
    contracting = _dims(re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line).group(1))
    layout = ("batched" if "lhs_batch_dims" in line else
              "row-major" if contracting == [len(lhs) - 1] else "transposed LHS")
    return 2 * np.prod(out) * np.prod([lhs[d] for d in contracting]) / 1e9, layout


def _origin(line: str) -> str:
    """'forward mlp/wi' from an instruction's op_name metadata."""
    op = re.search(r'op_name="([^"]*)"', line)
    op = op.group(1) if op else "?"
    return ("backward " if "transpose(" in op else "forward ") + _part(op)


def dot_table(hlo: str) -> list[dict]:
    """One row per (library, operand layout): dots, GFLOP, and the model parts they come from
    (from each dot's op_name metadata)."""
    body, shapes, library, _ = _parse(hlo)
    rows = collections.defaultdict(lambda: {"dots": 0, "gflop": 0.0, "parts": set()})
    for comp, lines in body.items():
        for line in (x for x in lines if " dot(" in x):
            gflop, layout = _dot(comp, line, shapes)
            row = rows[library.get(comp, "Eigen (dot thunk)"), layout]
            row["dots"] += 1
            row["gflop"] += gflop
            row["parts"].add(_origin(line))
    total = sum(r["gflop"] for r in rows.values())
    return [dict(library=k[0], layout=k[1], dots=r["dots"], gflop=float(r["gflop"]),
                 share=float(r["gflop"] / total), parts=sorted(r["parts"]))
            for k, r in sorted(rows.items(), key=lambda kv: -kv[1]["gflop"])]


def op_profile(hlo: str, step, steps: int = 3) -> list[dict]:
    """Op time per step from a `jax.profiler` trace of `steps` calls of `step` (runs the
    program compiled to `hlo` once and waits for it), one row per (op kind, model part): ms,
    GFLOP of the dots inside, GFLOP/s. XLA:CPU runs independent ops concurrently on its
    threads, so an op's time includes what it shared a core with: read rates as a ranking,
    and confirm a change by timing the step (`ab`)."""
    import glob
    import tempfile
    step()  # warm-up
    with tempfile.TemporaryDirectory(prefix="step_xla_trace_") as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(steps):
                step()
        xspace = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0]
        planes = jax.profiler.ProfileData.from_file(xspace).planes
    body, shapes, _, insts = _parse(hlo)

    def gflop(comp, line, called):  # a fusion's dots, or the op's own if it is a dot
        lines = [(called, x) for x in body[called]] if called else [(comp, line)]
        return sum(_dot(c, x, shapes)[0] for c, x in lines if " dot(" in x)
    flops = {name: gflop(*inst) for name, inst in insts.items()}
    rows = collections.defaultdict(lambda: {"ms": 0.0, "gflop": 0.0, "ops": 0})
    for plane in planes:
        for line in plane.lines:
            if not line.name.startswith(("tf_XLAEigen", "tf_XLAPjRtCpuClient")):
                continue
            for ev in line.events:
                if ev.name not in insts:  # the executor's own events
                    continue
                row = rows[re.sub(r"\.\d+$", "", ev.name), _origin(insts[ev.name][1])]
                row["ms"] += ev.duration_ns / 1e6 / steps
                row["gflop"] += flops[ev.name] / steps
                row["ops"] += 1
    return [dict(op=k[0], part=k[1], ms=r["ms"], gflop=float(r["gflop"]), ops=r["ops"] // steps,
                 gflops=float(r["gflop"] / r["ms"] * 1e3) if r["gflop"] else 0.0)
            for k, r in sorted(rows.items(), key=lambda kv: -kv[1]["ms"])]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["dots", "profile", "ab"])
    p.add_argument("variants", nargs="*", help="ab: name={XLA option: value, ...}")
    p.add_argument("--model", default="minilm")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--top", type=int, default=30, help="profile: rows printed")
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
    if a.what == "profile":
        exe, (state, batch, *rest) = lowered.compile(), args

        def step():
            nonlocal state
            state, metrics = exe(state, batch, *rest)
            jax.block_until_ready(metrics)
        rows = op_profile(exe.as_text(), step)
        total = sum(r["ms"] for r in rows)
        print(f"op time {total:.0f} ms per step (ops running concurrently both count)\n"
              "| op | from | ops | ms per step | share | GFLOP | GFLOP/s |\n"
              "|---|---|---:|---:|---:|---:|---:|")
        for r in rows[:a.top]:
            print(f"| {r['op']} | {r['part']} | {r['ops']} | {r['ms']:.1f} | "
                  f"{100 * r['ms'] / total:.1f}% | {r['gflop']:.2f} | {r['gflops']:.0f} |")
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
