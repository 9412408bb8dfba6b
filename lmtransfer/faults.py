"""Fault injection for the reliability tests: `LMTRANSFER_KILL_AT=<point>:<step>` makes the
process SIGKILL itself at a named point of the training loop, as a preempted VM or an OOM
kill would, so tests can hit each phase deterministically:

  step  right after train step <step> is dispatched (the device is mid-step)
  save  right after the async save of checkpoint <step> starts (files half written)
  eval  after the first batch of the evaluation at step <step> (mid-eval)
  prepare  when token-store shard <step> has all its files but not yet its JSON (mid-shard)

Unset (always, outside tests), every point is a dictionary lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "LMTRANSFER_KILL_AT"
_step = [-1]


def at_step(step: int) -> None:
    """The loop's current step, for points that don't know it (eval)."""
    _step[0] = step


def point(name: str, step: int | None = None) -> None:
    spec = os.environ.get(ENV)
    if spec and spec == f"{name}:{_step[0] if step is None else step}":
        os.kill(os.getpid(), signal.SIGKILL)
