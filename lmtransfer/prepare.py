"""Tokenize a pretraining corpus once into a token store (lmtransfer.data.store).

    python -m lmtransfer.prepare --config configs/pretrain.py:objective=mlm,model=bert-base \
        --config.data.train_files='corpus/*.txt' --config.data.eval_files=dev.txt \
        --out stores/corpus [--workers 8] [--shards 0/4]
    python -m lmtransfer.main --config configs/pretrain.py:objective=mlm,model=bert-base \
        --config.data.store=stores/corpus --workdir runs/bert

Writes `<out>/train` (config.data.shards shards), `<out>/dev` (one shard) and, when
config.model.tokenizer trains one, `<out>/tokenizer` (trained on the first
config.data.tokenizer_docs documents). Workers are processes over the shards (default: one
per core). `--shards i/n` builds the i-th of n contiguous parts of the train shards (what host
i of n owns when training on n hosts), so a pod prepares its corpus in parallel; the same
command with `--config.mode=prepare` through `lmtransfer.main` (and run_tpu.sh) does that from
jax.process_index(). Rerunning an interrupted prepare continues with the shards it lacks.
A train command without config.data.store prepares `<workdir>/store` itself on first start.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shlex
import sys
import time

from lmtransfer import paths
from lmtransfer.data import build, corpus, store
from lmtransfer.errors import ConfigError

log = logging.getLogger(__name__)


def parse_shards(spec: str, num_shards: int) -> list[int]:
    """'' (all) | 'i/n' (the i-th of n contiguous parts) | '0-3,6' -> shard numbers."""
    spec = str(spec).strip()
    if not spec:
        return list(range(num_shards))
    try:
        if "/" in spec:
            i, n = map(int, spec.split("/"))
            if not 0 <= i < n:
                raise ValueError
            return list(range(i * num_shards // n, (i + 1) * num_shards // n))
        out = []
        for part in spec.split(","):
            a, _, b = part.partition("-")
            out += list(range(int(a), int(b or a) + 1))
    except ValueError:
        raise ValueError(f"--shards={spec!r}: use i/n, a list like 0-3,6, or nothing for "
                         "all") from None
    bad = [g for g in out if not 0 <= g < num_shards]
    if bad:
        raise ValueError(f"--shards={spec!r}: shards {bad} are not in 0..{num_shards - 1} "
                         "(config.data.shards)")
    return sorted(set(out))


def _manifest(source: corpus.Source, tokenizer, num_shards: int, split: str, command: str):
    return {"format": store.FORMAT, "version": store.VERSION, "split": split,
            "num_shards": num_shards, "dtype": store.token_dtype(len(tokenizer)),
            "tokenizer": {"sha256": store.tokenizer_hash(tokenizer),
                          "name": tokenizer.name_or_path, "size": len(tokenizer)},
            "source": source.describe(), "command": command}


MUST_MATCH = ("num_shards", "dtype", "source")
SMALL_CORPUS = 8 << 20  # bytes of text below which one in-process worker is quickest


def open_or_create(path: str, manifest: dict) -> store.Store:
    """The store at `path`, created if absent; one built from other data is refused."""
    paths.makedirs(path)
    mpath = paths.join(path, "manifest.json")
    if paths.exists(mpath):
        old = store.read_json(mpath)
        diff = [k for k in MUST_MATCH if old.get(k) != manifest[k]]
        if old.get("tokenizer", {}).get("sha256") != manifest["tokenizer"]["sha256"]:
            diff.append(f"tokenizer ({old.get('tokenizer', {}).get('name')} there, "
                        f"{manifest['tokenizer']['name']} here)")
        if diff:
            raise store.StoreError(
                f"{path} holds a token store of other data or settings (differs in: "
                f"{', '.join(diff)}); use another output directory, or delete {path} to "
                "rebuild it")
    elif paths.is_url(mpath):  # one object upload: whole or absent
        paths.write_text(mpath, json.dumps(manifest, indent=1, sort_keys=True))
    else:
        store.write_json(mpath, manifest)
    return store.Store(path)


def prepare_split(config, tokenizer, layout: corpus.Layout, path: str, split: str,
                  shards=None, workers: int = 0, command: str = "",
                  progress: bool = True) -> store.Store:
    """Builds the shards of `split` ('train' | 'dev') that `path` lacks; returns the store."""
    source = corpus.sources(config.data, split)
    num_shards = config.data.shards if split == "train" else 1
    shards = list(range(num_shards)) if shards is None else list(shards)
    st = open_or_create(path, _manifest(source, tokenizer, num_shards, split, command))
    todo = st.missing(shards)
    if todo:
        if not workers:  # spawning workers costs more than it saves on a small corpus
            small = source.kind == "files" and source.text_bytes() < SMALL_CORPUS
            workers = 1 if small else os.cpu_count() or 1
        workers = min(workers, len(todo))
        log.info("%s: tokenizing %s into %d shards (%d to build) with %d worker(s)", path,
                 source.name, num_shards, len(todo), workers)
        job = {"source": source, "num_shards": num_shards, "path": st.dir, "layout": layout,
               "dtype": st.manifest["dtype"],
               "tokenizer": tokenizer.backend_tokenizer.to_str()}
        parts = [todo[w::workers] for w in range(workers)]
        total = source.text_bytes() * len(todo) / num_shards or None
        t0 = time.perf_counter()
        _run([{**job, "shards": p} for p in parts], total, progress)
        seconds = time.perf_counter() - t0
        for g in todo:  # a bucket store: each shard built in the mirror goes up, JSON last
            st.upload(g)
        tokens = sum(store.read_json(os.path.join(st.dir, store.shard_name(g) + ".json"))[
            "tokens"] for g in todo)
        st.built = {"shards": len(todo), "workers": workers, "tokens": tokens,
                    "seconds": seconds, "tokens_per_s": tokens / max(seconds, 1e-9)}
        log.info("%s: built %d shards in %.1f s (%.0f tokens/s)", path, len(todo), seconds,
                 st.built["tokens_per_s"])
    _summarize(st, shards, source)
    return st


def _run(jobs: list[dict], total, show: bool) -> None:
    from tqdm import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, disable=not show, dynamic_ncols=True,
               desc="tokenizing")
    t0, seen = time.perf_counter(), [0, 0]

    def report(docs, tokens, chars):
        seen[0] += docs
        seen[1] += tokens
        dt = max(time.perf_counter() - t0, 1e-9)
        bar.update(chars)
        bar.set_postfix(docs_s=f"{seen[0] / dt:.0f}", tok_s=f"{seen[1] / dt:.0f}")

    try:
        if len(jobs) == 1:  # in this process: no start-up cost
            old = os.environ.get("TOKENIZERS_PARALLELISM")
            try:
                build.build_shards(jobs[0], report)
            finally:
                if old is None:
                    os.environ.pop("TOKENIZERS_PARALLELISM", None)
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = old
            return
        ctx = multiprocessing.get_context("spawn")  # safe after jax has started threads
        q = ctx.Queue()
        procs = [ctx.Process(target=build.worker, args=(j, q), daemon=True) for j in jobs]
        for p in procs:
            p.start()
        done = 0
        while done < len(procs):
            try:
                kind, payload = q.get(timeout=1.0)
            except Exception:  # noqa: BLE001 - queue.Empty: check the workers are alive
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"a prepare worker died (exit code {dead[0].exitcode}); "
                                       "rerun the command to continue") from None
                continue
            if kind == "progress":
                report(*payload)
            elif kind == "done":
                done += 1
            else:
                for p in procs:
                    p.kill()
                raise store.StoreError(f"preparing the token store failed: {payload}")
        for p in procs:
            p.join()
    finally:
        bar.close()


def _summarize(st: store.Store, shards, source: corpus.Source) -> None:
    """Logs what the shards hold and what was skipped; a corpus with no text is an error."""
    metas = [store.read_json(paths.join(st.path, store.shard_name(g) + ".json"))
             for g in shards]
    docs, tokens = sum(m["documents"] for m in metas), sum(m["tokens"] for m in metas)
    skipped = {}
    for m in metas:
        for k, v in m["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
    why = ", ".join(f"{v} {k}" for k, v in skipped.items() if v) or "nothing"
    if not tokens:
        raise store.StoreError(
            f"{source.key}={source.name}: the corpus has no text for {st.path} (shards "
            f"{store.shard_name(shards[0])}.. hold 0 tokens; skipped: {why}); point the config "
            "at files with text")
    log.info("%s: %d shards, %d documents, %d tokens; skipped %s", st.path, len(shards), docs,
             tokens, why)


def prepare(config, out: str, shards=None, workers: int = 0, command: str = "",
            progress: bool = True) -> dict:
    """Tokenizer (trained into `<out>/tokenizer` if the config says so), then the train
    shards `shards` (default all) and, with shard 0, the dev split. Returns a summary."""
    from lmtransfer.tasks import make_task
    from lmtransfer.train import init

    if config.task not in ("clm", "mlm"):
        raise ConfigError(f"config.task={config.task!r}: prepare builds pretraining corpora "
                          "(configs/pretrain.py)")
    command = command or (f"python -m lmtransfer.prepare --config <this run's config> "
                          f"--out {out}")
    tokenizer = init.load_tokenizer(config, out)  # trained into <out>/tokenizer if asked
    task = make_task(config, tokenizer, out)
    train = prepare_split(config, tokenizer, task.layout, os.path.join(out, "train"), "train",
                          shards, workers, command, progress)
    built = {"train": train.path, "built": {"train": getattr(train, "built", None)}}
    if shards is None or 0 in shards:
        dev = prepare_split(config, tokenizer, task.layout, os.path.join(out, "dev"), "dev",
                            None, workers, command, progress)
        built["dev"] = dev.path
        built["built"]["dev"] = getattr(dev, "built", None)
    return {"store": out, **built, "train_shards": list(range(train.num_shards))
            if shards is None else list(shards)}


def run(config, workdir: str) -> dict:
    """`--config.mode=prepare` through lmtransfer.main: the store is the workdir; on n
    processes, process i builds the i-th of n parts of the train shards."""
    import jax

    n, i = jax.process_count(), jax.process_index()
    shards = parse_shards(f"{i}/{n}", config.data.shards) if n > 1 else None
    return prepare(config, workdir, shards, config.data.prepare_workers,
                   command=f"python -m lmtransfer.main {shlex.join(sys.argv[1:])}",
                   progress=i == 0)


def main(argv):
    from absl import flags

    if len(argv) > 1:
        raise SystemExit(f"unexpected arguments: {argv[1:]}")
    logging.getLogger().setLevel(logging.INFO)
    f = flags.FLAGS
    config = f.config
    from lmtransfer import config as config_lib

    config_lib.expand_user_paths(config)
    out = paths.resolve(f.out)
    shards = parse_shards(f.shards, config.data.shards) if f.shards else None
    res = prepare(config, out, shards, f.workers,
                  command=f"python -m lmtransfer.prepare {shlex.join(sys.argv[1:])}")
    import json

    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Config file[:args].", lock_config=True)
    flags.DEFINE_string("out", None, "Directory of the token store.")
    flags.DEFINE_integer("workers", 0, "Worker processes (0: one per core).")
    flags.DEFINE_string("shards", "", "Train shards to build: i/n (the i-th of n parts, one "
                        "per host), a list like 0-3,6, or empty for all.")
    flags.mark_flags_as_required(["config", "out"])
    from lmtransfer import config as config_lib

    app.run(main, flags_parser=config_lib.parse_flags)
