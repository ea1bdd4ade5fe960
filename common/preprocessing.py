"""Federation-wide feature scaling: per-site statistics, their merge and the agreed transform.

Every hospital site must turn its cleaned flows into model inputs in exactly
the same way, or the shared model receives different inputs at each site. Sites
therefore report :class:`FeatureStatistics` of their training rows: counts,
minima, maxima, sums and category counts, never rows. The server merges them
with :meth:`FeatureStatistics.merge` and builds one :class:`Preprocessor`.
That object is stored as JSON beside every model and applied unchanged everywhere.

The transform of one row is:

1. numeric columns: optional ``sign(x) * log1p(|x|)``, missing values filled
   with the federation-wide mean (in the transformed space), then min-max
   scaling with the federation-wide minimum and maximum, clipped to [0, 1];
2. categorical columns: one-hot over the configured vocabulary plus one
   unknown bucket, so every site produces the same columns whatever values it
   has seen;
3. bit-mask columns (numeric columns such as TCP flags, named in the
   configuration with their width): one 0/1 column per bit of the raw value,
   after the columns above.

Non-finite numbers (``inf``, ``-inf``) count as missing in both the
statistics and the transform, because a single infinity would make the
agreed range infinite and every scaled value NaN.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.config import MAX_BITMASK_BITS, DatasetConfig
from common.exceptions import DataValidationError, PreprocessingError

logger = logging.getLogger(__name__)

#: Name of the one-hot bucket for categorical values outside the vocabulary.
UNKNOWN_CATEGORY = "<unknown>"

#: Version of the JSON layout written by :meth:`FeatureStatistics.to_dict`.
STATISTICS_FORMAT_VERSION = 1

#: Version of the JSON layout written by :meth:`Preprocessor.to_dict`.
#: Version 2 added ``bitmask_features``.
PREPROCESSOR_FORMAT_VERSION = 2

#: Versions :meth:`Preprocessor.from_dict` reads; version 1 files have no bit-mask columns.
PREPROCESSOR_READABLE_VERSIONS = (1, 2)


def _shorten(text: str, limit: int = 40) -> str:
    """Return ``text`` cut to ``limit`` characters, with the full length noted when it was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def signed_log1p(values: np.ndarray) -> np.ndarray:
    """Compress magnitudes with ``sign(x) * log1p(|x|)``.

    Parameters
    ----------
    values : ndarray of any shape
        Numeric values; NaN and infinities are allowed.

    Returns
    -------
    ndarray of the same shape, float64
        Transformed values. NaN stays NaN and ``±inf`` stays ``±inf``; the
        sign is kept, so the transform is strictly increasing.
    """
    array = np.asarray(values, dtype=np.float64)
    return np.sign(array) * np.log1p(np.abs(array))


# ---------------------------------------------------------------------------
# Input checks shared by the statistics and the transform
# ---------------------------------------------------------------------------


def _require_columns(features: pd.DataFrame, columns: Sequence[str], purpose: str) -> None:
    missing = [column for column in columns if column not in features.columns]
    if missing:
        raise DataValidationError(
            f"{purpose}: feature frame lacks {len(missing)} column(s) {missing}; "
            "pass the cleaned features of the dataset named in the configuration"
        )


def _numeric_matrix(features: pd.DataFrame, columns: Sequence[str], purpose: str) -> np.ndarray:
    """Return ``features[columns]`` as float64 of shape (n_rows, len(columns)), non-finite values as NaN."""
    if not columns:
        return np.empty((len(features), 0), dtype=np.float64)
    try:
        matrix = features.loc[:, list(columns)].to_numpy(dtype=np.float64, copy=True)
    except (TypeError, ValueError) as error:
        not_numeric = [column for column in columns if not pd.api.types.is_numeric_dtype(features[column])]
        raise DataValidationError(
            f"{purpose}: numeric feature column(s) {not_numeric} hold non-numeric values ({error}); "
            "clean the file with common.loading before preprocessing"
        ) from error
    infinite = np.isinf(matrix)
    n_infinite = int(infinite.sum())
    if n_infinite:
        columns_hit = [columns[int(i)] for i in np.flatnonzero(infinite.any(axis=0))]
        logger.warning("%s: treated %d infinite value(s) in %s as missing", purpose, n_infinite, columns_hit)
        matrix[infinite] = np.nan
    return matrix


def bit_columns(column: str, bits: int) -> tuple[str, ...]:
    """Return the output names of the ``bits`` bit columns of ``column``, lowest bit first."""
    return tuple(f"{column}:bit{bit}" for bit in range(bits))


