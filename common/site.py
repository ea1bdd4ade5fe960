"""A hospital site's own data: its file and its local train/validation/test split."""

from __future__ import annotations

import numpy as np

from common.config import DatasetConfig
from common.exceptions import EmptyDataError
from common.loading import FlowTable
from common.splits import Split, make_splits


def site_split(table: FlowTable, config: DatasetConfig) -> Split:
    """Split a site's cleaned flows into its local training, validation and test parts.

    Time-ordered data is split into contiguous blocks, so every site tests on
    traffic captured after the traffic it trained on; data without capture
    order gets a stratified holdout split.
    """
    if table.labels is None:
        raise EmptyDataError(f"{table.report.source}: a site needs labelled flows to train or evaluate")
    return make_splits(config, table.labels, folds=False)[0]


def class_counts(labels: np.ndarray, n_classes: int) -> list[int]:
    """Return the number of rows of every class index ``0 .. n_classes - 1``."""
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes).astype(int).tolist()
