"""Training, validation and test splits that respect capture order.

Attacks in hospital captures arrive in bursts, so a random row split puts the
neighbours of every test flow into training. Captured traffic is therefore
split into contiguous time blocks. Each part of a split is a tuple of *runs*:
arrays of consecutive row indices, inside which windows of flows may be built.
A window never crosses from one run into the next, so it never straddles a
split boundary.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from common.config import DatasetConfig
from common.exceptions import ConfigError, EmptyDataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """Row indices of one train/validation/test split.

    Attributes
    ----------
    name : str
        ``"holdout"`` or ``"fold-<i>"``.
    train, validation, test : tuple of ndarray of int64
        Runs of row indices. In a time-block split every run is a range of
        consecutive rows in capture order.
    """

    name: str
    train: tuple[np.ndarray, ...]
    validation: tuple[np.ndarray, ...]
    test: tuple[np.ndarray, ...]

    def rows(self, part: str) -> np.ndarray:
        """Return all row indices of ``part`` (``"train"``, ``"validation"`` or ``"test"``)."""
        runs: tuple[np.ndarray, ...] = getattr(self, part)
        if not runs:
            return np.empty(0, dtype=np.int64)
        return np.concatenate(runs)


def _range(start: int, stop: int) -> np.ndarray:
    return np.arange(start, stop, dtype=np.int64)


def _nonempty(*runs: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(run for run in runs if len(run))


def time_block_split(
    n_rows: int, train_fraction: float, validation_fraction: float, test_fraction: float
) -> Split:
    """Split ``n_rows`` rows in capture order into three contiguous blocks.

    The first ``train_fraction`` of the rows train, the next
    ``validation_fraction`` validate and the rest test, so the model is always
    tested on traffic captured after the traffic it learned from.

    Raises
    ------
    EmptyDataError
        If the training or test block would be empty.
    """
    total = train_fraction + validation_fraction + test_fraction
    train_end = round(n_rows * train_fraction / total)
    validation_end = round(n_rows * (train_fraction + validation_fraction) / total)
    if train_end == 0 or validation_end >= n_rows:
        raise EmptyDataError(
            f"{n_rows} rows are too few for a train/validation/test split with fractions "
            f"{train_fraction}/{validation_fraction}/{test_fraction}; supply more rows"
        )
    return Split(
        name="holdout",
        train=(_range(0, train_end),),
        validation=_nonempty(_range(train_end, validation_end)),
        test=(_range(validation_end, n_rows),),
    )


def contiguous_folds(n_rows: int, n_folds: int, validation_fraction: float) -> list[Split]:
    """Split rows into ``n_folds`` contiguous blocks, each the test block of one fold.

    In fold ``i`` block ``i`` tests. The rows before it and the rows after it
    form two training runs; the last ``validation_fraction`` (of all rows,
    shared in proportion to the runs' lengths) of each training run validates.

    Raises
    ------
    ConfigError
        If ``n_folds`` is below 2.
    EmptyDataError
        If a block would hold fewer than 2 rows.
    """
    if n_folds < 2:
        raise ConfigError(f"n_folds must be at least 2, got {n_folds}")
    if n_rows < 2 * n_folds:
        raise EmptyDataError(f"{n_rows} rows are too few for {n_folds} contiguous folds")
    bounds = np.linspace(0, n_rows, n_folds + 1).round().astype(int)
    folds = []
    for index in range(n_folds):
        test_start, test_stop = int(bounds[index]), int(bounds[index + 1])
        outside = [(0, test_start), (test_stop, n_rows)]
        n_outside = n_rows - (test_stop - test_start)
        train_runs, validation_runs = [], []
        for start, stop in outside:
            length = stop - start
            if length == 0:
                continue
            n_validation = round(validation_fraction * n_rows * length / n_outside)
            n_validation = min(n_validation, length - 1)
            train_runs.append(_range(start, stop - n_validation))
            validation_runs.append(_range(stop - n_validation, stop))
        folds.append(
            Split(
                name=f"fold-{index}",
                train=_nonempty(*train_runs),
                validation=_nonempty(*validation_runs),
                test=(_range(test_start, test_stop),),
            )
        )
    return folds


def _stratify_groups(labels: np.ndarray, n_train: int, n_test: int) -> np.ndarray | None:
    """Return the group of every row to stratify on, or ``None`` to shuffle without stratifying.

    A class with a single row cannot be stratified, so all such rows form one
    shared group (or join the largest class if only one such row exists), and
    the other classes keep their proportions.
    """
    _, groups, counts = np.unique(labels, return_inverse=True, return_counts=True)
    single = counts[groups] < 2
    if single.sum() == 1:
        groups = np.where(single, int(np.argmax(counts)), groups)
    elif single.any():
        groups = np.where(single, -1, groups)
    n_groups = len(np.unique(groups))
    # scikit-learn needs at least one row of every group on each side.
    if min(n_train, n_test) < n_groups:
        logger.warning(
            "split: shuffled %d rows without stratifying because %d training and %d test rows "
            "cannot hold all %d classes",
            len(labels),
            n_train,
            n_test,
            n_groups,
        )
        return None
    return groups


def _part_size(share: float, n_rows: int) -> int:
    # Rounded up like scikit-learn does, after rounding away float error so
    # that 0.1 / (0.7 + 0.1) of 800 rows is 100 rows, not 101.
    return math.ceil(round(share * n_rows, 9))


def _shuffle_split(
    indices: np.ndarray, labels: np.ndarray, test_share: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    n_test = _part_size(test_share, len(indices))
    groups = _stratify_groups(labels, len(indices) - n_test, n_test)
    rest, test = train_test_split(indices, test_size=n_test, random_state=seed, stratify=groups)
    return rest, test


def stratified_split(
    labels: np.ndarray,
    train_fraction: float,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
) -> Split:
    """Shuffle and split rows stratified by class, for data without capture order.

    Each part is a single run of sorted row indices; only windows of one flow
    (W = 1) are meaningful on such a split. Classes with a single row are
    pooled into one group, which is shuffled without regard to class. When a
    part is too small to hold every class, that part is split without
    stratifying and a warning is logged.

    Raises
    ------
    EmptyDataError
        If the training or test part would be empty.
    """
    labels = np.asarray(labels)
    n_rows = len(labels)
    indices = np.arange(n_rows, dtype=np.int64)
    total = train_fraction + validation_fraction + test_fraction
    test_share = test_fraction / total
    validation_share = validation_fraction / (train_fraction + validation_fraction)
    n_test = _part_size(test_share, n_rows)
    n_validation = _part_size(validation_share, n_rows - n_test) if validation_fraction > 0 else 0
    if n_test < 1 or n_rows - n_test - n_validation < 1:
        raise EmptyDataError(
            f"{n_rows} rows are too few for a stratified train/validation/test split with fractions "
            f"{train_fraction}/{validation_fraction}/{test_fraction}; supply more rows"
        )

    rest, test = _shuffle_split(indices, labels, test_share, seed)
    validation = np.empty(0, dtype=np.int64)
    if validation_fraction > 0:
        rest, validation = _shuffle_split(rest, labels[rest], validation_share, seed)
    return Split(
        name="holdout",
        train=(np.sort(rest),),
        validation=_nonempty(np.sort(validation)),
        test=(np.sort(test),),
    )


def _fold_groups(labels: np.ndarray, n_folds: int) -> np.ndarray:
    """Return the group of every row for stratified folds.

    Classes with fewer rows than folds are pooled into one group. When that
    group is still smaller than the fold count, it joins the largest class.
    """
    _, groups, counts = np.unique(labels, return_inverse=True, return_counts=True)
    small = counts[groups] < n_folds
    if small.any():
        pooled = -1 if small.sum() >= n_folds else int(np.argmax(counts))
        groups = np.where(small, pooled, groups)
    return groups


def stratified_folds(labels: np.ndarray, n_folds: int, validation_fraction: float, seed: int) -> list[Split]:
    """Shuffle rows into ``n_folds`` stratified folds, each the test part of one split.

    The data-without-capture-order counterpart of :func:`contiguous_folds`:
    every row is tested exactly once, each test part keeps the class
    proportions, and ``validation_fraction`` of all rows is drawn, stratified,
    from each fold's remaining rows. Classes with fewer rows than folds are
    pooled and spread without regard to class.

    Raises
    ------
    ConfigError
        If ``n_folds`` is below 2.
    EmptyDataError
        If there are fewer rows than folds.
    """
    if n_folds < 2:
        raise ConfigError(f"n_folds must be at least 2, got {n_folds}")
    labels = np.asarray(labels)
    n_rows = len(labels)
    if n_rows < 2 * n_folds:
        raise EmptyDataError(f"{n_rows} rows are too few for {n_folds} stratified folds")
    groups = _fold_groups(labels, n_folds)
    indices = np.arange(n_rows, dtype=np.int64)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = []
    for index, (rest, test) in enumerate(splitter.split(indices, groups)):
        train = indices[rest]
        validation = np.empty(0, dtype=np.int64)
        if validation_fraction > 0:
            share = min(validation_fraction * n_rows / len(train), 0.5)
            train, validation = _shuffle_split(train, labels[train], share, seed)
        folds.append(
            Split(
                name=f"fold-{index}",
                train=(np.sort(train),),
                validation=_nonempty(np.sort(validation)),
                test=(indices[np.sort(test)],),
            )
        )
    return folds


def make_splits(config: DatasetConfig, labels: np.ndarray, folds: bool) -> list[Split]:
    """Build the splits a dataset configuration asks for.

    Parameters
    ----------
    config : DatasetConfig
        Supplies the fractions, the fold count, the seed and whether to use
        time blocks (``split.stratified = false``) or a stratified shuffle.
    labels : ndarray of shape (n_rows,)
        Class index of every row in capture order.
    folds : bool
        ``True`` for ``config.split.folds`` folds (contiguous, or stratified
        for data without capture order), ``False`` for a single holdout split.
    """
    settings = config.split
    n_rows = len(labels)
    if settings.stratified and folds:
        return stratified_folds(labels, settings.folds, settings.validation_fraction, settings.seed)
    if settings.stratified:
        return [
            stratified_split(
                labels,
                settings.train_fraction,
                settings.validation_fraction,
                settings.test_fraction,
                settings.seed,
            )
        ]
    if folds:
        return contiguous_folds(n_rows, settings.folds, settings.validation_fraction)
    return [
        time_block_split(
            n_rows, settings.train_fraction, settings.validation_fraction, settings.test_fraction
        )
    ]
