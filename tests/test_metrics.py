"""Tests of flow-level, count-based and burst-level metrics in common.metrics."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from common.metrics import (
    METRIC_KEYS,
    burst_metrics,
    classification_metrics,
    confusion_counts,
    mean_metrics,
    metrics_from_counts,
    roc_auc_from_histogram,
    score_histograms,
)

BINARY = ["normal", "attack"]
THREE_CLASSES = ["normal", "spoofing", "alteration"]

# Ten flows: six normal, four attacks. The attack score is thresholded at 0.5.
BINARY_Y_TRUE = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
ATTACK_SCORES = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9, 0.65, 0.45])
BINARY_PROBA = np.column_stack([1.0 - ATTACK_SCORES, ATTACK_SCORES])


def _one_hot_proba(y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Return probabilities of 0.8 for the predicted class, the rest shared equally."""
    proba = np.full((len(y_pred), n_classes), 0.2 / (n_classes - 1))
    proba[np.arange(len(y_pred)), y_pred] = 0.8
    return proba


def _seeded_proba(n_rows: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return labels and softmax probabilities that favour the true class, from a seeded generator."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, n_classes, n_rows)
    logits = rng.normal(size=(n_rows, n_classes))
    logits[np.arange(n_rows), y_true] += 1.0
    proba = np.exp(logits)
    return y_true, proba / proba.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------
# confusion_counts, score_histograms, roc_auc_from_histogram
# ---------------------------------------------------------------------------


def test_confusion_counts_literal() -> None:
    y_true = np.array([0, 0, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 2, 0, 2])

    matrix = confusion_counts(y_true, y_pred, 3)

    assert matrix.dtype == np.int64
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_confusion_counts_unseen_class_row() -> None:
    matrix = confusion_counts(np.array([0, 0]), np.array([0, 1]), 3)

    assert matrix.tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 0]]


def test_score_histograms_literal() -> None:
    y_true = np.array([0, 1, 1])
    proba = np.array([[0.95, 0.05], [0.3, 0.7], [0.0, 1.0]])

    histograms = score_histograms(y_true, proba, bins=10)

    assert histograms.shape == (2, 2, 10)
    assert histograms.dtype == np.int64
    # Attack scores of attack rows: 0.7 in bin 7, 1.0 clipped into the last bin.
    assert np.flatnonzero(histograms[1, 0]).tolist() == [7, 9]
    # Attack score of the normal row: 0.05 in bin 0.
    assert histograms[1, 1].tolist() == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    # Normal scores of the normal row (0.95, bin 9) and of the attack rows (0.3, 0.0).
    assert np.flatnonzero(histograms[0, 0]).tolist() == [9]
    assert histograms[0, 1].tolist() == [1, 0, 0, 1, 0, 0, 0, 0, 0, 0]


def test_roc_auc_from_histogram_ties_count_half() -> None:
    positive = np.array([0, 1, 1])
    negative = np.array([2, 1, 0])

    # Negatives in bin 0 lose to both positives: 2 * 2 = 4 wins. The negative in bin 1
    # loses to the positive in bin 2 and ties the one in bin 1: 1.5. Total 5.5 of 2 * 3 pairs.
    assert roc_auc_from_histogram(positive, negative) == pytest.approx(5.5 / 6)


@pytest.mark.parametrize(
    ("positive", "negative"),
    [
        pytest.param([0, 0, 0], [1, 2, 0], id="no-positives"),
        pytest.param([1, 0, 3], [0, 0, 0], id="no-negatives"),
    ],
)
def test_roc_auc_from_histogram_empty_side(positive: list[int], negative: list[int]) -> None:
    assert roc_auc_from_histogram(np.array(positive), np.array(negative)) is None


# ---------------------------------------------------------------------------
# classification_metrics
# ---------------------------------------------------------------------------


