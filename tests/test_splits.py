"""Tests of the time-block, fold and stratified splits in common.splits."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.config import DatasetConfig
from common.exceptions import ConfigError, EmptyDataError
from common.splits import (
    Split,
    contiguous_folds,
    make_splits,
    stratified_folds,
    stratified_split,
    time_block_split,
)

PARTS = ("train", "validation", "test")


def _is_contiguous(run: np.ndarray) -> bool:
    return bool(np.all(np.diff(run) == 1))


def _seeded_labels(counts: dict[int, int], seed: int) -> np.ndarray:
    labels = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in counts.items()])
    return np.random.default_rng(seed).permutation(labels)


def _assert_partition(split: Split, n_rows: int) -> None:
    """Assert that the three parts are disjoint and together contain every row once."""
    rows = np.concatenate([split.rows(part) for part in PARTS])
    assert len(rows) == n_rows
    assert np.array_equal(np.sort(rows), np.arange(n_rows))


# ---------------------------------------------------------------------------
# time_block_split
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_rows", "fractions", "expected_sizes"),
    [
        pytest.param(100, (0.7, 0.1, 0.2), (70, 10, 20), id="100-rows"),
        pytest.param(10, (0.6, 0.2, 0.2), (6, 2, 2), id="10-rows"),
        # 7 * 0.7 = 4.9 rounds to 5 and 7 * 0.8 = 5.6 rounds to 6.
        pytest.param(7, (0.7, 0.1, 0.2), (5, 1, 1), id="7-rows-rounding"),
        # Fractions that do not sum to 1 are normalised, here to 3/6, 1/6 and 2/6 of 12 rows.
        pytest.param(12, (3.0, 1.0, 2.0), (6, 2, 4), id="unnormalised-fractions"),
    ],
)
def test_time_block_split_contiguous_blocks_in_order(
    n_rows: int, fractions: tuple[float, float, float], expected_sizes: tuple[int, int, int]
) -> None:
    split = time_block_split(n_rows, *fractions)
    n_train, n_validation, n_test = expected_sizes

    assert split.name == "holdout"
    assert len(split.train) == 1
    assert len(split.validation) == 1
    assert len(split.test) == 1
    assert np.array_equal(split.rows("train"), np.arange(0, n_train))
    assert np.array_equal(split.rows("validation"), np.arange(n_train, n_train + n_validation))
    assert np.array_equal(split.rows("test"), np.arange(n_train + n_validation, n_rows))
    assert len(split.rows("test")) == n_test
    for part in PARTS:
        assert _is_contiguous(split.rows(part)), part
        assert split.rows(part).dtype == np.int64, part
    assert split.rows("train").max() < split.rows("validation").min()
    assert split.rows("validation").max() < split.rows("test").min()
    _assert_partition(split, n_rows)


def test_time_block_split_empty_validation_dropped() -> None:
    # 3 * 0.7 = 2.1 and 3 * 0.8 = 2.4 both round to 2, so no row validates.
    split = time_block_split(3, 0.7, 0.1, 0.2)

    assert split.validation == ()
    assert len(split.rows("validation")) == 0
    assert np.array_equal(split.rows("train"), [0, 1])
    assert np.array_equal(split.rows("test"), [2])


@pytest.mark.parametrize("n_rows", [0, 1, 2], ids=["0-rows", "1-row", "2-rows"])
def test_time_block_split_too_few_rows(n_rows: int) -> None:
    message = rf"^{n_rows} rows are too few .*0\.7/0\.1/0\.2; supply more rows"
    with pytest.raises(EmptyDataError, match=message):
        time_block_split(n_rows, 0.7, 0.1, 0.2)


# ---------------------------------------------------------------------------
# contiguous_folds
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_rows", "n_folds"),
    [
        pytest.param(10, 5, id="10-rows-5-folds"),
        pytest.param(11, 5, id="11-rows-5-folds"),
        pytest.param(103, 5, id="103-rows-5-folds"),
        pytest.param(1000, 5, id="1000-rows-5-folds"),
        pytest.param(9, 2, id="9-rows-2-folds"),
    ],
)
def test_contiguous_folds_test_blocks_partition_rows(n_rows: int, n_folds: int) -> None:
    folds = contiguous_folds(n_rows, n_folds, validation_fraction=0.1)

    assert [fold.name for fold in folds] == [f"fold-{i}" for i in range(n_folds)]
    for fold in folds:
        assert len(fold.test) == 1, fold.name
        assert _is_contiguous(fold.rows("test")), fold.name
        assert len(fold.rows("test")) >= 2, fold.name

    # In fold order the test blocks follow each other and together cover every row once.
    all_test_rows = np.concatenate([fold.rows("test") for fold in folds])
    assert np.array_equal(all_test_rows, np.arange(n_rows))
    sizes = [len(fold.rows("test")) for fold in folds]
    assert max(sizes) - min(sizes) <= 1


def test_contiguous_folds_literal_ten_rows() -> None:
    folds = contiguous_folds(10, 5, validation_fraction=0.0)

    expected_tests = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert [fold.rows("test").tolist() for fold in folds] == expected_tests
    # Fold 2 trains on the rows before and after its test block, as two runs.
    assert [run.tolist() for run in folds[2].train] == [[0, 1, 2, 3], [6, 7, 8, 9]]
    assert folds[2].validation == ()
    # The first and last folds have a single training run.
    assert [run.tolist() for run in folds[0].train] == [list(range(2, 10))]
    assert [run.tolist() for run in folds[4].train] == [list(range(0, 8))]


@pytest.mark.parametrize(
    ("n_rows", "validation_fraction"),
    [
        pytest.param(11, 0.1, id="11-rows"),
        pytest.param(200, 0.1, id="200-rows"),
        pytest.param(1003, 0.25, id="1003-rows-quarter-validation"),
    ],
)
def test_contiguous_folds_train_validation_outside_test(n_rows: int, validation_fraction: float) -> None:
    for fold in contiguous_folds(n_rows, 5, validation_fraction):
        test_rows = fold.rows("test")
        test_start, test_stop = int(test_rows[0]), int(test_rows[-1]) + 1

        for run in fold.train + fold.validation:
            assert len(run) > 0, fold.name
            assert _is_contiguous(run), fold.name
            # A run lies entirely before or entirely after the test block.
            assert run[-1] < test_start or run[0] >= test_stop, fold.name

        # Each validation run is the tail of a training run, so it starts where that run stops.
        train_stops = {int(run[-1]) + 1 for run in fold.train}
        for run in fold.validation:
            assert int(run[0]) in train_stops, fold.name

        _assert_partition(fold, n_rows)
        expected_validation = validation_fraction * n_rows
        # Each of the at most two training runs rounds its share separately.
        assert abs(len(fold.rows("validation")) - expected_validation) <= 1.0, fold.name


def test_contiguous_folds_too_few_rows() -> None:
    with pytest.raises(EmptyDataError, match=r"^9 rows are too few for 5 contiguous folds"):
        contiguous_folds(9, 5, validation_fraction=0.1)


@pytest.mark.parametrize("n_folds", [1, 0, -3], ids=["1-fold", "0-folds", "negative"])
def test_contiguous_folds_invalid_fold_count(n_folds: int) -> None:
    with pytest.raises(ConfigError, match=rf"n_folds must be at least 2, got {n_folds}"):
        contiguous_folds(100, n_folds, validation_fraction=0.1)


# ---------------------------------------------------------------------------
# stratified_split
# ---------------------------------------------------------------------------


def test_stratified_split_keeps_class_proportions() -> None:
    counts = {0: 500, 1: 300, 2: 150, 3: 50}
    labels = _seeded_labels(counts, seed=1)

    split = stratified_split(labels, 0.7, 0.1, 0.2, seed=42)

    _assert_partition(split, len(labels))
    for part in PARTS:
        rows = split.rows(part)
        assert np.array_equal(rows, np.sort(rows)), part
    assert len(split.rows("test")) == 200
    assert len(split.rows("validation")) == 100
    for c, n in counts.items():
        n_test = int(np.sum(labels[split.rows("test")] == c))
        n_validation = int(np.sum(labels[split.rows("validation")] == c))
        # The test part takes 20% of each class, and validation takes 1/8 of the remaining 80%.
        assert abs(n_test - 0.2 * n) <= 1, c
        assert abs(n_validation - 0.1 * n) <= 2, c


def test_stratified_split_reproducible_with_seed() -> None:
    labels = _seeded_labels({0: 80, 1: 20}, seed=2)

    first = stratified_split(labels, 0.7, 0.1, 0.2, seed=7)
    second = stratified_split(labels, 0.7, 0.1, 0.2, seed=7)
    other_seed = stratified_split(labels, 0.7, 0.1, 0.2, seed=8)

    for part in PARTS:
        assert np.array_equal(first.rows(part), second.rows(part)), part
    assert not np.array_equal(first.rows("test"), other_seed.rows("test"))


def test_stratified_split_single_row_class() -> None:
    # Class 3 has one row and cannot be stratified, but the other classes still are.
    labels = _seeded_labels({0: 60, 1: 30, 2: 9, 3: 1}, seed=3)

    split = stratified_split(labels, 0.7, 0.1, 0.2, seed=42)

    _assert_partition(split, len(labels))
    for c, n in {0: 60, 1: 30, 2: 9}.items():
        n_test = int(np.sum(labels[split.rows("test")] == c))
        assert abs(n_test - 0.2 * n) <= 1, c


def test_stratified_split_several_single_row_classes() -> None:
    labels = _seeded_labels({0: 50, 1: 30, 2: 1, 3: 1, 4: 1}, seed=4)

    split = stratified_split(labels, 0.7, 0.1, 0.2, seed=42)

    _assert_partition(split, len(labels))
    n_test_class_1 = int(np.sum(labels[split.rows("test")] == 1))
    assert abs(n_test_class_1 - 6) <= 1


def test_stratified_split_without_validation() -> None:
    labels = _seeded_labels({0: 40, 1: 10}, seed=5)

    split = stratified_split(labels, 0.8, 0.0, 0.2, seed=42)

    assert split.validation == ()
    assert len(split.rows("test")) == 10
    assert int(np.sum(labels[split.rows("test")] == 1)) == 2
    _assert_partition(split, len(labels))


def test_stratified_split_tiny_part_unstratified(caplog: pytest.LogCaptureFixture) -> None:
    # One test row cannot hold both classes, so the split falls back to a plain shuffle.
    labels = np.array([0, 0, 1, 1, 1])

    with caplog.at_level(logging.WARNING, logger="common.splits"):
        split = stratified_split(labels, 0.7, 0.1, 0.2, seed=1)

    _assert_partition(split, len(labels))
    assert len(split.rows("test")) == 1
    assert "without stratifying" in caplog.text


@pytest.mark.parametrize(
    "labels",
    [
        pytest.param(np.array([], dtype=np.int64), id="0-rows"),
        pytest.param(np.array([0]), id="1-row"),
        pytest.param(np.array([0, 1]), id="2-rows"),
    ],
)
def test_stratified_split_too_few_rows(labels: np.ndarray) -> None:
    message = rf"^{len(labels)} rows are too few for a stratified train/validation/test split"
    with pytest.raises(EmptyDataError, match=message):
        stratified_split(labels, 0.7, 0.1, 0.2, seed=42)


# ---------------------------------------------------------------------------
# stratified_folds
# ---------------------------------------------------------------------------


def test_stratified_folds_every_row_tested_once() -> None:
    counts = {0: 500, 1: 250, 2: 50}
    labels = _seeded_labels(counts, seed=11)

    folds = stratified_folds(labels, 5, 0.1, seed=42)

    assert [fold.name for fold in folds] == [f"fold-{i}" for i in range(5)]
    tested = np.concatenate([fold.rows("test") for fold in folds])
    assert np.array_equal(np.sort(tested), np.arange(len(labels)))
    for fold in folds:
        _assert_partition(fold, len(labels))
        # Validation contains 10% of all 800 rows, and each test part a fifth of each class.
        assert len(fold.rows("validation")) == 80
        for c, n in counts.items():
            assert int(np.sum(labels[fold.rows("test")] == c)) == n // 5, (fold.name, c)
            assert abs(int(np.sum(labels[fold.rows("validation")] == c)) - 0.1 * n) <= 1, (fold.name, c)


def test_stratified_folds_reproducible_with_seed() -> None:
    labels = _seeded_labels({0: 60, 1: 40}, seed=12)

    first = stratified_folds(labels, 3, 0.1, seed=7)
    second = stratified_folds(labels, 3, 0.1, seed=7)
    other = stratified_folds(labels, 3, 0.1, seed=8)

    for a, b in zip(first, second, strict=True):
        for part in PARTS:
            assert np.array_equal(a.rows(part), b.rows(part)), part
    assert not np.array_equal(first[0].rows("test"), other[0].rows("test"))


@pytest.mark.parametrize(
    "counts",
    [
        pytest.param({0: 90, 1: 30, 2: 3}, id="one-class-below-fold-count"),
        pytest.param({0: 90, 1: 30, 2: 3, 3: 2, 4: 1}, id="pooled-rare-classes"),
    ],
)
def test_stratified_folds_rare_classes_are_pooled_without_warnings(counts: dict[int, int]) -> None:
    labels = _seeded_labels(counts, seed=13)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folds = stratified_folds(labels, 5, 0.1, seed=42)

    for fold in folds:
        _assert_partition(fold, len(labels))
        assert abs(int(np.sum(labels[fold.rows("test")] == 1)) - 6) <= 1, fold.name
    rare = np.flatnonzero(labels >= 2)
    tested = np.concatenate([fold.rows("test") for fold in folds])
    assert np.isin(rare, tested).all()


def test_stratified_folds_without_validation() -> None:
    labels = _seeded_labels({0: 40, 1: 10}, seed=14)

    folds = stratified_folds(labels, 5, 0.0, seed=42)

    for fold in folds:
        assert fold.validation == ()
        assert len(fold.rows("train")) == 40
        assert int(np.sum(labels[fold.rows("test")] == 1)) == 2


def test_stratified_folds_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="n_folds must be at least 2"):
        stratified_folds(np.zeros(10, dtype=np.int64), 1, 0.1, seed=1)
    with pytest.raises(EmptyDataError, match="9 rows are too few for 5 stratified folds"):
        stratified_folds(np.zeros(9, dtype=np.int64), 5, 0.1, seed=1)


# ---------------------------------------------------------------------------
# make_splits
# ---------------------------------------------------------------------------


def test_make_splits_time_blocks_folds(wustl_config: DatasetConfig) -> None:
    labels = np.zeros(100, dtype=np.int64)

    folds = make_splits(wustl_config, labels, folds=True)
    holdout = make_splits(wustl_config, labels, folds=False)

    assert len(folds) == wustl_config.split.folds
    assert len(holdout) == 1
    assert holdout[0].name == "holdout"
    assert np.array_equal(holdout[0].rows("train"), np.arange(70))
    assert np.array_equal(holdout[0].rows("test"), np.arange(80, 100))


def test_make_splits_stratified_folds_and_holdout(nfton_config: DatasetConfig) -> None:
    labels = _seeded_labels({0: 80, 1: 20}, seed=6)

    folds = make_splits(nfton_config, labels, folds=True)
    holdout = make_splits(nfton_config, labels, folds=False)

    assert [fold.name for fold in folds] == [f"fold-{i}" for i in range(nfton_config.split.folds)]
    assert len(holdout) == 1
    assert holdout[0].name == "holdout"
    assert int(np.sum(labels[holdout[0].rows("test")] == 1)) == 4


# ---------------------------------------------------------------------------
# Real captures
# ---------------------------------------------------------------------------


def test_make_splits_real_wustl_folds(wustl_config: DatasetConfig, wustl_path: Path) -> None:
    labels = pd.read_csv(wustl_path, usecols=["Label"])["Label"].to_numpy()

    folds = make_splits(wustl_config, labels, folds=True)

    assert len(folds) == 5
    all_test_rows = np.concatenate([fold.rows("test") for fold in folds])
    assert np.array_equal(all_test_rows, np.arange(len(labels)))
    for fold in folds:
        _assert_partition(fold, len(labels))
        test_rows = fold.rows("test")
        for run in fold.train + fold.validation:
            assert _is_contiguous(run), fold.name
            assert run[-1] < test_rows[0] or run[0] > test_rows[-1], fold.name


def test_stratified_folds_real_nfton_test_every_flow(nfton_config: DatasetConfig, nfton_path: Path) -> None:
    attack = pd.read_csv(nfton_path, usecols=["Attack"])["Attack"].to_numpy()
    labels = np.unique(attack, return_inverse=True)[1]

    folds = make_splits(nfton_config, labels, folds=True)

    tested = np.concatenate([fold.rows("test") for fold in folds])
    assert np.array_equal(np.sort(tested), np.arange(len(labels)))
    counts = np.bincount(labels)
    for fold in folds:
        _assert_partition(fold, len(labels))
        # Every class, down to ransomware with 7 flows, has a test flow in every fold.
        test_counts = np.bincount(labels[fold.rows("test")], minlength=len(counts))
        assert np.all(np.abs(test_counts - counts / len(folds)) <= 1), fold.name


def test_stratified_split_real_nfton_proportions(nfton_config: DatasetConfig, nfton_path: Path) -> None:
    attack = pd.read_csv(nfton_path, usecols=["Attack"])["Attack"].to_numpy()
    labels = np.unique(attack, return_inverse=True)[1]

    split = make_splits(nfton_config, labels, folds=False)[0]

    _assert_partition(split, len(labels))
    # Ten classes, the rarest (ransomware) with 7 rows.
    for c, n in enumerate(np.bincount(labels)):
        n_test = int(np.sum(labels[split.rows("test")] == c))
        assert abs(n_test - 0.2 * n) <= 1, c
