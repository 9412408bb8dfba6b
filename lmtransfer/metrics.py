"""Task metrics: scikit-learn / scipy for GLUE, seqeval for NER, and the official SQuAD
v1.1 / v2.0 evaluation rules (answer normalisation, max over gold answers)."""

from __future__ import annotations

import collections
import re
import string

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


# ---------------------------------------------------------------------------------- NER

def entity_scores(gold: list[list[str]], pred: list[list[str]], mode: str = "conlleval",
                  scheme: str = "IOB2") -> dict[str, float]:
    """Entity-level micro precision / recall / F1 (x100 like conlleval) and per-type F1.

    mode="conlleval": seqeval's default, conlleval-compatible chunking (IOB1 or IOB2 tags;
    an I- after O starts an entity). mode="strict": only well-formed chunks of `scheme`
    (e.g. IOB2, IOBES) count.
    """
    from seqeval import metrics as sm
    from seqeval import scheme as schemes

    if mode not in ("conlleval", "strict"):
        raise ValueError(f"entity metric mode={mode!r}; use conlleval or strict")
    kw = {}
    if mode == "strict":
        if not hasattr(schemes, scheme):
            raise ValueError(f"tag scheme {scheme!r}; use IOB1, IOB2, IOE1, IOE2, IOBES, BILOU")
        kw = dict(mode="strict", scheme=getattr(schemes, scheme))
    out = {"precision": 100 * sm.precision_score(gold, pred, zero_division=0, **kw),
           "recall": 100 * sm.recall_score(gold, pred, zero_division=0, **kw),
           "f1": 100 * sm.f1_score(gold, pred, zero_division=0, **kw),
           "accuracy": 100 * sm.accuracy_score(gold, pred)}
    report = sm.classification_report(gold, pred, output_dict=True, zero_division=0, **kw)
    for name, row in report.items():
        if not name.endswith(" avg"):
            out[f"f1_{name}"] = 100 * float(row["f1-score"])
    return out


# ---------------------------------------------------------------------------------- SQuAD
# Same definitions as the official evaluate-v1.1.py / evaluate-v2.0.py.

def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def squad_exact(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str, version: str = "1.1") -> float:
    pred_toks, gold_toks = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if version == "2.0" and (not pred_toks or not gold_toks):
        return float(pred_toks == gold_toks)  # v2.0: no-answer matches only no-answer
    common = collections.Counter(pred_toks) & collections.Counter(gold_toks)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def squad_gold(answers: list[str], version: str) -> list[str]:
    """v2.0 keeps answers that normalise to something, and [""] for unanswerable."""
    if version == "2.0":
        return [a for a in answers if normalize_answer(a)] or [""]
    return answers


def squad_scores(golds: dict[str, list[str]], predictions: dict[str, str],
                 version: str = "1.1") -> dict[str, float]:
    """exact_match and f1 (x100) over every question in `golds`; a question without a
    prediction scores 0, as in the official scripts."""
    em = f1 = 0.0
    for qid, answers in golds.items():
        if qid not in predictions:
            continue
        gold = squad_gold(answers, version)
        em += max(squad_exact(predictions[qid], g) for g in gold)
        f1 += max(squad_f1(predictions[qid], g, version) for g in gold)
    n = max(len(golds), 1)
    return {"exact_match": 100 * em / n, "f1": 100 * f1 / n}


def best_null_threshold(golds: dict[str, list[str]], answers: dict[str, str],
                        null_odds: dict[str, float]) -> dict[str, float]:
    """SQuAD v2.0: the threshold on (null score - best span score) that maximises EM and F1
    when answers whose odds exceed it become "" (the official find_best_thresh)."""
    out = {}
    for name, fn in (("exact_match", squad_exact), ("f1", lambda p, g: squad_f1(p, g, "2.0"))):
        scores = {q: max(fn(answers[q], g) for g in squad_gold(a, "2.0"))
                  for q, a in golds.items()}
        no_answer = {q: not a for q, a in golds.items()}
        cur = best = float(sum(no_answer.values()))
        thresh = 0.0
        for q in sorted(null_odds, key=null_odds.get):
            if q not in scores:
                continue
            if not answers[q]:
                diff = 0.0
            elif no_answer[q]:
                diff = -1.0
            else:
                diff = scores[q]
            cur += diff
            if cur > best:
                best, thresh = cur, null_odds[q]
        out[f"best_{name}"] = 100 * best / max(len(scores), 1)
        out[f"best_{name}_thresh"] = thresh
    return out