def test_classification_metrics_binary_literal() -> None:
    metrics = classification_metrics(BINARY_Y_TRUE, BINARY_PROBA, BINARY, "normal")

    # Predictions are 0 0 0 0 1 1 | 1 1 1 0, so TN 4, FP 2, FN 1, TP 3.
    assert metrics["confusion_matrix"] == [[4, 2], [1, 3]]
    assert metrics["n_samples"] == 10
    assert metrics["accuracy"] == pytest.approx(7 / 10)
    assert metrics["precision"] == pytest.approx(3 / 5)
    assert metrics["recall"] == pytest.approx(3 / 4)
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["fpr"] == pytest.approx(2 / 6)
    # The normal class has precision 4/5, recall 4/6 and F1 8/11, so macro-F1 is (2/3 + 8/11) / 2.
    assert metrics["per_class"]["normal"]["f1"] == pytest.approx(8 / 11)
    assert metrics["per_class"]["attack"]["support"] == 4
    assert metrics["macro_f1"] == pytest.approx(23 / 33)
    assert metrics["attack_f1"] == pytest.approx(2 / 3)
    # Attack scores 0.8 and 0.9 beat all 6 normal scores, 0.65 beats 5, 0.45 beats 4: 21 of 24.
    assert metrics["roc_auc"] == pytest.approx(21 / 24)
    for key in METRIC_KEYS:
        assert key in metrics, key


def test_classification_metrics_normal_not_first() -> None:
    # Same flows with the class order reversed: attack is index 0, normal index 1.
    metrics = classification_metrics(1 - BINARY_Y_TRUE, BINARY_PROBA[:, ::-1], ["attack", "normal"], "normal")

    assert metrics["precision"] == pytest.approx(3 / 5)
    assert metrics["recall"] == pytest.approx(3 / 4)
    assert metrics["fpr"] == pytest.approx(2 / 6)
    assert metrics["roc_auc"] == pytest.approx(21 / 24)


def test_classification_metrics_multiclass_macro() -> None:
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 0])

    metrics = classification_metrics(y_true, _one_hot_proba(y_pred, 3), THREE_CLASSES, "normal")

    assert metrics["confusion_matrix"] == [[3, 1, 0], [0, 3, 0], [1, 0, 2]]
    # Per class (precision, recall): normal (3/4, 3/4), spoofing (3/4, 1), alteration (1, 2/3).
    assert metrics["per_class"]["spoofing"]["f1"] == pytest.approx(6 / 7)
    assert metrics["per_class"]["alteration"]["f1"] == pytest.approx(4 / 5)
    assert metrics["precision"] == pytest.approx(5 / 6)
    assert metrics["recall"] == pytest.approx(29 / 36)
    assert metrics["f1"] == pytest.approx(337 / 420)
    assert metrics["macro_f1"] == pytest.approx(337 / 420)
    assert metrics["accuracy"] == pytest.approx(8 / 10)
    # One of four normal flows raised an alert.
    assert metrics["fpr"] == pytest.approx(1 / 4)
    # Attack versus normal: 6 alerts, 5 of them on the 6 attack flows.
    assert metrics["attack_precision"] == pytest.approx(5 / 6)
    assert metrics["attack_recall"] == pytest.approx(5 / 6)


def test_classification_metrics_absent_class_skipped() -> None:
    # Class "alteration" is neither true nor predicted anywhere, so it does not enter the macro mean.
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 1, 1, 1])

    metrics = classification_metrics(y_true, _one_hot_proba(y_pred, 3), THREE_CLASSES, "normal")

    # Normal has precision 1, recall 1/2, F1 2/3. Spoofing has precision 2/3, recall 1, F1 4/5.
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)


@pytest.mark.parametrize(
    ("y_true", "classes"),
    [
        pytest.param(np.array([1, 1, 1]), BINARY, id="binary-only-attacks"),
        pytest.param(np.array([0, 0, 0]), BINARY, id="binary-only-normal"),
        pytest.param(np.array([2, 2, 2]), THREE_CLASSES, id="multiclass-one-class"),
    ],
)
def test_classification_metrics_single_class_no_auc(y_true: np.ndarray, classes: list[str]) -> None:
    proba = np.random.default_rng(0).dirichlet(np.ones(len(classes)), size=len(y_true))

    metrics = classification_metrics(y_true, proba, classes, "normal")
    from_counts = metrics_from_counts(
        confusion_counts(y_true, proba.argmax(axis=1), len(classes)),
        score_histograms(y_true, proba),
        classes,
        "normal",
    )

    assert metrics["roc_auc"] is None
    assert from_counts["roc_auc"] is None