def expand_bits(values: np.ndarray, bits: int) -> tuple[np.ndarray, int]:
    """Split integer bit masks into one 0/1 column per bit.

    Parameters
    ----------
    values : ndarray of shape (n_rows,)
        Raw values of one bit-mask column; NaN marks a missing value.
    bits : int
        Number of bits to keep, lowest bit first.

    Returns
    -------
    expanded : ndarray of shape (n_rows, bits), float32
        Column ``i`` is 1 where bit ``i`` (value ``2**i``) is set.
    n_invalid : int
        Values that are not integers in ``[0, 2**bits)``: negative,
        fractional, infinite or too large. They get all bits 0, like
        missing values, because a mask that does not fit the configured
        width is not a combination of the known flags.
    """
    array = np.asarray(values, dtype=np.float64)
    present = ~np.isnan(array)
    valid = present & np.isfinite(array) & (array >= 0) & (array < 2.0**bits) & (np.floor(array) == array)
    integers = np.where(valid, array, 0.0).astype(np.int64)
    expanded = (integers[:, None] >> np.arange(bits, dtype=np.int64)) & 1
    return expanded.astype(np.float32), int(np.count_nonzero(present & ~valid))


def _category_values(column: pd.Series) -> pd.Series:
    """Return a categorical column as stripped strings, missing values as ``""``."""
    if column.dtype == object or pd.api.types.is_string_dtype(column.dtype):
        # The loader already delivers stripped strings; only fill stray NaN.
        if column.isna().any():
            column = column.fillna("")
        return column.astype(str)
    text = column.astype(str).str.strip()
    if pd.api.types.is_float_dtype(column.dtype):
        # Write integral floats without a decimal point, so that 6.0 matches the vocabulary value "6".
        integral = column.notna() & np.isfinite(column) & (column % 1 == 0)
        text[integral] = column[integral].astype(np.int64).astype(str)
    return text.where(column.notna(), "")


def _vocabulary_codes(column: pd.Series, vocabulary: tuple[str, ...]) -> np.ndarray:
    """Return each value's index in ``vocabulary``, or -1 outside it, shape (n_rows,)."""
    codes = pd.Categorical(_category_values(column), categories=list(vocabulary)).codes
    return np.asarray(codes, dtype=np.int64)


def _json_floats(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(value) else float(value) for value in values.tolist()]


def _difference(left: Sequence[str], right: Sequence[str]) -> str:
    """Describe how two column lists differ, for mismatch messages."""
    only_left = [name for name in left if name not in set(right)]
    only_right = [name for name in right if name not in set(left)]
    if not only_left and not only_right:
        return f"same columns in a different order: {list(left)} vs {list(right)}"
    return f"only in the first: {only_left}; only in the second: {only_right}"


# ---------------------------------------------------------------------------
# JSON field readers with messages that name the key
# ---------------------------------------------------------------------------


