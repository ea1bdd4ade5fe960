"""From a cleaned flow table to model-ready arrays for one split.

The order of the steps is what keeps an evaluation honest: preprocessing
statistics and the feature ranking are fitted on training rows only, windows
are built inside each run of a split, and only training windows are
resampled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from common.config import DatasetConfig, TaskConfig
from common.exceptions import EmptyDataError
from common.loading import FlowTable
from common.preprocessing import FeatureStatistics, Preprocessor
from common.ranking import FeatureRanking, rank_features
from common.resampling import ResamplingReport, resample_training
from common.splits import Split
from common.windows import windows_for_runs

logger = logging.getLogger(__name__)


@dataclass
class PreparedSplit:
    """Model-ready arrays of one split.

    ``X_*`` have shape ``(n_windows, W, n_features)`` and ``y_*`` shape
    ``(n_windows,)``. ``test_rows`` maps each test window to the table row of
    its last flow. ``y_train`` is resampled; validation and test never are.
    """

    preprocessor: Preprocessor
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    test_rows: np.ndarray
    resampling: ResamplingReport | None
    ranking: FeatureRanking | None


def fit_statistics(table: FlowTable, rows: np.ndarray, config: DatasetConfig) -> FeatureStatistics:
    """Fit preprocessing statistics on the given (training) rows of ``table``."""
    return FeatureStatistics.fit(table.features.iloc[rows], config)


def _labels(table: FlowTable) -> np.ndarray:
    if table.labels is None:
        raise EmptyDataError(f"{table.report.source}: labels are required to train or evaluate")
    return table.labels


def select_top_features(
    preprocessor: Preprocessor,
    X_train: np.ndarray,
    y_train: np.ndarray,
    top_k: int,
    seed: int,
) -> tuple[Preprocessor, FeatureRanking]:
    """Rank the preprocessor's columns on training samples and keep the ``top_k`` best."""
    ranking = rank_features(X_train, y_train, preprocessor.feature_names, seed=seed)
    if top_k >= preprocessor.n_features:
        logger.warning(
            "rank: top_k %d is not below the %d model columns, so every column is kept; "
            "choose a smaller top_k to drop the lowest-ranked columns",
            top_k,
            preprocessor.n_features,
        )
    kept = set(ranking.top(top_k))
    ordered = [name for name in preprocessor.feature_names if name in kept]
    logger.info("rank: kept %d of %d columns", len(ordered), preprocessor.n_features)
    return preprocessor.with_selection(ordered, ranking.scores), ranking


def prepare_split(
    table: FlowTable,
    split: Split,
    config: DatasetConfig,
    task: TaskConfig,
    window: int,
    *,
    preprocessor: Preprocessor | None = None,
    resample: bool = True,
    top_k: int | None = None,
    source: str = "training data",
) -> PreparedSplit:
    """Scale, window and resample one split of a flow table.

    Parameters
    ----------
    table : FlowTable
        Cleaned flows in capture order, with labels.
    split : Split
        Row runs of the training, validation and test parts.
    config : DatasetConfig
    task : TaskConfig
    window : int
        Flows per window.
    preprocessor : Preprocessor, optional
        Agreed preprocessing, for example the federation's. Without it the
        statistics are fitted on this split's training rows.
    resample : bool, default=True
        Balance the training windows with SMOTE.
    top_k : int, optional
        Keep the ``top_k`` columns ranked by mutual information on the
        training rows; ignored when ``preprocessor`` already selects columns.
    source : str
        Name of the data for log lines.
    """
    labels = _labels(table)
    train_rows = split.rows("train")
    if len(train_rows) == 0:
        raise EmptyDataError(f"{source}: the training split is empty")

    if preprocessor is None:
        statistics = fit_statistics(table, train_rows, config)
        preprocessor = Preprocessor.from_statistics(statistics, config, task.name, window)
    else:
        preprocessor = preprocessor.with_window(window)
    X = preprocessor.transform(table.features)

    ranking = None
    if top_k and preprocessor.selected_columns is None:
        preprocessor, ranking = select_top_features(
            preprocessor, X[train_rows], labels[train_rows], top_k, config.training.seed
        )
        columns = [preprocessor.output_columns.index(name) for name in preprocessor.feature_names]
        X = X[:, columns]

    X_train, y_train, _ = windows_for_runs(X, labels, split.train, window)
    X_val, y_val, _ = windows_for_runs(X, labels, split.validation, window)
    X_test, y_test, test_rows = windows_for_runs(X, labels, split.test, window)
    assert y_train is not None
    assert y_val is not None
    assert y_test is not None
    if len(y_train) == 0:
        raise EmptyDataError(
            f"{source}: no training window of {window} flows fits in the training rows "
            f"({len(train_rows)} rows); use a shorter window or more data"
        )

    report = None
    if resample:
        X_train, y_train, report = resample_training(
            X_train,
            y_train,
            k_neighbors=config.training.smote_k_neighbors,
            max_ratio=config.training.oversample_max_ratio,
            seed=config.training.seed,
            source=source,
        )
    return PreparedSplit(
        preprocessor=preprocessor,
        X_train=X_train,
        y_train=y_train,
        X_val=X_val,
        y_val=y_val,
        X_test=X_test,
        y_test=y_test,
        test_rows=test_rows,
        resampling=report,
        ranking=ranking,
    )
