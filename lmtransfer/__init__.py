"""lmtransfer: transfer learning with Transformer language models in JAX/Flax."""

import time as _time

IMPORTED_AT = _time.perf_counter()  # the start of a run's "startup" phase (train/phases.py)

from lmtransfer import xla_flags as _xla_flags  # noqa: E402

__version__ = "0.1.0"

_xla_flags.apply()  # before JAX starts: LMTRANSFER_ONEDNN=1 adds the oneDNN matmul flags
