"""Small shared test utilities (batches and torch reference calls)."""

import numpy as np


def random_batch(vocab: int, batch: int = 4, length: int = 16, seed: int = 0):
    """Padded batch with different lengths and sentence-pair token types."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab, size=(batch, length)).astype(np.int32)
    lengths = np.linspace(length // 3, length, batch).astype(int)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    types = ((np.arange(length)[None] >= (lengths // 2)[:, None]) & mask.astype(bool))
    ids[~mask.astype(bool)] = 0
    return ids, mask, types.astype(np.int32)


def torch_outputs(model, ids, mask, types):
    import torch

    with torch.no_grad():
        return model(input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
                     token_type_ids=torch.tensor(types).long())


def perturbed_init(model, seed: int = 0):
    """`model`'s random params with every leaf perturbed (non-zero biases, non-unit norm
    scales), so a mixed-up layout in a conversion cannot pass."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    params = nn.unbox(model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32)))["params"]
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [x + 0.05 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(treedef, leaves)
