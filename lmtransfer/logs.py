"""Run outputs: `metrics.jsonl` (one JSON line per logged step or eval), TensorBoard events
(`<workdir>/tb`), optionally Weights & Biases (`config.logging.wandb_project`), and JSON result
files. Only process 0 writes.

The W&B run's id is derived from the workdir, so a resumed run continues the same W&B run
(W&B drops the re-logged steps between the checkpoint and the interruption; metrics.jsonl
keeps them, and the last of each step is the resumed run's).

In a bucket workdir the growing files are written locally and uploaded at each eval, every
`SYNC_SECONDS` and at the end (`paths.Staged`); a resumed run appends to the uploaded
metrics.jsonl."""

from __future__ import annotations

import hashlib
import json
import os
import time

import jax

from lmtransfer import paths

SYNC_SECONDS = 60


class MetricWriter:
    def __init__(self, workdir: str, config=None):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        self.staged = paths.Staged(workdir, pull=("metrics.jsonl",))
        self.jsonl = open(os.path.join(self.staged.local, "metrics.jsonl"), "a")  # noqa: SIM115
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(os.path.join(self.staged.local, "tb"))
        self.synced = time.monotonic()
        self.wandb = _wandb_run(config, workdir, self.staged.local) if config else None

    def write(self, step: int, metrics: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        row = {"step": step, "kind": prefix, **{k: _py(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "step":
                self.tb.add_scalar(f"{prefix}/{k}", v, step)
        if self.wandb is not None:
            self.wandb.log({f"{prefix}/{k}": v for k, v in row.items()
                            if isinstance(v, (int, float)) and k != "step"}, step=step)
        if prefix != "train" or time.monotonic() - self.synced > SYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        """Uploads what was written so far (a no-op for a local workdir)."""
        if self.staged.local != self.staged.remote:
            self.tb.flush()
            self.staged.sync()
        self.synced = time.monotonic()

    def results(self, results: dict) -> None:
        """The run's results (results.json) as the tracker's run summary."""
        if self.enabled and self.wandb is not None:
            self.wandb.summary.update(_flat(json.loads(json.dumps(results, default=_py))))

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()
            if self.wandb is not None:
                self.wandb.finish()
            self.staged.close()


def _wandb_run(config, workdir: str, local_dir: str):
    lg = config.get("logging")
    if lg is None or not lg.wandb_project:
        return None
    try:
        import wandb
    except ImportError as e:
        from lmtransfer.errors import ConfigError

        raise ConfigError("config.logging.wandb_project is set but wandb is not installed: "
                          "pip install wandb==0.31.0") from e
    return wandb.init(
        project=lg.wandb_project, entity=lg.wandb_entity or None,
        name=lg.wandb_name or paths.basename(workdir), dir=local_dir,
        id=hashlib.sha256(workdir.encode()).hexdigest()[:16], resume="allow",
        mode=lg.wandb_mode or None, config=json.loads(config.to_json_best_effort()))


def _flat(tree, prefix: str = "") -> dict:
    """{'final': {'dev': {'accuracy': x}}} -> {'final/dev/accuracy': x} (numbers only)."""
    out = {}
    for k, v in (tree or {}).items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = v
    return out


def write_json(path: str, obj) -> None:
    """JSON written whole or not at all (process 0 only)."""
    if jax.process_index() != 0:
        return
    paths.write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_py))


def _py(v):
    try:
        return v.item()
    except AttributeError:
        return v
