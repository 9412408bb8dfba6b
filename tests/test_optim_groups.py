"""Frozen parameters (`optim.freeze`) and layer-wise learning-rate decay (`optim.layer_decay`)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lmtransfer.train import optim
from tests.glue_data import make_glue
from tests.test_train_step import config_for, max_diff, run_steps

L = 3  # layers of the toy tree


def _config(**kw):
    return ml_collections.ConfigDict({**dict(
        lr=1e-3, warmup_steps=0, warmup_ratio=0.0, decay="constant", weight_decay=0.01,
        b1=0.9, b2=0.999, eps=1e-8, max_grad_norm=1.0, freeze="", layer_decay=1.0), **kw})


def _params():
    rng = np.random.default_rng(0)
    w = lambda: jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)  # noqa: E731
    tree = {f"layer_{i}": {"mlp": {"kernel": w(), "bias": w()[0]}} for i in range(L)}
    tree["embeddings"] = {"word_embeddings": {"embedding": w()}}
    tree["classifier"] = {"kernel": w()}
    return tree


def _one_update(c):
    tx, _ = optim.make(c, 10)
    params = _params()
    grads = jax.tree.map(lambda p: jnp.cos(p) + 0.1, params)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    return params, updates, state


def test_layer_decay_scales_each_layers_update_by_its_depth():
    _, full, _ = _one_update(_config())
    _, decayed, _ = _one_update(_config(layer_decay=0.5))
    ratio = jax.tree.map(lambda a, b: np.asarray(a / b), decayed, full)
    for i in range(L):  # layer_i at decay^(L - i); the head at lr; embeddings lowest
        np.testing.assert_allclose(ratio[f"layer_{i}"]["mlp"]["kernel"], 0.5 ** (L - i),
                                   rtol=1e-6)
        np.testing.assert_allclose(ratio[f"layer_{i}"]["mlp"]["bias"], 0.5 ** (L - i),
                                   rtol=1e-6)
    np.testing.assert_allclose(ratio["classifier"]["kernel"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(ratio["embeddings"]["word_embeddings"]["embedding"],
                               0.5 ** (L + 1), rtol=1e-6)


def test_frozen_parameters_get_no_update_and_no_optimizer_state():
    _, updates, state = _one_update(_config(freeze=r"^embeddings/|^layer_0/"))
    assert not np.any(updates["embeddings"]["word_embeddings"]["embedding"])
    assert not np.any(updates["layer_0"]["mlp"]["kernel"])
    assert np.all(np.asarray(updates["layer_1"]["mlp"]["kernel"]) != 0)
    moments = [x for x in jax.tree.leaves(state) if getattr(x, "shape", ()) == (4, 4)]
    # AdamW's mu and nu for layer_1, layer_2, classifier only: 3 kernels x 2 moments.
    assert len(moments) == 6
    # Clipping counts the trained gradients only, so the rest receive larger clipped
    # gradients (a large eps makes Adam's step feel the gradient's scale).
    frozen = _one_update(_config(freeze=r"^embeddings/|^layer_0/", eps=10.0,
                                 weight_decay=0.0))[1]
    unfrozen = _one_update(_config(eps=10.0, weight_decay=0.0))[1]
    k = "layer_1"
    assert np.all(np.abs(frozen[k]["mlp"]["kernel"]) > np.abs(unfrozen[k]["mlp"]["kernel"]))


@pytest.mark.parametrize("kw,match", [
    (dict(freeze="^decoder/"), r"config\.optim\.freeze='\^decoder/' matches no parameter; "
                               r"paths look like"),
    (dict(freeze="("), r"config\.optim\.freeze='\(' is not a regex"),
    (dict(freeze="."), "freezes every parameter"),
    (dict(layer_decay=1.5), r"config\.optim\.layer_decay=1\.5 must be in \(0, 1\]"),
])
def test_bad_settings_name_the_key(kw, match):
    with pytest.raises(ValueError, match=match):
        _one_update(_config(**kw))


def test_layer_decay_refuses_shared_layers():
    params = {"shared_layer_0": {"kernel": jnp.ones((2, 2))}, "pooler": {"kernel": jnp.ones(2)}}
    tx, _ = optim.make(_config(layer_decay=0.8), 10)
    with pytest.raises(ValueError, match=r"layer_decay=0\.8: this model shares its layers"):
        tx.init(params)


def test_frozen_embeddings_and_layer_decay_in_a_sharded_run(tmp_path):
    """Through the train step on BERT: embeddings bit-identical after 3 steps, the rest
    trained, and the (2, 2, 2)-sharded run equals the single-device one."""
    root = make_glue(str(tmp_path / "glue"), n_train=64)
    config = config_for(root, batch_size=16)
    config.optim.freeze, config.optim.layer_decay = "^embeddings/", 0.8
    single_losses, single, _ = run_steps(config, {"data": 1})
    losses, params, _ = run_steps(config, {"data": 2, "fsdp": 2, "tensor": 2})
    np.testing.assert_allclose(losses, single_losses, atol=1e-5)
    assert max_diff(params, single) <= 1e-5
    config.optim.freeze, config.optim.layer_decay = "", 1.0
    _, start, _ = run_steps(config, {"data": 1}, n_steps=0)
    assert max_diff(params["embeddings"], start["embeddings"]) == 0
    assert max_diff(params["layer_0"], start["layer_0"]) > 0