class _DictReader:
    """Typed access to a decoded JSON object, raising PreprocessingError that names the key."""

    def __init__(self, data: Mapping[str, Any], subject: str, versions: tuple[int, ...]) -> None:
        if not isinstance(data, Mapping):
            raise PreprocessingError(f"{subject}: expected a JSON object, got {type(data).__name__}")
        self.data = data
        self.subject = subject
        found = data.get("format_version")
        if isinstance(found, bool) or found not in versions:
            readable = " or ".join(str(version) for version in versions)
            raise PreprocessingError(
                f"{subject}: format_version is {found!r}, but this code reads version {readable}; "
                "recompute it with the same release of the pipeline"
            )
        self.version = int(found)

    def fail(self, key: str, problem: str) -> PreprocessingError:
        return PreprocessingError(f"{self.subject}: key {key!r} {problem}")

    def get(self, key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in self.data:
            raise self.fail(key, "is missing")
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(key, f"must be {kinds[0].__name__}, got {value!r}")
        if not isinstance(value, kinds):
            raise self.fail(key, f"must be {kinds[0].__name__}, got {type(value).__name__}")
        return value

    def strings(self, key: str) -> tuple[str, ...]:
        values = self.get(key, list)
        if not all(isinstance(item, str) for item in values):
            raise self.fail(key, f"must be a list of strings, got {values!r}")
        return tuple(values)

    def floats(self, key: str, length: int) -> np.ndarray:
        values = self.get(key, list)
        if len(values) != length:
            raise self.fail(key, f"has {len(values)} values, expected {length} (one per numeric feature)")
        if not all(
            item is None or (isinstance(item, (int, float)) and not isinstance(item, bool)) for item in values
        ):
            raise self.fail(key, "must contain only numbers or null")
        return np.array([np.nan if item is None else float(item) for item in values], dtype=np.float64)

    def vocabularies(self, key: str) -> dict[str, tuple[str, ...]]:
        table = self.get(key, dict)
        result: dict[str, tuple[str, ...]] = {}
        for column, vocabulary in table.items():
            if not isinstance(vocabulary, list) or not all(isinstance(item, str) for item in vocabulary):
                raise self.fail(
                    key, f"must map each column to a list of strings; column {column!r} has {vocabulary!r}"
                )
            result[column] = tuple(vocabulary)
        return result

    def bit_widths(self, key: str) -> dict[str, int]:
        table = self.get(key, dict)
        for column, bits in table.items():
            if isinstance(bits, bool) or not isinstance(bits, int):
                raise self.fail(
                    key, f"must map each column to an integer number of bits; column {column!r} has {bits!r}"
                )
        return {str(column): int(bits) for column, bits in table.items()}


# ---------------------------------------------------------------------------
# Per-site statistics
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class FeatureStatistics:
    """Per-feature statistics of one site's training rows, which merge without the rows.

    Attributes
    ----------
    features : tuple of str
        Numeric feature names, in model order.
    log_transform : bool
        Whether the statistics describe ``signed_log1p`` of the values.
    n_rows : int
        Training rows the statistics came from, including rows with missing values.
    count : ndarray of shape (n_features,), int64
        Non-missing values per feature.
    minimum, maximum : ndarray of shape (n_features,), float64
        Extremes of the non-missing values; NaN where ``count == 0``.
    total : ndarray of shape (n_features,), float64
        Sum of the non-missing values, from which the merged mean follows without rows.
    category_counts : dict of str to dict of str to int
        Categorical column to the count of each vocabulary value and of
        :data:`UNKNOWN_CATEGORY` (unseen and missing values). Every
        vocabulary value is listed, with 0 when absent.
    """

    features: tuple[str, ...]
    log_transform: bool
    n_rows: int
    count: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    total: np.ndarray
    category_counts: dict[str, dict[str, int]]

    def __post_init__(self) -> None:
        self.features = tuple(self.features)
        self.count = np.asarray(self.count, dtype=np.int64)
        self.minimum = np.asarray(self.minimum, dtype=np.float64)
        self.maximum = np.asarray(self.maximum, dtype=np.float64)
        self.total = np.asarray(self.total, dtype=np.float64)
        expected = (len(self.features),)
        for name in ("count", "minimum", "maximum", "total"):
            shape = getattr(self, name).shape
            if shape != expected:
                raise PreprocessingError(
                    f"feature statistics: {name} has shape {shape}, expected {expected} "
                    f"(one value per numeric feature)"
                )
        if self.n_rows < 0 or np.any(self.count < 0) or np.any(self.count > self.n_rows):
            raise PreprocessingError(
                f"feature statistics: counts {self.count.tolist()} must lie in [0, n_rows={self.n_rows}]"
            )
        self._validate_values()

    def _validate_values(self) -> None:
        # Statistics arrive from other sites as JSON, which may spell Infinity, so check every invariant.
        seen = self.count > 0
        for name in ("minimum", "maximum", "total"):
            values = getattr(self, name)
            valid_seen = np.isfinite(values[seen]).all()
            valid_unseen = name == "total" or np.isnan(values[~seen]).all()
            if not (valid_seen and valid_unseen):
                raise PreprocessingError(
                    f"feature statistics: {name} must be finite where count > 0 and NaN where count == 0, "
                    f"got {values.tolist()} for counts {self.count.tolist()}"
                )
        inverted = [self.features[int(i)] for i in np.flatnonzero(self.minimum > self.maximum)]
        if inverted:
            raise PreprocessingError(f"feature statistics: minimum exceeds maximum for {inverted}")
        for column, counts in self.category_counts.items():
            if sum(counts.values()) != self.n_rows:
                raise PreprocessingError(
                    f"feature statistics: category counts of {column!r} sum to {sum(counts.values())}, "
                    f"but n_rows is {self.n_rows}; every row counts once per categorical column"
                )

    @classmethod
    def fit(cls, features: pd.DataFrame, config: DatasetConfig) -> FeatureStatistics:
        """Compute the statistics of one site's cleaned training features.

        Parameters
        ----------
        features : DataFrame of shape (n_rows, n_columns)
            Cleaned features containing at least ``config.feature_columns``;
            numeric columns may hold NaN, which is ignored. An empty frame
            gives statistics with ``n_rows == 0`` that merge as a no-op.
        config : DatasetConfig
            Dataset configuration naming the features, vocabularies and
            whether to log-transform.

        Returns
        -------
        FeatureStatistics

        Raises
        ------
        DataValidationError
            If a configured column is missing or a numeric column is not numeric.
        """
        numeric = tuple(config.numeric_features)
        _require_columns(features, config.feature_columns, "statistics")
        matrix = _numeric_matrix(features, numeric, "statistics")
        if config.log_transform:
            matrix = signed_log1p(matrix)

        present = ~np.isnan(matrix)
        count = present.sum(axis=0).astype(np.int64)
        seen = count > 0
        minimum = np.full(len(numeric), np.nan)
        maximum = np.full(len(numeric), np.nan)
        if matrix.size:
            # fmin/fmax skip NaN without the all-NaN RuntimeWarning of nanmin.
            minimum[seen] = np.fmin.reduce(matrix[:, seen], axis=0)
            maximum[seen] = np.fmax.reduce(matrix[:, seen], axis=0)
        total = np.where(present, matrix, 0.0).sum(axis=0)

        category_counts: dict[str, dict[str, int]] = {}
        for column, vocabulary in config.categorical_features.items():
            codes = _vocabulary_codes(features[column], tuple(vocabulary))
            # Code -1 (outside the vocabulary) lands in the last bin.
            bins = np.bincount(np.where(codes < 0, len(vocabulary), codes), minlength=len(vocabulary) + 1)
            counts = {value: int(bins[i]) for i, value in enumerate(vocabulary)}
            counts[UNKNOWN_CATEGORY] = int(bins[len(vocabulary)])
            category_counts[column] = counts

        logger.info(
            "statistics: summarised %d rows x %d numeric features (%d missing values)",
            len(features),
            len(numeric),
            int(matrix.size - present.sum()),
        )
        return cls(
            features=numeric,
            log_transform=config.log_transform,
            n_rows=len(features),
            count=count,
            minimum=minimum,
            maximum=maximum,
            total=total,
            category_counts=category_counts,
        )

    @classmethod
    def merge(cls, parts: Sequence[FeatureStatistics]) -> FeatureStatistics:
        """Combine per-site statistics into federation-wide statistics.

        The result equals the statistics of all sites' rows together: counts
        and sums add up, minima and maxima combine, and sites with
        ``n_rows == 0`` change nothing. Sums agree up to float rounding.

        Parameters
        ----------
        parts : sequence of FeatureStatistics
            One entry per site.

        Raises
        ------
        PreprocessingError
            If ``parts`` is empty, or two parts differ in features,
            ``log_transform`` or categorical vocabularies.
        """
        if not parts:
            raise PreprocessingError(
                "statistics merge: no site statistics to merge; at least one site must report"
            )
        first = parts[0]
        for index, part in enumerate(parts[1:], start=1):
            if part.features != first.features:
                raise PreprocessingError(
                    f"statistics merge: site {index} reports different numeric features than site 0 "
                    f"({_difference(first.features, part.features)}); "
                    "all sites must use the same dataset configuration"
                )
            if part.log_transform != first.log_transform:
                raise PreprocessingError(
                    f"statistics merge: site {index} has log_transform={part.log_transform} but site 0 has "
                    f"{first.log_transform}; all sites must use the same dataset configuration"
                )
            first_vocabularies = {column: list(counts) for column, counts in first.category_counts.items()}
            part_vocabularies = {column: list(counts) for column, counts in part.category_counts.items()}
            if part_vocabularies != first_vocabularies:
                raise PreprocessingError(
                    f"statistics merge: site {index} has categorical vocabularies {part_vocabularies} "
                    f"but site 0 has {first_vocabularies}; all sites must use the same dataset configuration"
                )

        minimum = np.fmin.reduce([part.minimum for part in parts], axis=0)
        maximum = np.fmax.reduce([part.maximum for part in parts], axis=0)
        category_counts = {
            column: {value: sum(part.category_counts[column][value] for part in parts) for value in counts}
            for column, counts in first.category_counts.items()
        }
        return cls(
            features=first.features,
            log_transform=first.log_transform,
            n_rows=sum(part.n_rows for part in parts),
            count=np.stack([part.count for part in parts]).sum(axis=0, dtype=np.int64),
            minimum=minimum,
            maximum=maximum,
            total=np.stack([part.total for part in parts]).sum(axis=0, dtype=np.float64),
            category_counts=category_counts,
        )

    def mean(self) -> np.ndarray:
        """Return the mean of the non-missing values, shape (n_features,), NaN where ``count == 0``."""
        result = np.full(self.total.shape, np.nan)
        np.divide(self.total, self.count, out=result, where=self.count > 0)
        return result

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict (NaN written as ``None``) that :meth:`from_dict` reads back."""
        return {
            "format_version": STATISTICS_FORMAT_VERSION,
            "features": list(self.features),
            "log_transform": self.log_transform,
            "n_rows": self.n_rows,
            "count": [int(value) for value in self.count],
            "minimum": _json_floats(self.minimum),
            "maximum": _json_floats(self.maximum),
            "total": _json_floats(self.total),
            "category_counts": {column: dict(counts) for column, counts in self.category_counts.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureStatistics:
        """Rebuild statistics written by :meth:`to_dict`.

        Raises
        ------
        PreprocessingError
            If the format version is wrong, a key is missing or a value has
            the wrong type or length.
        """
        reader = _DictReader(data, "feature statistics", (STATISTICS_FORMAT_VERSION,))
        features = reader.strings("features")
        n_features = len(features)
        count = reader.get("count", list)
        if len(count) != n_features or not all(
            isinstance(item, int) and not isinstance(item, bool) for item in count
        ):
            raise reader.fail(
                "count", f"must be {n_features} integers (one per numeric feature), got {count!r}"
            )
        category_counts_raw = reader.get("category_counts", dict)
        category_counts: dict[str, dict[str, int]] = {}
        for column, counts in category_counts_raw.items():
            valid = isinstance(counts, dict) and all(
                isinstance(value, int) and not isinstance(value, bool) and value >= 0
                for value in counts.values()
            )
            if not valid or UNKNOWN_CATEGORY not in counts:
                raise reader.fail(
                    "category_counts",
                    f"column {column!r} must map values (including {UNKNOWN_CATEGORY!r}) "
                    f"to counts >= 0, got {counts!r}",
                )
            category_counts[column] = {str(value): int(number) for value, number in counts.items()}
        return cls(
            features=features,
            log_transform=reader.get("log_transform", bool),
            n_rows=reader.get("n_rows", int),
            count=np.array(count, dtype=np.int64),
            minimum=reader.floats("minimum", n_features),
            maximum=reader.floats("maximum", n_features),
            total=reader.floats("total", n_features),
            category_counts=category_counts,
        )


# ---------------------------------------------------------------------------
# The agreed transform
# ---------------------------------------------------------------------------


@dataclass(eq=False)
class Preprocessor:
    """Agreed transform from cleaned features to model inputs, stored beside every model as JSON.

    In federated training the server builds it with :meth:`from_statistics`
    from the merged statistics and sends the same one to every site. Two
    preprocessors compare equal when their JSON forms are equal.

    Attributes
    ----------
    dataset, task, label_column : str
        Dataset configuration name, task name and the task's label column.
    classes : tuple of str
        Class names; a name's position is its class index.
    normal_class : str
        Name of the benign class.
    numeric_features : tuple of str
        Numeric input columns, in model order.
    categorical_features : dict of str to tuple of str
        Categorical column to its fixed vocabulary.
    log_transform : bool
        Whether ``signed_log1p`` is applied before scaling.
    minimum, maximum : ndarray of shape (n_numeric,), float64
        Federation-wide range in the transformed space; NaN for a column
        that no site ever saw a value of.
    fill_value : ndarray of shape (n_numeric,), float64
        Replacement for missing values: the federation-wide mean in the
        transformed space, 0 where no value was ever seen.
    window : int
        Flows per model sample (W); the transform itself works per flow.
    selected_columns : tuple of str or None
        Subset of :attr:`output_columns` kept by feature selection, in output order.
    feature_ranking : dict of str to float or None
        Score per output column used for the selection, kept for reports.
    n_rows : int
        Training rows the statistics came from, summed over sites.
    bitmask_features : dict of str to int
        Numeric column that contains a bit mask, mapped to its number of
        bits. Each bit becomes one 0/1 output column.
    """

    dataset: str
    task: str
    label_column: str
    classes: tuple[str, ...]
    normal_class: str
    numeric_features: tuple[str, ...]
    categorical_features: dict[str, tuple[str, ...]]
    log_transform: bool
    minimum: np.ndarray
    maximum: np.ndarray
    fill_value: np.ndarray
    window: int = 1
    selected_columns: tuple[str, ...] | None = None
    feature_ranking: dict[str, float] | None = None
    n_rows: int = 0
    bitmask_features: dict[str, int] = dataclasses.field(default_factory=dict)

    __hash__ = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        self.numeric_features = tuple(self.numeric_features)
        self.categorical_features = {
            column: tuple(vocabulary) for column, vocabulary in self.categorical_features.items()
        }
        self.minimum = np.asarray(self.minimum, dtype=np.float64)
        self.maximum = np.asarray(self.maximum, dtype=np.float64)
        self.fill_value = np.asarray(self.fill_value, dtype=np.float64)
        self.bitmask_features = {column: int(bits) for column, bits in self.bitmask_features.items()}
        if self.selected_columns is not None:
            self.selected_columns = tuple(self.selected_columns)
        self._validate()
        self._prepare_scaling()

    def _validate(self) -> None:
        expected = (len(self.numeric_features),)
        for name in ("minimum", "maximum", "fill_value"):
            shape = getattr(self, name).shape
            if shape != expected:
                raise PreprocessingError(
                    f"preprocessor: {name} has shape {shape}, expected {expected} "
                    "(one value per numeric feature)"
                )
        if not np.all(np.isfinite(self.fill_value)):
            bad = [self.numeric_features[i] for i in np.flatnonzero(~np.isfinite(self.fill_value))]
            raise PreprocessingError(f"preprocessor: fill_value of {bad} is not a finite number")
        if not np.array_equal(np.isnan(self.minimum), np.isnan(self.maximum)):
            raise PreprocessingError("preprocessor: minimum and maximum must be NaN for the same features")
        if np.any(np.isinf(self.minimum)) or np.any(np.isinf(self.maximum)):
            raise PreprocessingError("preprocessor: minimum and maximum must be finite or NaN")
        inverted = np.flatnonzero(self.minimum > self.maximum)
        if inverted.size:
            raise PreprocessingError(
                f"preprocessor: minimum exceeds maximum for {[self.numeric_features[i] for i in inverted]}"
            )
        if self.normal_class not in self.classes:
            raise PreprocessingError(
                f"preprocessor: normal_class {self.normal_class!r} is not in classes {list(self.classes)}"
            )
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise PreprocessingError(f"preprocessor: window must be an integer >= 1, got {self.window!r}")
        for column, bits in self.bitmask_features.items():
            if column not in self.numeric_features:
                raise PreprocessingError(
                    f"preprocessor: bit-mask column {column!r} is not a numeric feature {list(self.numeric_features)}; "
                    "rebuild the preprocessor from a configuration that lists it in features.numeric"
                )
            if not 1 <= bits <= MAX_BITMASK_BITS:
                raise PreprocessingError(
                    f"preprocessor: bit-mask column {column!r} has {bits} bits; expected 1 to {MAX_BITMASK_BITS}, "
                    "so rebuild the preprocessor from a valid configuration"
                )
        if self.selected_columns is not None:
            self._selection_indices(self.selected_columns)

    def _prepare_scaling(self) -> None:
        # Zero-range and never-seen columns get scale 0, so they map to 0
        # without a division by zero.
        span = self.maximum - self.minimum
        usable = np.isfinite(span) & (span > 0)
        self._offset = np.where(usable, self.minimum, 0.0)
        self._scale = np.divide(1.0, span, out=np.zeros_like(span), where=usable)
        self._column_index = (
            None if self.selected_columns is None else self._selection_indices(self.selected_columns)
        )

    def _selection_indices(self, columns: Sequence[str]) -> np.ndarray:
        positions = {name: i for i, name in enumerate(self.output_columns)}
        unknown = [name for name in columns if name not in positions]
        if unknown:
            raise PreprocessingError(
                f"feature selection: unknown column(s) {unknown}; choose from {list(self.output_columns)}"
            )
        if len(set(columns)) != len(columns):
            repeated = sorted({name for name in columns if list(columns).count(name) > 1})
            raise PreprocessingError(f"feature selection: column(s) {repeated} listed more than once")
        if not columns:
            raise PreprocessingError("feature selection: keep at least one column")
        return np.array(sorted(positions[name] for name in columns), dtype=np.intp)

    @classmethod
    def from_statistics(
        cls,
        stats: FeatureStatistics,
        config: DatasetConfig,
        task: str | None = None,
        window: int = 1,
    ) -> Preprocessor:
        """Build the agreed transform from federation-wide statistics.

        Parameters
        ----------
        stats : FeatureStatistics
            Merged statistics of all sites' training rows.
        config : DatasetConfig
            The configuration the statistics were computed with.
        task : str, optional
            Task name; the configuration's default task when omitted.
        window : int
            Flows per model sample.

        Raises
        ------
        PreprocessingError
            If the statistics do not match the configuration or hold no rows.
        ConfigError
            If ``task`` is not defined in the configuration.
        """
        task_config = config.task(task)
        if stats.features != tuple(config.numeric_features):
            raise PreprocessingError(
                f"preprocessor: statistics describe other numeric features than {config.name!r} "
                f"({_difference(stats.features, config.numeric_features)}); "
                "recompute them with this configuration"
            )
        if stats.log_transform != config.log_transform:
            raise PreprocessingError(
                f"preprocessor: statistics have log_transform={stats.log_transform}, but {config.name!r} "
                f"sets {config.log_transform}; recompute them with this configuration"
            )
        if list(stats.category_counts) != list(config.categorical_features):
            raise PreprocessingError(
                f"preprocessor: statistics cover categorical columns {list(stats.category_counts)}, but "
                f"{config.name!r} lists {list(config.categorical_features)}; "
                "recompute them with this configuration"
            )
        if stats.n_rows == 0:
            raise PreprocessingError(
                "preprocessor: the statistics contain no training rows from any site, "
                "so no scaling range exists; "
                "check that at least one site has data"
            )
        never_seen = [name for name, count in zip(stats.features, stats.count, strict=True) if count == 0]
        if never_seen:
            logger.warning(
                "preprocessor: no site has a value for %s; these columns will always be 0", never_seen
            )
        constant = [
            name
            for name, low, high in zip(stats.features, stats.minimum, stats.maximum, strict=True)
            if low == high
        ]
        if constant:
            # A zero range gives scale 0, so later values that differ are lost as well.
            logger.warning(
                "preprocessor: columns %s have a single value in the training rows, so they will always be 0",
                constant,
            )
        fill_value = np.nan_to_num(stats.mean(), nan=0.0)
        return cls(
            dataset=config.name,
            task=task_config.name,
            label_column=task_config.label_column,
            classes=task_config.classes,
            normal_class=task_config.normal_class,
            numeric_features=stats.features,
            categorical_features=dict(config.categorical_features),
            log_transform=stats.log_transform,
            minimum=stats.minimum.copy(),
            maximum=stats.maximum.copy(),
            fill_value=fill_value,
            window=window,
            n_rows=stats.n_rows,
            bitmask_features=dict(config.bitmask_features),
        )

    @property
    def output_columns(self) -> tuple[str, ...]:
        """Names of all transform outputs.

        Numeric features first, then one column per vocabulary value of each
        categorical feature, then one unknown bucket per categorical feature,
        then the bits of each bit-mask column (``"TCP_FLAGS:bit0"`` and so on).
        """
        names = list(self.numeric_features)
        for column, vocabulary in self.categorical_features.items():
            names.extend(f"{column}={value}" for value in vocabulary)
        names.extend(f"{column}={UNKNOWN_CATEGORY}" for column in self.categorical_features)
        for column, bits in self.bitmask_features.items():
            names.extend(bit_columns(column, bits))
        return tuple(names)

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of the columns :meth:`transform` returns."""
        return self.selected_columns if self.selected_columns is not None else self.output_columns

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def input_columns(self) -> tuple[str, ...]:
        """Columns :meth:`transform` reads: numeric, then categorical."""
        return self.numeric_features + tuple(self.categorical_features)

    def transform(self, features: pd.DataFrame) -> np.ndarray:
        """Turn cleaned features into model inputs.

        Parameters
        ----------
        features : DataFrame of shape (n_rows, n_columns)
            Cleaned features containing at least :attr:`input_columns`; other
            columns are ignored.

        Returns
        -------
        ndarray of shape (n_rows, n_features), float32
            Values in [0, 1], columns named by :attr:`feature_names`, no NaN.
            Bit columns are 0 where the raw value is missing or is not an
            integer that fits the configured width.

        Raises
        ------
        DataValidationError
            If a column is missing or a numeric column is not numeric.
        """
        _require_columns(features, self.input_columns, "transform")
        n_rows = len(features)
        n_numeric = len(self.numeric_features)
        output = np.zeros((n_rows, len(self.output_columns)), dtype=np.float32)

        matrix = _numeric_matrix(features, self.numeric_features, "transform")
        # Bits come from the raw integers, before the log transform and imputation change them.
        self._write_bits(matrix, output)
        if self.log_transform:
            matrix = signed_log1p(matrix)
        missing = np.isnan(matrix)
        if missing.any():
            matrix = np.where(missing, self.fill_value, matrix)
            logger.debug(
                "transform: filled %d missing numeric values with the federation mean", int(missing.sum())
            )
        matrix -= self._offset
        matrix *= self._scale
        np.clip(matrix, 0.0, 1.0, out=matrix)
        output[:, :n_numeric] = matrix

        self._one_hot(features, output, n_numeric)
        if self._column_index is not None:
            return output[:, self._column_index]
        return output

    def _write_bits(self, raw: np.ndarray, output: np.ndarray) -> None:
        """Write the bit columns of every bit-mask column into ``output`` in place."""
        start = len(self.output_columns) - sum(self.bitmask_features.values())
        for column, bits in self.bitmask_features.items():
            values = raw[:, self.numeric_features.index(column)]
            expanded, n_invalid = expand_bits(values, bits)
            output[:, start : start + bits] = expanded
            if n_invalid:
                logger.warning(
                    "transform: %d of %d %s values are not integers in [0, 2**%d); their bit columns are 0",
                    n_invalid,
                    len(values),
                    column,
                    bits,
                )
            start += bits

    def _one_hot(self, features: pd.DataFrame, output: np.ndarray, n_numeric: int) -> None:
        """Write the one-hot columns of every categorical feature into ``output`` in place."""
        n_rows = len(features)
        rows = np.arange(n_rows)
        start = n_numeric
        unknown_start = n_numeric + sum(len(vocabulary) for vocabulary in self.categorical_features.values())
        for position, (column, vocabulary) in enumerate(self.categorical_features.items()):
            codes = _vocabulary_codes(features[column], vocabulary)
            outside = codes < 0
            targets = np.where(outside, unknown_start + position, start + codes)
            output[rows, targets] = 1.0
            n_outside = int(outside.sum())
            if n_outside:
                values = _category_values(features[column])[outside]
                n_missing = int((values == "").sum())
                # Five values of at most 40 characters each, so a hostile file cannot flood the log.
                examples = [_shorten(value) for value in sorted(set(values[values != ""].unique().tolist()))[:5]]
                logger.info(
                    "transform: %d of %d %s values are outside the vocabulary "
                    "(%d missing, unseen examples %s); "
                    "they go to %s=%s",
                    n_outside,
                    n_rows,
                    column,
                    n_missing,
                    examples,
                    column,
                    UNKNOWN_CATEGORY,
                )
            start += len(vocabulary)

    def with_selection(
        self, columns: Sequence[str], ranking: Mapping[str, float] | None = None
    ) -> Preprocessor:
        """Return a copy that keeps only ``columns`` of :attr:`output_columns`, in output order.

        Parameters
        ----------
        columns : sequence of str
            Output column names to keep, in any order.
        ranking : mapping of str to float, optional
            Score per column behind the choice, stored for reports.

        Raises
        ------
        PreprocessingError
            If a name is not an output column, repeats, or ``columns`` is empty.
        """
        indices = self._selection_indices(list(columns))
        ordered = tuple(self.output_columns[i] for i in indices)
        return dataclasses.replace(
            self,
            selected_columns=ordered,
            feature_ranking=None if ranking is None else {str(k): float(v) for k, v in ranking.items()},
        )

    def with_window(self, window: int) -> Preprocessor:
        """Return a copy that records ``window`` flows per model sample."""
        return dataclasses.replace(self, window=window)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-safe dict (NaN written as ``None``) that :meth:`from_dict` reads back."""
        return {
            "format_version": PREPROCESSOR_FORMAT_VERSION,
            "dataset": self.dataset,
            "task": self.task,
            "label_column": self.label_column,
            "classes": list(self.classes),
            "normal_class": self.normal_class,
            "numeric_features": list(self.numeric_features),
            "categorical_features": {
                column: list(vocabulary) for column, vocabulary in self.categorical_features.items()
            },
            "log_transform": self.log_transform,
            "minimum": _json_floats(self.minimum),
            "maximum": _json_floats(self.maximum),
            "fill_value": _json_floats(self.fill_value),
            "window": self.window,
            "selected_columns": None if self.selected_columns is None else list(self.selected_columns),
            "feature_ranking": None if self.feature_ranking is None else dict(self.feature_ranking),
            "n_rows": self.n_rows,
            "bitmask_features": dict(self.bitmask_features),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessor:
        """Rebuild a preprocessor written by :meth:`to_dict`.

        Raises
        ------
        PreprocessingError
            If the format version is wrong, a key is missing or a value has
            the wrong type, length or range.
        """
        reader = _DictReader(data, "preprocessor", PREPROCESSOR_READABLE_VERSIONS)
        numeric = reader.strings("numeric_features")
        selected = (
            None if reader.data.get("selected_columns", ...) is None else reader.strings("selected_columns")
        )
        ranking_raw = reader.get("feature_ranking", (dict, type(None)))
        ranking = None
        if ranking_raw is not None:
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ranking_raw.values()):
                raise reader.fail("feature_ranking", "must map column names to numbers")
            ranking = {str(k): float(v) for k, v in ranking_raw.items()}
        bitmask = reader.bit_widths("bitmask_features") if reader.version >= 2 else {}
        return cls(
            dataset=reader.get("dataset", str),
            task=reader.get("task", str),
            label_column=reader.get("label_column", str),
            classes=reader.strings("classes"),
            normal_class=reader.get("normal_class", str),
            numeric_features=numeric,
            categorical_features=reader.vocabularies("categorical_features"),
            log_transform=reader.get("log_transform", bool),
            minimum=reader.floats("minimum", len(numeric)),
            maximum=reader.floats("maximum", len(numeric)),
            fill_value=reader.floats("fill_value", len(numeric)),
            window=reader.get("window", int),
            selected_columns=selected,
            feature_ranking=ranking,
            n_rows=reader.get("n_rows", int),
            bitmask_features=bitmask,
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the preprocessor as JSON to ``path`` and return the path.

        The file is written under a temporary name and then renamed, so a
        reader never sees half a file.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as stream:
                stream.write(text + "\n")
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        logger.info(
            "preprocessor: saved %d input columns for %s to %s", self.n_features, self.dataset, target
        )
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Preprocessor:
        """Read a preprocessor written by :meth:`save`.

        Raises
        ------
        PreprocessingError
            If the file is missing, is not valid JSON or does not describe a
            preprocessor of this format version.
        """
        source = Path(path)
        try:
            text = source.read_text(encoding="utf-8")
        except FileNotFoundError as error:
            raise PreprocessingError(
                f"preprocessor file not found: {source}; train or download the model it belongs to first"
            ) from error
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise PreprocessingError(f"{source}: invalid JSON: {error}") from error
        try:
            return cls.from_dict(data)
        except PreprocessingError as error:
            raise PreprocessingError(f"{source}: {error}") from error

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Preprocessor):
            return NotImplemented
        return self.to_dict() == other.to_dict()
