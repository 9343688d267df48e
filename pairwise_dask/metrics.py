"""Agreement and accuracy from confusion matrices (mergeable across partitions by addition)."""
from __future__ import annotations

import numpy as np


def confusion(truth: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """``C[i, j]`` = number of items with ``truth = i`` and ``pred = j`` (int64)."""
    return np.bincount(truth.astype(np.int64) * k + pred, minlength=k * k).reshape(k, k)


def _f1(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    tp = np.diag(conf).astype(np.float64)
    support = conf.sum(axis=1).astype(np.float64)
    predicted = conf.sum(axis=0).astype(np.float64)
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1, support


def weighted_f1(conf: np.ndarray) -> float:
    """F1 per class weighted by the truth's support (scikit-learn's ``average='weighted'``)."""
    f1, support = _f1(conf)
    total = support.sum()
    return float((f1 * support).sum() / total) if total else float("nan")


def macro_f1(conf: np.ndarray) -> float:
    """Unweighted mean F1 over the classes present in truth or prediction."""
    f1, support = _f1(conf)
    present = (support + conf.sum(axis=0)) > 0
    return float(f1[present].mean()) if present.any() else float("nan")


def accuracy(conf: np.ndarray) -> float:
    total = conf.sum()
    return float(np.trace(conf) / total) if total else float("nan")
