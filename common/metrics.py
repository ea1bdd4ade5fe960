"""Detection metrics, computed from predictions or from summed counts.

The federated server never sees predictions, only each site's confusion
matrix and score histograms. :func:`metrics_from_counts` computes the same
metrics from those sums, so federation-wide scores are exact rather than an
average of the sites' F1.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

logger = logging.getLogger(__name__)

#: Bins of the score histograms that sites send instead of raw scores. With
#: 1,000 equal bins on [0, 1] the ROC-AUC from histograms matches the exact
#: value to about 1e-3.
DEFAULT_HISTOGRAM_BINS = 1000

#: Keys every metrics dictionary carries, whatever produced it.
METRIC_KEYS = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "macro_f1",
    "fpr",
    "roc_auc",
    "confusion_matrix",
)


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Return the confusion matrix of shape ``(n_classes, n_classes)``; rows are true classes."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return matrix


def score_histograms(
    y_true: np.ndarray, proba: np.ndarray, bins: int = DEFAULT_HISTOGRAM_BINS
) -> np.ndarray:
    """Histogram each class's predicted probability, split by whether the row belongs to that class.

    Parameters
    ----------
    y_true : ndarray of shape (n_samples,)
    proba : ndarray of shape (n_samples, n_classes)
    bins : int
        Equal-width bins on [0, 1].

    Returns
    -------
    ndarray of shape (n_classes, 2, bins), int64
        ``[c, 0]`` counts the scores ``proba[:, c]`` of rows of class ``c``,
        ``[c, 1]`` those of all other rows. Histograms of several sites add up.
    """
    n_classes = proba.shape[1]
    histograms = np.zeros((n_classes, 2, bins), dtype=np.int64)
    bin_index = np.clip((np.asarray(proba) * bins).astype(np.int64), 0, bins - 1)
    for c in range(n_classes):
        positive = y_true == c
        histograms[c, 0] = np.bincount(bin_index[positive, c], minlength=bins)
        histograms[c, 1] = np.bincount(bin_index[~positive, c], minlength=bins)
    return histograms


def roc_auc_from_histogram(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """Return the ROC-AUC of two score histograms, or ``None`` if either is empty.

    The AUC is the probability that a positive scores above a negative, with
    ties (same bin) counted as one half.
    """
    n_positive, n_negative = positive.sum(), negative.sum()
    if n_positive == 0 or n_negative == 0:
        return None
    positives_above = np.cumsum(positive[::-1])[::-1] - positive
    wins = np.sum(negative * (positives_above + 0.5 * positive))
    return float(wins / (n_positive * n_negative))


def _safe_ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def _f1(precision: float, recall: float) -> float:
    return _safe_ratio(2 * precision * recall, precision + recall)


def _scores_from_confusion(
    confusion: np.ndarray, classes: Sequence[str], normal_index: int
) -> dict[str, Any]:
    n_classes = len(classes)
    total = int(confusion.sum())
    true_counts = confusion.sum(axis=1)
    predicted_counts = confusion.sum(axis=0)
    diagonal = np.diag(confusion)

    per_class: dict[str, dict[str, float | int]] = {}
    for c, name in enumerate(classes):
        precision = _safe_ratio(diagonal[c], predicted_counts[c])
        recall = _safe_ratio(diagonal[c], true_counts[c])
        per_class[name] = {
            "precision": precision,
            "recall": recall,
            "f1": _f1(precision, recall),
            "support": int(true_counts[c]),
        }
    # Classes absent from both the truth and the predictions carry no
    # information, so they do not drag the macro averages to zero.
    active = [name for c, name in enumerate(classes) if true_counts[c] or predicted_counts[c]]
    macro = {
        key: float(np.mean([per_class[name][key] for name in active])) if active else 0.0
        for key in ("precision", "recall", "f1")
    }

    # Attack detection collapses every attack class into one: what a
    # security team sees as "alert" versus "no alert".
    attack = [c for c in range(n_classes) if c != normal_index]
    true_attack = int(true_counts[attack].sum())
    alerts = int(predicted_counts[attack].sum())
    caught = int(confusion[np.ix_(attack, attack)].sum())
    normal_total = int(true_counts[normal_index])
    false_alarms = normal_total - int(confusion[normal_index, normal_index])
    attack_precision = _safe_ratio(caught, alerts)
    attack_recall = _safe_ratio(caught, true_attack)
    if total and not true_attack:
        logger.warning(
            "metrics: none of the %d scored samples is an attack, so attack recall and F1 are 0 by "
            "convention and say nothing about detection; score on data that holds attacks",
            total,
        )

    if n_classes == 2:
        attack_class = classes[attack[0]]
        precision = per_class[attack_class]["precision"]
        recall = per_class[attack_class]["recall"]
        f1 = per_class[attack_class]["f1"]
    else:
        precision, recall, f1 = macro["precision"], macro["recall"], macro["f1"]

    return {
        "n_samples": total,
        "accuracy": _safe_ratio(float(diagonal.sum()), total),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "macro_f1": macro["f1"],
        "macro_precision": macro["precision"],
        "macro_recall": macro["recall"],
        "fpr": _safe_ratio(false_alarms, normal_total) if normal_total else None,
        "attack_precision": attack_precision,
        "attack_recall": attack_recall,
        "attack_f1": _f1(attack_precision, attack_recall),
        "per_class": per_class,
        "confusion_matrix": confusion.astype(int).tolist(),
        "classes": list(classes),
    }


def _roc_auc_exact(y_true: np.ndarray, proba: np.ndarray, normal_index: int) -> float | None:
    n_classes = proba.shape[1]
    if len(np.unique(y_true)) < 2:
        return None
    if n_classes == 2:
        attack_index = 1 - normal_index
        return float(roc_auc_score(y_true == attack_index, proba[:, attack_index]))
    scores = [
        roc_auc_score(y_true == c, proba[:, c])
        for c in range(n_classes)
        if 0 < np.sum(y_true == c) < len(y_true)
    ]
    return float(np.mean(scores)) if scores else None


def classification_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    normal_class: str,
) -> dict[str, Any]:
    """Compute detection metrics from true labels and predicted probabilities.

    Parameters
    ----------
    y_true : ndarray of shape (n_samples,)
        True class indices.
    proba : ndarray of shape (n_samples, n_classes)
        Predicted probabilities; the prediction is the most probable class.
    classes : sequence of str
        Class names in index order.
    normal_class : str
        The benign class; every other class is an attack.

    Returns
    -------
    dict
        ``accuracy``; ``precision``, ``recall`` and ``f1`` of the attack class
        for two classes, or their macro averages over classes for more;
        ``macro_f1``; ``fpr``, the share of normal samples predicted as any
        attack (``None`` without normal samples); ``roc_auc`` (one-vs-rest
        macro average for more than two classes, ``None`` when ``y_true``
        holds a single class); ``confusion_matrix`` with true classes as rows;
        ``per_class``; and ``attack_*`` scores of attack versus normal.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    normal_index = list(classes).index(normal_class)
    y_pred = proba.argmax(axis=1) if len(proba) else np.empty(0, dtype=np.int64)
    confusion = confusion_counts(y_true, y_pred, len(classes))
    metrics = _scores_from_confusion(confusion, classes, normal_index)
    metrics["roc_auc"] = _roc_auc_exact(y_true, proba, normal_index)
    return metrics


