"""The one training loop (`train` mode), shared by every task.

Resume: rerunning the same command in the same workdir restores the latest checkpoint (state
and data position, which is a function of the step) and continues; per-step losses then equal
an uninterrupted run's. SIGTERM (preemption) saves a checkpoint at the next step and exits.
Two runs writing one local workdir at once are refused (an flock on `<workdir>/.lock`); object
stores have no such lock, so in a bucket one run per workdir is up to the launcher.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from lmtransfer import checkpoints, faults, hf, logs, paths, peft, perf, sharding, xla_flags
from lmtransfer.data import batching
from lmtransfer.errors import ConfigError
from lmtransfer.train import ahead, init, optim
from lmtransfer.train import evaluate as eval_lib
from lmtransfer.train import phases as phases_lib
from lmtransfer.train import state as state_lib
from lmtransfer.train.step import make_eval_step, make_train_step, run_scalars

log = logging.getLogger(__name__)


@contextlib.contextmanager
def workdir_lock(workdir: str):
    """Exclusive lock on the workdir for this run; released even on kill -9 (by the OS)."""
    if jax.process_index() != 0 or paths.is_url(workdir):
        yield
        return
    path = os.path.join(workdir, ".lock")
    f = open(path, "a+")  # noqa: SIM115
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        raise RuntimeError(f"{workdir} is in use by another run (pid {f.read().strip() or '?'}); "
                           "wait for it or use another --workdir") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


class _Preemption:
    """Remembers a SIGTERM so the loop can checkpoint at a step boundary and exit cleanly."""

    def __init__(self):
        self.requested = False
        self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, *args):
        log.warning("SIGTERM: saving a checkpoint and stopping after this step")
        self.requested = True
        if callable(self._old):  # e.g. a sweep's, so it stops too (even after the last step)
            self._old(*args)

    def agreed(self) -> bool:
        if jax.process_count() == 1:
            return self.requested
        from jax.experimental import multihost_utils
        flags = multihost_utils.process_allgather(np.array([self.requested]))
        return bool(np.any(flags))

    def restore(self):
        signal.signal(signal.SIGTERM, self._old)


def train(config, workdir: str) -> dict:
    with phases_lib.Phases() as phases:
        phases.switch("load")
        return _train(config, workdir, phases)


def _train(config, workdir: str, phases) -> dict:
    from lmtransfer.tasks import make_task

    t = config.train
    mesh = sharding.make_mesh(config.mesh.to_dict())
    rules = sharding.rules_from_config(config.sharding_rules)
    batching.check_batch_size(t.batch_size, mesh, "config.train.batch_size")
    batching.check_batch_size(t.eval_batch_size, mesh, "config.train.eval_batch_size")
    if t.batch_size % t.grad_accum or (t.batch_size // t.grad_accum) % (
            mesh.shape["data"] * mesh.shape["fsdp"]):
        raise ConfigError(f"config.train.batch_size={t.batch_size} must split into "
                          f"grad_accum={t.grad_accum} microbatches divisible by data x fsdp")
    tokenizer = init.load_tokenizer(config, workdir)
    init.keep_tokenizer(tokenizer, workdir)
    task = make_task(config, tokenizer, workdir)
    buckets = eval_lib.buckets(config)
    train_split = task.load("train")
    eval_splits = [task.load(s) for s in task.eval_splits()]
    batcher = make_batcher(train_split, t.batch_size, mesh, buckets)
    total = t.steps or int(round(t.epochs * batcher.steps_per_epoch))
    if total <= 0:
        raise ValueError("set config.train.steps or config.train.epochs > 0")
    tx, lr = optim.make(config.optim, total)
    if t.export_peft and peft.spec_from_config(config.peft) is None:
        raise ConfigError("config.train.export_peft=True writes LoRA adapters, but this run has "
                          "none: set config.peft.method=lora (or use config.train.export_hf)")

    with workdir_lock(workdir), contextlib.ExitStack() as cleanup:
        ckpt = checkpoints.TrainCheckpointer(workdir, t.keep_checkpoints)
        model, params, base = _model_for(config, task, tokenizer, mesh, rules, ckpt)
        init.check_fits(config, model, tokenizer)
        if isinstance(batcher, batching.Batcher):  # a token store's rows are all max_length
            batcher.buckets = ahead.plan_buckets(config, batcher, total, model, task)
        state_sh = state_lib.shardings(model, tx, mesh, rules)
        frozen_sh = state_lib.param_shardings(model, mesh, rules)[1]
        meta_model = checkpoints.model_meta(model, task.id2label, base)
        best = (ckpt.best_meta() or {}).get("best")
        guard = _NonFiniteGuard(t.skip_nonfinite, ckpt)
        if ckpt.latest_step() is not None:
            state, meta = ckpt.restore(state_lib.abstract(model, tx, state_sh))
            guard.skipped = meta.get("skipped_updates", 0)
            log.info("resumed from step %d (%s)", int(state.step), meta.get("data"))
            frozen = ({} if base is None else
                      peft.load_frozen(model, base, mesh, rules, **init.config_overrides(config)))
        else:
            params, frozen = peft.split(model, params)
            frozen = peft.cast(frozen, config.peft.base_dtype)
            state = state_lib.create(params, tx, state_sh)
        del params
        step_fn = jax.jit(make_train_step(model, task, tx, lr, t.grad_accum, t.skip_nonfinite),
                          in_shardings=(state_sh, batcher.sharding, frozen_sh,
                                        sharding.replicated(mesh)),
                          out_shardings=(state_sh, sharding.replicated(mesh)),
                          donate_argnums=(0,))
        run_args = run_scalars(config.seed, lr)
        run_args = sharding.put_sharded(run_args, {k: sharding.replicated(mesh) for k in run_args})
        eval_fn = jax.jit(make_eval_step(model, task))
        writer = logs.MetricWriter(workdir, config)
        preempt = _Preemption()
        cleanup.callback(preempt.restore)  # also when the run raises
        start = int(state.step)
        run_step = step_fn
        lengths = batcher.lengths_ahead(start, total, config.seed) if t.compile_ahead else []
        if len(lengths) > 1:  # one length: nothing to overlap, the first step compiles it
            template = batcher.assemble(batcher.train_indices(start, config.seed))
            run_step = ahead.Executables(step_fn, (state, template, frozen, run_args), lengths,
                                         lambda: phases("compile"),
                                         lambda: sharding.use_mesh(mesh, rules))
            cleanup.callback(run_step.close)
        log.info("training %s: %d examples, %d steps (%d per epoch), global batch %d, "
                 "mesh %s, length buckets %s", config.data.get("glue_task") or task.head,
                 len(train_split), total, batcher.steps_per_epoch, t.batch_size,
                 dict(mesh.shape), getattr(batcher, "buckets", None))

        def run_eval(step, out_dir=None):
            nonlocal best
            with phases("eval"):
                res = eval_lib.evaluate(task, eval_fn, peft.combine(state.params, frozen),
                                        eval_splits, t.eval_batch_size, mesh, buckets,
                                        out_dir=out_dir)
            for name, m in res.items():
                writer.write(step, m, prefix=f"eval/{name}")
            main = res[eval_splits[0].name][task.main_metric]
            log.info("step %d eval: %s", step, {k: {m: round(v, 4) for m, v in r.items()}
                                                for k, r in res.items()})
            sign = 1 if task.greater_is_better else -1
            if best is None or sign * main > sign * best["value"]:
                best = {"step": step, "metric": task.main_metric, "value": main, "results": res}
                with phases("write"):
                    ckpt.save_best(step, state.params, meta_model, {"best": best})
            return res

        saved = [ckpt.latest_step()]

        def save(step):
            if saved[0] != step:
                if pending is not None:  # never checkpoint a non-finite state
                    guard.check(*pending[:2])
                with phases("write"):
                    ckpt.save(step, state, meta_model, {"data": batcher.position(step),
                                                        "best": best,
                                                        "skipped_updates": guard.skipped})
                saved[0] = step
                faults.point("save", step)

        meter, pending = _Meter(start, jax.device_count(), perf.peak_flops()), None
        progress = _progress(total, start)
        results = {}
        phases.switch("train")
        with sharding.use_mesh(mesh, rules):
            for step, (idx, local, waited) in enumerate(
                    batcher.prefetch(start, total, config.seed), start):
                batch = batcher.globalize(local)
                meter.data_wait += waited
                state, metrics = run_step(state, batch, frozen, run_args)
                faults.at_step(step + 1)
                faults.point("step")
                if step == start:  # the first step compiles: time from its end
                    jax.block_until_ready(metrics)
                    meter.restart()
                else:
                    tokens = batcher.tokens(idx, local)
                    meter.tokens += tokens
                    length = batch["input_ids"].shape[1]
                    meter.flops += tokens * perf.train_flops_per_token(
                        model, length, task.decoded_per_row(length))
                if pending is not None:  # read the previous step's metrics: no device stall
                    guard.check(*pending[:2])
                    _log_step(writer, progress, meter, *pending, t.log_every, total, guard)
                pending = (step + 1, metrics, batcher.position(step))
                done = step + 1
                if t.eval_every and done % t.eval_every == 0 and done < total:
                    guard.check(*pending[:2])
                    jax.block_until_ready(state)  # train compute is not eval time
                    with meter.paused():
                        run_eval(done)
                if preempt.agreed():
                    save(done)
                    log.warning("preempted: checkpoint %d saved", done)
                    break
                if t.checkpoint_every and done % t.checkpoint_every == 0:
                    save(done)
            if pending is not None:
                guard.check(*pending[:2])
                _log_step(writer, progress, meter, *pending, 1, total, guard)
            if int(state.step) >= total:
                jax.block_until_ready(state)
                train_seconds, tokens_per_s = meter.train_seconds(), meter.tokens_per_s()
                # the final eval writes the predictions; a better earlier checkpoint rewrites them
                predictions = os.path.join(workdir, "predictions")
                results = {"final": run_eval(total, predictions), "final_step": total,
                           "best": best,
                           "train_seconds": train_seconds, "train_tokens_per_s": tokens_per_s,
                           "train_tflops_per_device": meter.rates()["tflops_per_device"],
                           "skipped_updates": guard.skipped,
                           "train_buckets": list(getattr(batcher, "buckets", ())),
                           "runtime": xla_flags.runtime(),  # backend, XLA flags in effect
                           # what picks the best checkpoint (and a sweep's grid point)
                           "selection": {"split": eval_splits[0].name,
                                         "metric": task.main_metric,
                                         "greater_is_better": bool(task.greater_is_better)}}
                save(total)
                phases.switch("write")
                ckpt.wait()
                _write_outputs(config, workdir, task, eval_fn, eval_splits, mesh, rules, buckets,
                               tokenizer, results, phases)
                writer.results(results)
        progress.close()
        writer.close()
        ckpt.close()
    return results


def make_batcher(split, batch_size: int, mesh, buckets):
    """A token store's rows (pretraining: this process's shards) or an in-memory split."""
    if split.shards is not None:
        return batching.StoreBatcher(split.shards, split.num_shards, split.total_rows,
                                     batch_size, mesh)
    return batching.Batcher(split.features, batch_size, mesh, buckets)


def _model_for(config, task, tokenizer, mesh, rules, ckpt):
    """(model, params, LoRA base reference or None): from the workdir's own checkpoint when
    resuming (params are then restored with the optimizer state), else from
    config.init_from / the preset (and config.peft)."""
    step = ckpt.latest_step()
    if step is None:
        return init.build_adapted(config, task, tokenizer, mesh, rules)
    meta = ckpt.mngr.restore(step, args=ocp.args.Composite(model=ocp.args.JsonRestore())).model
    if (meta["head"], meta["num_labels"]) != (task.head, task.num_labels):
        raise ValueError(f"{ckpt.mngr.directory} holds a {meta['head']} model with "
                         f"{meta['num_labels']} labels but the task needs {task.head} with "
                         f"{task.num_labels}; use a new --workdir")
    return (checkpoints.model_from_meta(meta, **init.config_overrides(config)), None,
            meta.get("base"))


def _write_outputs(config, workdir, task, eval_fn, eval_splits, mesh, rules, buckets,
                   tokenizer, results, phases):
    """Predictions of the best model on the eval splits (the final eval wrote them when the
    final state is the best), optional HF / PEFT exports, then results.json (last: a run
    with results.json is complete)."""
    export = config.train.export_hf or config.train.export_peft
    if results["best"]["step"] != results["final_step"] or export:
        model, params, _ = checkpoints.load_model(workdir, mesh=mesh, rules=rules,
                                                  **init.config_overrides(config))
    if results["best"]["step"] != results["final_step"]:
        with phases("eval"):
            eval_lib.evaluate(task, eval_fn, params, eval_splits, config.train.eval_batch_size,
                              mesh, buckets, out_dir=os.path.join(workdir, "predictions"))
    if config.train.export_hf:
        out = hf.save_pretrained(model, params, os.path.join(workdir, "hf"),
                                 tokenizer=tokenizer, id2label=task.id2label)
        log.info("exported the best model (step %s) to %s", results["best"]["step"], out)
    if config.train.export_peft:
        out = peft.save_adapter(model, params, os.path.join(workdir, "peft"),
                                base=config.init_from)
        log.info("exported the best model's adapters (step %s) to %s", results["best"]["step"],
                 out)
    results["phases_s"] = phases.summary()  # where the wall time went
    logs.write_json(os.path.join(workdir, "results.json"), results)


def _progress(total, start):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, disable=jax.process_index() != 0, unit="step",
                dynamic_ncols=True)


class _Meter:
    """Training throughput, excluding compilation (first step) and evaluation time: tokens/s,
    and from the analytic FLOPs (lmtransfer.perf) TFLOP/s per device and MFU."""

    def __init__(self, step: int, devices: int, peak: float | None):
        self.step0, self.devices, self.peak = step, devices, peak
        self.restart()

    def restart(self):
        self.t0, self.eval_s, self.last = time.perf_counter(), 0.0, None
        self.tokens, self.flops = 0, 0.0
        self.data_wait, self.data_wait_logged = 0.0, 0.0

    def rates(self) -> dict:
        per_device = self.flops / max(self.train_seconds(), 1e-9) / self.devices
        out = {"tokens_per_s": self.tokens_per_s(), "tflops_per_device": per_device / 1e12}
        if self.peak:
            out["mfu"] = per_device / self.peak
        return out

    @contextlib.contextmanager
    def paused(self):
        t = time.perf_counter()
        yield
        self.eval_s += time.perf_counter() - t

    def train_seconds(self) -> float:
        return time.perf_counter() - self.t0 - self.eval_s

    def tokens_per_s(self) -> float:
        return self.tokens / max(self.train_seconds(), 1e-9)

    def step_time(self, step: int) -> tuple[float, float]:
        """(seconds per step, seconds per step spent waiting for input data) since the last
        call."""
        now = self.train_seconds()
        prev_step, prev = self.last or (self.step0 + 1, 0.0)
        self.last = (step, now)
        steps = max(step - prev_step, 1)
        waited, self.data_wait_logged = (self.data_wait - self.data_wait_logged,
                                         self.data_wait)
        return (now - prev) / steps, waited / steps


class _NonFiniteGuard:
    """Stops the run at the first NaN/Inf loss or gradient norm, naming the step, the values
    and the last good checkpoint (none is ever written from a non-finite state); with
    `config.train.skip_nonfinite` it counts the skipped updates instead."""

    def __init__(self, skip: bool, ckpt):
        self.skip, self.ckpt, self.skipped, self.checked = skip, ckpt, 0, 0

    def check(self, step: int, metrics) -> None:
        if step <= self.checked:
            return
        self.checked = step
        if not float(metrics["nonfinite"]):  # a scalar of a finished (or finishing) step
            return
        loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
        if self.skip:
            self.skipped += 1
            log.warning("step %d: loss=%s grad_norm=%s; update skipped (%d so far)", step,
                        loss, grad_norm, self.skipped)
            return
        self.ckpt.wait()
        last = self.ckpt.latest_step()
        where = (f"the last good checkpoint is step {last} in {self.ckpt.mngr.directory} "
                 "(rerunning resumes from it)" if last is not None else
                 "no checkpoint was written yet")
        raise FloatingPointError(
            f"step {step}: loss={loss} grad_norm={grad_norm} is not finite; training stopped "
            f"and {where}. Lower config.optim.lr (or raise optim.warmup_*), or set "
            "config.train.skip_nonfinite=True to skip such updates")


def _log_step(writer, progress, meter, step, metrics, position, every, total, guard):
    progress.update(1)
    if step % every and step != total:
        return
    m = {k: float(v) for k, v in jax.device_get(metrics).items()}
    step_time, data_wait = meter.step_time(step)
    m.update(**meter.rates(), step_time_s=step_time, data_wait_s=data_wait, **position,
             skipped_updates=guard.skipped)
    progress.set_postfix(loss=f"{m['loss']:.4f}", tok_s=f"{m['tokens_per_s']:.0f}")
    writer.write(step, m)
