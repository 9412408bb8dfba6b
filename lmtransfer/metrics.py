"""Task metrics as thin wrappers over scikit-learn and scipy (the official GLUE definitions)."""

from __future__ import annotations

import numpy as np


def accuracy(labels, preds) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, preds))


def f1(labels, preds, positive=1) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(labels, preds, pos_label=positive, average="binary"))


def matthews(labels, preds) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, preds))


def pearson(labels, scores) -> float:
    from scipy.stats import pearsonr

    return float(pearsonr(labels, scores)[0])


def spearman(labels, scores) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(labels, scores)[0])


# Metric sets by name -> the key of the main metric in their result.
MAIN_METRIC = {"acc": "accuracy", "mcc": "mcc", "acc_f1": "acc_f1",
               "pearson_spearman": "pearson_spearman"}

def classification_metrics(kind: str, labels: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    """`kind`: acc | mcc | acc_f1 | pearson_spearman (preds are scores for the last)."""
    if kind == "pearson_spearman":
        p, s = pearson(labels, preds), spearman(labels, preds)
        return {"pearson_spearman": (p + s) / 2, "pearson": p, "spearman": s}
    if kind == "mcc":
        return {"mcc": matthews(labels, preds), "accuracy": accuracy(labels, preds)}
    if kind == "acc_f1":
        a, f = accuracy(labels, preds), f1(labels, preds)
        return {"acc_f1": (a + f) / 2, "accuracy": a, "f1": f}
    if kind == "acc":
        return {"accuracy": accuracy(labels, preds)}
    raise ValueError(f"unknown metric set {kind!r}; use acc, mcc, acc_f1 or pearson_spearman")