def metrics_from_counts(
    confusion: np.ndarray,
    histograms: np.ndarray | None,
    classes: Sequence[str],
    normal_class: str,
) -> dict[str, Any]:
    """Compute the metrics of :func:`classification_metrics` from summed counts.

    Parameters
    ----------
    confusion : ndarray of shape (n_classes, n_classes)
        Confusion matrix summed over sites.
    histograms : ndarray of shape (n_classes, 2, n_bins) or None
        Score histograms from :func:`score_histograms`, summed over sites.
        Without them ``roc_auc`` is ``None``.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    normal_index = list(classes).index(normal_class)
    metrics = _scores_from_confusion(confusion, classes, normal_index)
    roc_auc = None
    if histograms is not None:
        histograms = np.asarray(histograms, dtype=np.int64)
        if len(classes) == 2:
            attack_index = 1 - normal_index
            roc_auc = roc_auc_from_histogram(histograms[attack_index, 0], histograms[attack_index, 1])
        else:
            scores = [roc_auc_from_histogram(h[0], h[1]) for h in histograms]
            defined = [score for score in scores if score is not None]
            roc_auc = float(np.mean(defined)) if defined else None
    metrics["roc_auc"] = roc_auc
    return metrics


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """Return ``(start, stop)`` of every maximal run of True in ``mask``."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def burst_metrics(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    normal_index: int,
    scored: np.ndarray | None = None,
) -> dict[str, Any]:
    """Score detection per attack burst, as a security team experiences it.

    Parameters
    ----------
    y_true, y_pred : ndarray of shape (n_flows,)
        True and predicted class of consecutive flows in capture order.
    normal_index : int
        Index of the benign class.
    scored : ndarray of bool of shape (n_flows,), optional
        Flows that received a prediction. The first W - 1 flows of a run have
        no full window; they count as "no alert".

    Returns
    -------
    dict
        ``bursts`` (runs of consecutive attack flows), ``bursts_detected_share``
        (bursts with at least one alert), ``detection_delay_mean`` and
        ``detection_delay_median`` in flows from a burst's first flow to its
        first alert (0 = alert on the first flow), ``false_alarm_episodes``
        (runs of alerts on normal flows) and ``false_alarm_episodes_per_10k_normal``,
        and ``recall_by_position`` for the first flow, flows 2-3 and later flows.
    """
    y_true = np.asarray(y_true)
    alert = np.asarray(y_pred) != normal_index
    if scored is not None:
        alert = alert & np.asarray(scored, dtype=bool)
    attack = y_true != normal_index

    delays = []
    detected = 0
    position_hits = {"first": [0, 0], "2-3": [0, 0], "4+": [0, 0]}
    bursts = _runs(attack)
    for start, stop in bursts:
        hits = np.flatnonzero(alert[start:stop])
        if len(hits):
            detected += 1
            delays.append(int(hits[0]))
        for offset in range(stop - start):
            if offset == 0:
                bucket = "first"
            elif offset <= 2:
                bucket = "2-3"
            else:
                bucket = "4+"
            position_hits[bucket][0] += int(alert[start + offset])
            position_hits[bucket][1] += 1

    false_episodes = len(_runs(alert & ~attack))
    n_normal = int((~attack).sum())
    return {
        "bursts": len(bursts),
        "bursts_detected": detected,
        "bursts_detected_share": _safe_ratio(detected, len(bursts)) if bursts else None,
        "detection_delay_mean": float(np.mean(delays)) if delays else None,
        "detection_delay_median": float(np.median(delays)) if delays else None,
        "false_alarm_episodes": false_episodes,
        "false_alarm_episodes_per_10k_normal": (
            _safe_ratio(false_episodes * 10_000, n_normal) if n_normal else None
        ),
        "recall_by_position": {
            bucket: (_safe_ratio(hit, total) if total else None)
            for bucket, (hit, total) in position_hits.items()
        },
    }


def mean_metrics(runs: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """Average the scalar metrics of several folds, ignoring folds where a metric is ``None``."""
    summary: dict[str, float | None] = {}
    for key in ("accuracy", "precision", "recall", "f1", "macro_f1", "fpr", "roc_auc",
                "attack_precision", "attack_recall", "attack_f1"):
        values = [run[key] for run in runs if run.get(key) is not None]
        finite = [value for value in values if isinstance(value, int | float) and math.isfinite(value)]
        summary[key] = float(np.mean(finite)) if finite else None
    return summary
