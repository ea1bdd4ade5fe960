"""Tests of SMOTE balancing of training windows in common.resampling."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from common.exceptions import EmptyDataError
from common.resampling import resample_training

LOGGER = "common.resampling"


def _windows(
    counts: dict[int, int], seed: int, trailing_shape: tuple[int, ...] = (4, 3)
) -> tuple[np.ndarray, np.ndarray]:
    """Return seeded float32 samples whose class ``c`` lies around ``c`` in every feature."""
    rng = np.random.default_rng(seed)
    X_parts, y_parts = [], []
    for c, n in counts.items():
        X_parts.append(c + rng.random((n, *trailing_shape)))
        y_parts.append(np.full(n, c, dtype=np.int64))
    return np.concatenate(X_parts).astype(np.float32), np.concatenate(y_parts)


def _count(y: np.ndarray, c: int) -> int:
    return int(np.sum(y == c))


def test_resample_training_smote_balances_windows() -> None:
    X, y = _windows({0: 30, 1: 10}, seed=0)

    X_resampled, y_resampled, report = resample_training(X, y, seed=42)

    assert X_resampled.shape == (60, 4, 3)
    assert X_resampled.dtype == np.float32
    assert y_resampled.shape == (60,)
    assert _count(y_resampled, 0) == 30
    assert _count(y_resampled, 1) == 30
    assert report.method == "smote"
    assert report.k_neighbors == 5
    assert report.counts_before == {0: 30, 1: 10}
    assert report.counts_after == {0: 30, 1: 30}
    assert report.random_oversampled == []
    # imbalanced-learn keeps the original samples first and appends the synthetic ones.
    assert np.array_equal(X_resampled[:40], X)


def test_resample_training_two_dimensional_input() -> None:
    X, y = _windows({0: 20, 1: 8}, seed=1, trailing_shape=(5,))

    X_resampled, y_resampled, _ = resample_training(X, y)

    assert X_resampled.shape == (40, 5)
    assert _count(y_resampled, 1) == 20


def test_resample_training_reproducible_with_seed() -> None:
    X, y = _windows({0: 25, 1: 6}, seed=2)

    first, _, _ = resample_training(X, y, seed=3)
    second, _, _ = resample_training(X, y, seed=3)
    other_seed, _, _ = resample_training(X, y, seed=4)

    assert np.array_equal(first, second)
    assert not np.array_equal(first, other_seed)


def test_resample_training_three_samples_lowers_k(caplog: pytest.LogCaptureFixture) -> None:
    X, y = _windows({0: 20, 1: 8, 2: 3}, seed=3)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        X_resampled, y_resampled, report = resample_training(X, y, source="site-b")

    # SMOTE needs k + 1 samples of a class, so 3 samples allow k = 2 at most.
    assert report.k_neighbors == 2
    assert report.method == "smote"
    assert report.counts_after == {0: 20, 1: 20, 2: 20}
    assert X_resampled.shape == (60, 4, 3)
    assert _count(y_resampled, 2) == 20
    assert "lowered SMOTE k_neighbors from 5 to 2 for site-b" in caplog.text
    assert "smallest minority class has 3 samples" in caplog.text


def test_resample_training_single_sample_random_oversampled(caplog: pytest.LogCaptureFixture) -> None:
    X, y = _windows({0: 20, 1: 9, 2: 1}, seed=4)
    single_sample = X[y == 2][0]

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        X_resampled, y_resampled, report = resample_training(X, y)

    assert report.method == "smote+random"
    assert report.random_oversampled == [2]
    assert report.k_neighbors == 5
    assert report.counts_after == {0: 20, 1: 20, 2: 20}
    # Random oversampling only duplicates: every sample of class 2 is the original one.
    for sample in X_resampled[y_resampled == 2]:
        assert np.array_equal(sample, single_sample)
    assert "classes [2] of training data have a single sample" in caplog.text


def test_resample_training_only_single_sample_minority() -> None:
    X, y = _windows({0: 12, 1: 1}, seed=5)

    _, y_resampled, report = resample_training(X, y)

    assert report.method == "random"
    assert report.k_neighbors is None
    assert report.counts_after == {0: 12, 1: 12}
    assert _count(y_resampled, 1) == 12


def test_resample_training_single_class_unchanged(caplog: pytest.LogCaptureFixture) -> None:
    X, y = _windows({1: 15}, seed=6)

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        X_resampled, y_resampled, report = resample_training(X, y, source="site-c")

    assert X_resampled is X
    assert y_resampled is y
    assert report.method == "none"
    assert report.counts_before == {1: 15}
    assert report.counts_after == {1: 15}
    assert "skipped SMOTE for site-c because it contains a single class (1, 15 samples)" in caplog.text


def test_resample_training_balanced_unchanged() -> None:
    X, y = _windows({0: 7, 1: 7}, seed=7)

    X_resampled, y_resampled, report = resample_training(X, y)

    assert X_resampled is X
    assert y_resampled is y
    assert report.method == "none"


@pytest.mark.parametrize(
    "trailing_shape", [pytest.param((4, 3), id="windows"), pytest.param((6,), id="flows")]
)
def test_resample_training_empty_input(trailing_shape: tuple[int, ...]) -> None:
    X = np.empty((0, *trailing_shape), dtype=np.float32)
    y = np.empty(0, dtype=np.int64)

    with pytest.raises(EmptyDataError, match=r"^site-a: no training samples to resample"):
        resample_training(X, y, source="site-a")


def test_resample_training_synthetic_inside_minority_box() -> None:
    X, y = _windows({0: 40, 1: 6}, seed=8)
    minority = X[y == 1]
    lower = minority.min(axis=0)
    upper = minority.max(axis=0)

    X_resampled, y_resampled, _ = resample_training(X, y, seed=9)

    resampled_minority = X_resampled[y_resampled == 1]
    assert len(resampled_minority) == 40
    # SMOTE interpolates between two minority samples, so every value stays inside the
    # per-position range of the minority class.
    assert np.all(resampled_minority >= lower)
    assert np.all(resampled_minority <= upper)
    # And the new samples are not just copies of the originals.
    assert len(np.unique(resampled_minority.reshape(40, -1), axis=0)) > len(minority)


def test_resampling_report_to_dict_string_keys() -> None:
    X, y = _windows({0: 10, 1: 4}, seed=10)

    _, _, report = resample_training(X, y)
    summary = report.to_dict()

    assert summary["counts_before"] == {"0": 10, "1": 4}
    assert summary["counts_after"] == {"0": 10, "1": 10}
    assert summary["method"] == "smote"
    assert summary["k_neighbors"] == 3


def test_resample_training_max_ratio_caps_growth() -> None:
    X, y = _windows({0: 100, 1: 10, 2: 40, 3: 1}, seed=5)

    _, y_resampled, report = resample_training(X, y, max_ratio=3.0)

    # Class 1: 3 * 10 = 30 < 100; class 2: 3 * 40 = 120 is capped at the majority 100;
    # class 3 (one sample, random oversampling): 3 * 1 = 3.
    assert report.counts_after == {0: 100, 1: 30, 2: 100, 3: 3}
    assert [_count(y_resampled, c) for c in range(4)] == [100, 30, 100, 3]
    assert report.method == "smote+random"


def test_resample_training_max_ratio_rounds_up() -> None:
    X, y = _windows({0: 50, 1: 7}, seed=6)

    _, _, report = resample_training(X, y, max_ratio=1.5)

    # ceil(1.5 * 7) = 11.
    assert report.counts_after == {0: 50, 1: 11}


def test_resample_training_max_ratio_one_leaves_data_unchanged() -> None:
    X, y = _windows({0: 20, 1: 5}, seed=7)

    X_resampled, y_resampled, report = resample_training(X, y, max_ratio=1.0)

    assert report.method == "none"
    assert np.array_equal(X_resampled, X)
    assert np.array_equal(y_resampled, y)


def test_resample_training_negative_max_ratio_rejected() -> None:
    X, y = _windows({0: 20, 1: 5}, seed=8)

    with pytest.raises(ValueError, match=r"max_ratio must be 0 \(balance fully\) or positive, got -1.0"):
        resample_training(X, y, max_ratio=-1.0)
