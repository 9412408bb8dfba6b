"""Eval counts every example once; metrics match scikit-learn / scipy definitions."""

import jax
import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from lmtransfer import metrics, sharding
from lmtransfer.data import batching
from lmtransfer.tasks.base import Split
from lmtransfer.train import evaluate as eval_lib


def test_eval_batches_cover_each_example_once_on_8_devices():
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
    n = 37  # uneven: 4 full batches of 8 and one with 5 real rows
    lengths = np.random.default_rng(0).integers(1, 40, n).astype(np.int32)
    features = {"input_ids": np.arange(n * 40, dtype=np.int32).reshape(n, 40),
                "attention_mask": (np.arange(40)[None] < lengths[:, None]).astype(np.int32),
                "token_type_ids": np.zeros((n, 40), np.int32), "length": lengths,
                "label": np.arange(n, dtype=np.int32)}
    split = Split("dev", features, [{}] * n)
    seen = []

    def eval_step(params, batch):  # echo each row's label; count real rows
        seen.append(int(np.asarray(batch["weights"]).sum()))
        return {"pred": batch["label"] * 10}, batch["weights"].sum(), batch["weights"].sum()

    preds, loss, _ = eval_lib.predict_split(eval_step, None, split, 8, mesh, (16, 32, 40))
    assert sum(seen) == n and len(seen) == 5
    np.testing.assert_array_equal(preds["pred"], np.arange(n) * 10)  # each once, in order
    assert loss == 1.0


def test_host_rows_single_process_is_whole_batch():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert batching.host_rows(batching.batch_sharding(mesh), 16) == slice(0, 16)
    with pytest.raises(ValueError, match="config.train.batch_size=6 must be divisible by"):
        batching.check_batch_size(6, mesh, "config.train.batch_size")


def test_train_order_is_a_permutation_per_epoch():
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    feats = {"length": np.ones(10, np.int32), "input_ids": np.zeros((10, 4), np.int32)}
    b = batching.Batcher(feats, 4, mesh, (4,))
    assert b.steps_per_epoch == 3
    for epoch in range(2):
        idx = np.concatenate([b.train_indices(epoch * 3 + i, seed=1) for i in range(3)])
        assert sorted(idx[idx >= 0].tolist()) == list(range(10)) and (idx < 0).sum() == 2
    assert not np.array_equal(b.train_indices(0, 1), b.train_indices(3, 1))  # reshuffled
    np.testing.assert_array_equal(b.train_indices(4, 1), b.train_indices(4, 1))


@pytest.fixture
def preds():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.where(rng.random(200) < 0.8, y, 1 - y)
    return y, p


def test_classification_metrics_match_reference(preds):
    y, p = preds
    tp, tn = int(((p == 1) & (y == 1)).sum()), int(((p == 0) & (y == 0)).sum())
    fp, fn = int(((p == 1) & (y == 0)).sum()), int(((p == 0) & (y == 1)).sum())
    mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    f1 = 2 * tp / (2 * tp + fp + fn)
    acc = (tp + tn) / len(y)
    m = metrics.classification_metrics("mcc", y, p)
    assert m["mcc"] == pytest.approx(mcc) == pytest.approx(sklearn.metrics.matthews_corrcoef(y, p))
    m = metrics.classification_metrics("acc_f1", y, p)
    assert m["f1"] == pytest.approx(f1) and m["accuracy"] == pytest.approx(acc)
    assert m["acc_f1"] == pytest.approx((acc + f1) / 2)
    assert metrics.classification_metrics("acc", y, p) == {"accuracy": pytest.approx(acc)}


def test_regression_metrics_match_reference():
    rng = np.random.default_rng(1)
    y = rng.random(100) * 5
    s = y + rng.normal(0, 1, 100)
    m = metrics.classification_metrics("pearson_spearman", y, s)
    assert m["pearson"] == pytest.approx(np.corrcoef(y, s)[0, 1])
    ranks = lambda x: np.argsort(np.argsort(x))  # noqa: E731 (no ties in continuous data)
    assert m["spearman"] == pytest.approx(np.corrcoef(ranks(y), ranks(s))[0, 1])
    assert m["spearman"] == pytest.approx(scipy.stats.spearmanr(y, s)[0])
    with pytest.raises(ValueError, match="unknown metric set"):
        metrics.classification_metrics("auc", y, s)
