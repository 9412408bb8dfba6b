"""Where a run's wall time goes: seconds per phase (start-up, load, compile, train, eval, write)
for results.json, so a short run can say what it paid for besides training steps.

Phases nest (an eval inside the train loop, a checkpoint write inside either); each second is
charged to the innermost open phase, except compilation: JAX reports every trace, lowering and
XLA compile (or persistent-cache load) through `jax.monitoring`, and those seconds are moved
from the phase that triggered them to "compile". "startup" is the time from `import lmtransfer`
to the start of the process's first run (the imports of JAX, Flax, transformers...); later
runs of the same process (a sweep's, a notebook's) start with those paid, at 0.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time

import jax

import lmtransfer

COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
ORDER = ("startup", "load", "compile", "train", "eval", "write")
_startup_charged = False  # to the process's first run only


class Phases:
    def __init__(self):
        self.seconds: dict[str, float] = collections.defaultdict(float)
        global _startup_charged
        if not _startup_charged:
            self.seconds["startup"] = time.perf_counter() - lmtransfer.IMPORTED_AT
            _startup_charged = True
        self._open: list[str] = []
        self._mark = self._start = time.perf_counter()
        self._thread = threading.get_ident()

    def _charge(self) -> None:
        now = time.perf_counter()
        if self._open:
            self.seconds[self._open[-1]] += now - self._mark
        self._mark = now

    def switch(self, name: str) -> None:
        """Ends the outermost phase and starts `name` (the run's load, train, write)."""
        self._charge()
        self._open[:1] = [name]

    @contextlib.contextmanager
    def __call__(self, name: str):
        self._charge()
        self._open.append(name)
        try:
            yield
        finally:
            self._charge()
            self._open.pop()

    def _on_event(self, event: str, duration: float, **_) -> None:
        # compiles of this run's thread only (a background thread's overlap the phases)
        if event in COMPILE_EVENTS and threading.get_ident() == self._thread:
            self.seconds["compile"] += duration
            if self._open:
                self.seconds[self._open[-1]] -= duration

    def __enter__(self):
        jax.monitoring.register_event_duration_secs_listener(self._on_event)
        return self

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._on_event)

    def summary(self) -> dict[str, float]:
        """{phase: seconds} in ORDER, and "total" (start-up plus the run so far)."""
        self._charge()
        out = {k: round(self.seconds.get(k, 0.0), 3) for k in ORDER}
        out["total"] = round(self.seconds["startup"] + time.perf_counter() - self._start, 3)
        return out
