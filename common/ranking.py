"""Feature ranking by mutual information, computed per site and merged on the server.

Each site ranks the transformed input columns of its own training rows
against the label. The server averages the scores weighted by each site's
row count, so the federation can agree on the top-k columns without any
site revealing rows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.feature_selection import mutual_info_classif

from common.exceptions import EmptyDataError, PreprocessingError

logger = logging.getLogger(__name__)

#: Version of the JSON layout written by :meth:`FeatureRanking.to_dict`.
RANKING_FORMAT_VERSION = 1

#: Neighbours used by the k-nearest-neighbour mutual-information estimate of
#: continuous columns (scikit-learn's default).
MI_NEIGHBORS = 3


@dataclass
class FeatureRanking:
    """Mutual information of each input column with the label.

    Attributes
    ----------
    scores : dict of str to float
        Column name to its mutual information with the label, in nats (>= 0).
    n_rows : int
        Rows the scores describe; the weight of this ranking in
        :func:`merge_rankings`.
    """

    scores: dict[str, float]
    n_rows: int

    def ranked(self) -> list[tuple[str, float]]:
        """Return ``(column, score)`` pairs by descending score, ties broken by column name."""
        return sorted(self.scores.items(), key=lambda item: (-item[1], item[0]))

    def top(self, k: int) -> tuple[str, ...]:
        """Return the names of the ``k`` highest-ranked columns, or all of them if ``k`` exceeds their number.

        Raises
        ------
        PreprocessingError
            If ``k`` is less than 1.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise PreprocessingError(f"feature ranking: k must be an integer >= 1, got {k!r}")
        return tuple(name for name, _ in self.ranked()[:k])

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict that :meth:`from_dict` reads back."""
        return {
            "format_version": RANKING_FORMAT_VERSION,
            "scores": {name: float(score) for name, score in self.scores.items()},
            "n_rows": int(self.n_rows),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureRanking:
        """Rebuild a ranking written by :meth:`to_dict`.

        Raises
        ------
        PreprocessingError
            If the format version is wrong, a key is missing or a value is
            not a finite number (scores) or a non-negative integer (n_rows).
        """
        if not isinstance(data, Mapping):
            raise PreprocessingError(f"feature ranking: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if version != RANKING_FORMAT_VERSION:
            raise PreprocessingError(
                f"feature ranking: format_version is {version!r}, but this code reads version "
                f"{RANKING_FORMAT_VERSION}; recompute it with the same release of the pipeline"
            )
        for key in ("scores", "n_rows"):
            if key not in data:
                raise PreprocessingError(f"feature ranking: key {key!r} is missing")
        scores = data["scores"]
        if not isinstance(scores, Mapping) or not all(_is_finite_number(value) for value in scores.values()):
            raise PreprocessingError(
                f"feature ranking: key 'scores' must map column names to finite numbers, got {scores!r}"
            )
        n_rows = data["n_rows"]
        if isinstance(n_rows, bool) or not isinstance(n_rows, int) or n_rows < 0:
            raise PreprocessingError(f"feature ranking: key 'n_rows' must be an integer >= 0, got {n_rows!r}")
        return cls(scores={str(name): float(value) for name, value in scores.items()}, n_rows=n_rows)


def _is_finite_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _stratified_sample(y: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Pick about ``max_rows`` row indices, keeping each class's share and at least one row per class.

    Returns
    -------
    ndarray of shape (n_picked,), int
        Sorted row indices; ``n_picked`` may exceed ``max_rows`` by the
        number of classes whose share rounds to zero.
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    quotas = counts * (max_rows / len(y))
    sizes = np.floor(quotas).astype(np.int64)
    # Hand the rows lost to rounding down to the classes with the largest remainders.
    leftover = max_rows - int(sizes.sum())
    if leftover > 0:
        sizes[np.argsort(-(quotas - sizes), kind="stable")[:leftover]] += 1
    sizes = np.clip(sizes, 1, counts)
    picked = [
        rng.choice(np.flatnonzero(y == label), size=int(size), replace=False)
        for label, size in zip(classes, sizes, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def rank_features(
    X: np.ndarray,
    y: np.ndarray,
    feature_names: Sequence[str],
    *,
    seed: int = 42,
    max_rows: int = 20000,
) -> FeatureRanking:
    """Score every input column by its mutual information with the label.

    Continuous columns use scikit-learn's k-nearest-neighbour estimate;
    one-hot columns (names containing ``"="``) are treated as discrete.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features)
        Transformed inputs of one site (output of ``Preprocessor.transform``).
    y : ndarray of shape (n_rows,)
        Class index of every row.
    feature_names : sequence of str
        Name of each column of ``X``.
    seed : int
        Seed of the subsample and of the estimator's jitter.
    max_rows : int
        Larger inputs are subsampled, stratified by class, to about this many
        rows, because the k-nearest-neighbour estimate takes roughly O(n log n) time per column.

    Returns
    -------
    FeatureRanking
        Scores in nats; ``n_rows`` is the number of rows of ``X`` before
        subsampling, so that merging weights sites by their size.

    Raises
    ------
    EmptyDataError
        If ``X`` has no rows or no columns.
    PreprocessingError
        If shapes disagree, ``X`` contains NaN or infinities, or ``max_rows`` < 1.
    """
    X = np.asarray(X)
    y = np.asarray(y).ravel()
    names = [str(name) for name in feature_names]
    if X.ndim != 2:
        raise PreprocessingError(f"feature ranking: X must be 2-D (rows, features), got shape {X.shape}")
    n_rows, n_features = X.shape
    if n_rows == 0 or n_features == 0:
        raise EmptyDataError(
            f"feature ranking: no data to rank (X has shape {X.shape}); a site without training rows "
            "should not report a ranking"
        )
    if len(names) != n_features:
        raise PreprocessingError(
            f"feature ranking: {len(names)} feature names for {n_features} columns of X; "
            "pass one name per column"
        )
    if len(set(names)) != len(names):
        raise PreprocessingError("feature ranking: feature names repeat; pass unique column names")
    if len(y) != n_rows:
        raise PreprocessingError(f"feature ranking: y has {len(y)} labels for {n_rows} rows of X")
    if not np.all(np.isfinite(X)):
        raise PreprocessingError(
            "feature ranking: X contains NaN or infinite values; rank the output of Preprocessor.transform"
        )
    if max_rows < 1:
        raise PreprocessingError(f"feature ranking: max_rows must be >= 1, got {max_rows}")

    class_counts = np.unique(y, return_counts=True)[1]
    if class_counts.size < 2:
        logger.warning(
            "ranking: all %d rows have the same class, so every column scores 0 at this site", n_rows
        )
        return FeatureRanking(scores=dict.fromkeys(names, 0.0), n_rows=n_rows)
    if class_counts.max() < 2:
        # The k-NN estimate drops classes with a single row and fails when none is left.
        logger.warning(
            "ranking: no class has two or more of the %d rows, so every column scores 0 at this site", n_rows
        )
        return FeatureRanking(scores=dict.fromkeys(names, 0.0), n_rows=n_rows)

    sample_X, sample_y = X, y
    if n_rows > max_rows:
        rows = _stratified_sample(y, max_rows, seed)
        sample_X, sample_y = X[rows], y[rows]
        logger.info("ranking: subsampled %d of %d rows, stratified by class", len(rows), n_rows)

    discrete = np.array(["=" in name for name in names])
    scores = mutual_info_classif(
        sample_X.astype(np.float64),
        sample_y,
        discrete_features=discrete,
        n_neighbors=MI_NEIGHBORS,
        random_state=seed,
    )
    scores = np.maximum(scores, 0.0)
    logger.info(
        "ranking: scored %d columns on %d rows; best %s",
        n_features,
        len(sample_y),
        names[int(np.argmax(scores))],
    )
    return FeatureRanking(
        scores={name: float(score) for name, score in zip(names, scores, strict=True)}, n_rows=n_rows
    )


def merge_rankings(parts: Sequence[FeatureRanking]) -> FeatureRanking:
    """Average per-site rankings, weighted by each site's row count.

    Parameters
    ----------
    parts : sequence of FeatureRanking
        One ranking per site; rankings with ``n_rows == 0`` are ignored.

    Returns
    -------
    FeatureRanking
        Column order of the first counted site; ``n_rows`` is the total.

    Raises
    ------
    PreprocessingError
        If no ranking has rows, or two counted rankings score different columns.
    """
    counted = [(index, part) for index, part in enumerate(parts) if part.n_rows > 0]
    if not counted:
        raise PreprocessingError(
            f"ranking merge: none of the {len(parts)} site ranking(s) has rows; "
            "at least one site must rank its data"
        )
    if len(counted) < len(parts):
        logger.info("ranking merge: ignored %d site ranking(s) without rows", len(parts) - len(counted))

    first_index, first = counted[0]
    names = list(first.scores)
    for index, part in counted[1:]:
        if set(part.scores) != set(names):
            only_first = sorted(set(names) - set(part.scores))
            only_other = sorted(set(part.scores) - set(names))
            raise PreprocessingError(
                f"ranking merge: ranking {index} scores other columns than ranking {first_index} "
                f"(only in ranking {first_index}: {only_first}; only in ranking {index}: {only_other}); "
                "all sites must rank the output of the same preprocessor"
            )

    total_rows = sum(part.n_rows for _, part in counted)
    merged = {
        name: sum(part.scores[name] * part.n_rows for _, part in counted) / total_rows for name in names
    }
    return FeatureRanking(scores=merged, n_rows=total_rows)