def test_classification_metrics_no_attack_warns(caplog: pytest.LogCaptureFixture) -> None:
    y_true = np.array([0, 0, 0])
    proba = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])

    with caplog.at_level(logging.WARNING, logger="common.metrics"):
        metrics = classification_metrics(y_true, proba, BINARY, "normal")
        metrics_from_counts(confusion_counts(y_true, proba.argmax(axis=1), 2), None, BINARY, "normal")

    assert metrics["f1"] == 0.0
    assert metrics["fpr"] == pytest.approx(1 / 3)
    assert caplog.text.count("none of the 3 scored samples is an attack") == 2


def test_classification_metrics_with_attack_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="common.metrics"):
        classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]), BINARY, "normal")
        classification_metrics(np.empty(0), np.empty((0, 2)), BINARY, "normal")

    assert caplog.text == ""


def test_classification_metrics_no_normal_fpr_none() -> None:
    metrics = classification_metrics(np.array([1, 1]), np.array([[0.3, 0.7], [0.6, 0.4]]), BINARY, "normal")

    assert metrics["fpr"] is None
    assert metrics["recall"] == pytest.approx(1 / 2)


def test_classification_metrics_empty_input() -> None:
    metrics = classification_metrics(np.empty(0), np.empty((0, 2)), BINARY, "normal")

    assert metrics["n_samples"] == 0
    assert metrics["confusion_matrix"] == [[0, 0], [0, 0]]
    assert metrics["roc_auc"] is None
    assert metrics["fpr"] is None


# ---------------------------------------------------------------------------
# metrics_from_counts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("classes", "seed"),
    [
        pytest.param(BINARY, 7, id="binary"),
        pytest.param(THREE_CLASSES, 8, id="three-classes"),
        pytest.param(["benign", "a", "b", "c", "d"], 9, id="five-classes"),
    ],
)
def test_metrics_from_counts_matches_pooled(classes: list[str], seed: int) -> None:
    n_classes = len(classes)
    y_true, proba = _seeded_proba(600, n_classes, seed)
    halves = (slice(0, 250), slice(250, 600))

    # Two sites report counts and the server sums them.
    confusion = sum(confusion_counts(y_true[part], proba[part].argmax(axis=1), n_classes) for part in halves)
    histograms = sum(score_histograms(y_true[part], proba[part]) for part in halves)
    from_counts = metrics_from_counts(confusion, histograms, classes, classes[0])
    pooled = classification_metrics(y_true, proba, classes, classes[0])

    for key in pooled:
        if key != "roc_auc":
            assert from_counts[key] == pooled[key], key
    if n_classes == 2:
        exact_auc = roc_auc_score(y_true, proba[:, 1])
    else:
        exact_auc = roc_auc_score(y_true, proba, multi_class="ovr", average="macro")
    assert pooled["roc_auc"] == pytest.approx(exact_auc)
    assert abs(from_counts["roc_auc"] - exact_auc) < 2e-3


def test_metrics_from_counts_without_histograms() -> None:
    metrics = metrics_from_counts(np.array([[4, 2], [1, 3]]), None, BINARY, "normal")

    assert metrics["roc_auc"] is None
    assert metrics["f1"] == pytest.approx(2 / 3)


def test_metrics_from_counts_binary_literal_auc() -> None:
    # Every score of the literal case falls in its own bin, so the histogram AUC is exact.
    histograms = score_histograms(BINARY_Y_TRUE, BINARY_PROBA)

    metrics = metrics_from_counts(np.array([[4, 2], [1, 3]]), histograms, BINARY, "normal")

    assert metrics["roc_auc"] == pytest.approx(21 / 24)


# ---------------------------------------------------------------------------
# burst_metrics
# ---------------------------------------------------------------------------

# index:                 0  1  2  3  4  5  6  7  8  9 10 11 12 13
BURST_Y_TRUE = np.array([0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0])
# Burst 2..5 is first flagged at its second flow (index 3), and burst 8..9 is missed.
# The alerts on normal flows 11 and 12 form one false-alarm episode.
BURST_Y_PRED = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0])


