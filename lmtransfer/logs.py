"""Run outputs: `metrics.jsonl` (one JSON line per logged step or eval), TensorBoard events
(`<workdir>/tb`), optionally Weights & Biases, and JSON result files. Only process 0 writes.

In a bucket workdir the growing files are written locally and uploaded at each eval, every
`SYNC_SECONDS` and at the end (`paths.Staged`); a resumed run appends to the uploaded
metrics.jsonl."""

from __future__ import annotations

import json
import os
import time

import jax

from lmtransfer import paths

SYNC_SECONDS = 60


class MetricWriter:
    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        self.staged = paths.Staged(workdir, pull=("metrics.jsonl",))
        self.jsonl = open(os.path.join(self.staged.local, "metrics.jsonl"), "a")  # noqa: SIM115
        from tensorboardX import SummaryWriter

        self.tb = SummaryWriter(os.path.join(self.staged.local, "tb"))
        self.synced = time.monotonic()

    def write(self, step: int, metrics: dict, prefix: str = "train") -> None:
        if not self.enabled:
            return
        row = {"step": step, "kind": prefix, **{k: _py(v) for k, v in metrics.items()}}
        self.jsonl.write(json.dumps(row) + "\n")
        self.jsonl.flush()
        for k, v in row.items():
            if isinstance(v, (int, float)) and k != "step":
                self.tb.add_scalar(f"{prefix}/{k}", v, step)
        if prefix != "train" or time.monotonic() - self.synced > SYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        """Uploads what was written so far (a no-op for a local workdir)."""
        if self.staged.local != self.staged.remote:
            self.tb.flush()
            self.staged.sync()
        self.synced = time.monotonic()

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tb.close()
            self.staged.close()


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
