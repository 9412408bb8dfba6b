"""lmtransfer: transfer learning with Transformer language models in JAX/Flax."""

from lmtransfer import xla_flags as _xla_flags

__version__ = "0.1.0"

_xla_flags.apply()  # before JAX starts: LMTRANSFER_ONEDNN=1 adds the oneDNN matmul flags