def test_burst_metrics_hand_sequence() -> None:
    result = burst_metrics(BURST_Y_TRUE, BURST_Y_PRED, normal_index=0)

    assert result["bursts"] == 2
    assert result["bursts_detected"] == 1
    assert result["bursts_detected_share"] == pytest.approx(0.5)
    assert result["detection_delay_mean"] == pytest.approx(1.0)
    assert result["detection_delay_median"] == pytest.approx(1.0)
    assert result["false_alarm_episodes"] == 1
    # 8 normal flows: indices 0, 1, 6, 7, 10, 11, 12, 13.
    assert result["false_alarm_episodes_per_10k_normal"] == pytest.approx(10_000 / 8)
    by_position = result["recall_by_position"]
    # First flows: index 2 and 8, neither flagged.
    assert by_position["first"] == pytest.approx(0.0)
    # Flows 2-3 of a burst: indices 3, 4 (flagged) and 9 (missed).
    assert by_position["2-3"] == pytest.approx(2 / 3)
    # Later flows: index 5, flagged.
    assert by_position["4+"] == pytest.approx(1.0)


def test_burst_metrics_unscored_flows_no_alert() -> None:
    # Flow 3 has no full window, so its alert does not count and the first alert is flow 4.
    scored = np.ones(len(BURST_Y_TRUE), dtype=bool)
    scored[3] = False

    result = burst_metrics(BURST_Y_TRUE, BURST_Y_PRED, normal_index=0, scored=scored)

    assert result["detection_delay_mean"] == pytest.approx(2.0)
    assert result["recall_by_position"]["2-3"] == pytest.approx(1 / 3)


def test_burst_metrics_attack_classes_merge() -> None:
    # Consecutive flows of two attack classes form one burst, and any attack class is an alert.
    y_true = np.array([0, 1, 2, 2, 0])
    y_pred = np.array([0, 0, 0, 1, 0])

    result = burst_metrics(y_true, y_pred, normal_index=0)

    assert result["bursts"] == 1
    assert result["detection_delay_mean"] == pytest.approx(2.0)


def test_burst_metrics_no_bursts() -> None:
    result = burst_metrics(np.zeros(5, dtype=int), np.array([0, 1, 1, 0, 1]), normal_index=0)

    assert result["bursts"] == 0
    assert result["bursts_detected_share"] is None
    assert result["detection_delay_mean"] is None
    assert result["detection_delay_median"] is None
    assert result["false_alarm_episodes"] == 2
    assert result["recall_by_position"] == {"first": None, "2-3": None, "4+": None}


def test_burst_metrics_real_wustl_perfect(wustl_path: Path) -> None:
    labels = pd.read_csv(wustl_path, usecols=["Label"])["Label"].to_numpy()

    result = burst_metrics(labels, labels, normal_index=0)

    # The capture contains 84 attack bursts, and a perfect detector flags each at its first flow.
    assert result["bursts"] == 84
    assert result["bursts_detected_share"] == pytest.approx(1.0)
    assert result["detection_delay_mean"] == pytest.approx(0.0)
    assert result["false_alarm_episodes"] == 0


# ---------------------------------------------------------------------------
# mean_metrics
# ---------------------------------------------------------------------------


def test_mean_metrics_skips_none() -> None:
    runs: list[dict[str, Any]] = [
        {"f1": 0.5, "roc_auc": None, "fpr": 0.1},
        {"f1": 0.7, "roc_auc": 0.8, "fpr": 0.3},
        {"f1": 0.9, "roc_auc": 0.6},
    ]

    summary = mean_metrics(runs)

    assert summary["f1"] == pytest.approx(0.7)
    assert summary["roc_auc"] == pytest.approx(0.7)
    # The third fold has no fpr at all.
    assert summary["fpr"] == pytest.approx(0.2)
    assert summary["accuracy"] is None


def test_mean_metrics_all_none() -> None:
    summary = mean_metrics([{"roc_auc": None}, {"roc_auc": None}])

    assert summary["roc_auc"] is None


def test_mean_metrics_skips_nan() -> None:
    summary = mean_metrics([{"f1": float("nan")}, {"f1": 0.4}])

    assert summary["f1"] == pytest.approx(0.4)
