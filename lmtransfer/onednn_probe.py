"""Does XLA's oneDNN dot path compute correctly here? Run (as a child process, by
`lmtransfer.xla_flags`) with the oneDNN flags in XLA_FLAGS: each case, the kinds of fusion
XLA hands to oneDNN, is compiled and compared with the same function run op by op (one op per
executable, so nothing is fused). Prints one JSON line as each case starts and one with its
error, so a case that aborts the process is still named. Imports only jax and numpy."""

import json

import jax
import jax.numpy as jnp
import numpy as np


def cases():
    r = np.random.default_rng(0)

    def w(*shape):
        return jnp.asarray(r.normal(0, 1, shape), jnp.float32)

    def attention(q, k, v):
        p = jax.nn.softmax(jnp.einsum("bnqh,bnkh->bnqk", q, k), -1)
        return jnp.einsum("bnqk,bnkh->bnqh", p, v)

    def mlp_loss(p, x):
        h = jax.nn.gelu(x @ p["wi"] + p["bi"]) @ p["wo"]
        h = h - h.mean(-1, keepdims=True)
        return (h / jnp.sqrt((h * h).mean(-1, keepdims=True) + 1e-6) * p["g"]).sum()

    x, y, v = w(64, 32), w(32, 48), w(48)
    q, k, val = w(2, 3, 16, 8), w(2, 3, 16, 8), w(2, 3, 16, 8)
    params = {"wi": w(32, 64) * 0.2, "bi": w(64), "wo": w(64, 32) * 0.2, "g": w(32)}
    return {
        "dot * scalar": (lambda x, y: (x @ y) * 0.17, (x, y)),
        "dot * vector": (lambda x, y, v: (x @ y) * v, (x, y, v)),
        "batched dot / scalar": (lambda q, k: jnp.einsum("bnqh,bnkh->bnqk", q, k) / 3.0, (q, k)),
        "attention (dot, softmax, dot)": (attention, (q, k, val)),
        "MLP layer gradient": (jax.grad(mlp_loss), (params, x)),
    }


def main():
    for name, (f, args) in cases().items():
        print(json.dumps({"case": name}), flush=True)
        got = jax.tree.leaves(jax.jit(f)(*args))
        with jax.disable_jit():
            want = jax.tree.leaves(f(*args))
        err = max(float(jnp.abs(a - b).max()) for a, b in zip(got, want, strict=True))
        scale = max(float(jnp.abs(b).max()) for b in want)
        print(json.dumps({"case": name, "err": err, "scale": scale}), flush=True)


if __name__ == "__main__":
    main()
