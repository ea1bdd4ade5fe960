"""Class balancing of training windows with SMOTE.

SMOTE (Chawla et al., "SMOTE: Synthetic Minority Over-sampling Technique",
JAIR 16, 2002) creates a minority sample on the segment between a sample and
one of its k nearest minority neighbours. Only training windows are ever
resampled: balancing before the split, or balancing test data, inflates every
metric.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np
from imblearn.over_sampling import SMOTE, RandomOverSampler

from common.exceptions import EmptyDataError

logger = logging.getLogger(__name__)


@dataclass
class ResamplingReport:
    """Method and class counts before and after :func:`resample_training`."""

    method: str
    k_neighbors: int | None
    counts_before: dict[int, int]
    counts_after: dict[int, int]
    random_oversampled: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        report = asdict(self)
        report["counts_before"] = {str(k): v for k, v in self.counts_before.items()}
        report["counts_after"] = {str(k): v for k, v in self.counts_after.items()}
        return report


def _counts(y: np.ndarray) -> dict[int, int]:
    classes, counts = np.unique(y, return_counts=True)
    return {int(c): int(n) for c, n in zip(classes, counts, strict=True)}


def _target_count(count: int, majority: int, max_ratio: float) -> int:
    """Return the size a class of ``count`` samples is oversampled to."""
    if max_ratio <= 0:
        return majority
    return max(count, min(majority, math.ceil(max_ratio * count)))


def resample_training(
    X: np.ndarray,
    y: np.ndarray,
    *,
    k_neighbors: int = 5,
    max_ratio: float = 0.0,
    seed: int = 42,
    source: str = "training data",
) -> tuple[np.ndarray, np.ndarray, ResamplingReport]:
    """Oversample every minority class of the training windows towards the majority count.

    Parameters
    ----------
    X : ndarray of shape (n_windows, W, n_features) or (n_samples, n_features)
        Training samples; windows are flattened for the neighbour search and
        reshaped afterwards.
    y : ndarray of shape (n_windows,)
        Class index of every sample.
    k_neighbors : int, default=5
        Upper bound of SMOTE's neighbour count. It is lowered to the size of
        the smallest minority class minus one, because SMOTE needs
        ``k_neighbors + 1`` samples of each class it oversamples.
    max_ratio : float, default=0.0
        When positive, a class of n samples grows to at most
        ``ceil(max_ratio * n)`` samples instead of the majority count. A
        hospital whose share of a class is a handful of flows would
        otherwise train on thousands of copies of those few flows, which
        drowns what it learns about its common classes; 0 balances fully.
    seed : int, default=42
        Random state of the samplers.
    source : str
        Name of the data for log lines, for example the site.

    Returns
    -------
    X_resampled : ndarray of shape (n_resampled, ...) with the trailing shape of ``X``
    y_resampled : ndarray of shape (n_resampled,)
    report : ResamplingReport

    Notes
    -----
    A class with a single sample has no neighbour, so it is duplicated by
    random oversampling instead. A split with a single class is returned
    unchanged with a warning, because there is nothing to balance against.
    """
    if len(y) == 0:
        raise EmptyDataError(f"{source}: no training samples to resample")
    counts = _counts(y)
    if len(counts) < 2:
        logger.warning(
            "resample: skipped SMOTE for %s because it contains a single class (%s, %d samples)",
            source,
            next(iter(counts)),
            len(y),
        )
        return X, y, ResamplingReport("none", None, counts, counts)

    if max_ratio < 0 or not np.isfinite(max_ratio):
        raise ValueError(f"max_ratio must be 0 (balance fully) or positive, got {max_ratio}")
    majority = max(counts.values())
    targets = {c: _target_count(n, majority, max_ratio) for c, n in counts.items()}
    minority = {c: n for c, n in counts.items() if targets[c] > n}
    if not minority:
        return X, y, ResamplingReport("none", None, counts, counts)

    trailing_shape = X.shape[1:]
    flat = X.reshape(len(X), -1)
    singletons = sorted(c for c, n in minority.items() if n == 1)
    smote_classes = {c: n for c, n in minority.items() if n >= 2}

    if singletons:
        logger.warning(
            "resample: classes %s of %s have a single sample; duplicating them with random "
            "oversampling because SMOTE needs at least two",
            singletons,
            source,
        )
        sampler = RandomOverSampler(
            sampling_strategy={c: targets[c] for c in singletons}, random_state=seed
        )
        flat, y = sampler.fit_resample(flat, y)

    k_used: int | None = None
    method = "random" if singletons else "smote"
    if smote_classes:
        k_used = min(k_neighbors, min(smote_classes.values()) - 1)
        if k_used < k_neighbors:
            logger.warning(
                "resample: lowered SMOTE k_neighbors from %d to %d for %s because its smallest "
                "minority class has %d samples",
                k_neighbors,
                k_used,
                source,
                min(smote_classes.values()),
            )
        smote = SMOTE(
            sampling_strategy={c: targets[c] for c in smote_classes},
            k_neighbors=k_used,
            random_state=seed,
        )
        flat, y = smote.fit_resample(flat, y)
        method = "smote+random" if singletons else "smote"

    X_resampled = np.asarray(flat, dtype=X.dtype).reshape((-1, *trailing_shape))
    y_resampled = np.asarray(y)
    report = ResamplingReport(method, k_used, counts, _counts(y_resampled), singletons)
    logger.info(
        "resample: %s on %s, %d -> %d samples, counts %s",
        method,
        source,
        sum(counts.values()),
        len(y_resampled),
        report.counts_after,
    )
    return X_resampled, y_resampled, report
