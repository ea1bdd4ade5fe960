"""Sliding windows of consecutive flows, labelled by their last flow."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.exceptions import ConfigError


def make_windows(
    X: np.ndarray, y: np.ndarray | None, window: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Group consecutive rows into overlapping windows.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features)
        Scaled features of one run of flows in capture order.
    y : ndarray of shape (n_rows,) or None
        Class index of every flow.
    window : int
        Flows per window, W >= 1. W = 1 gives one sample per flow.

    Returns
    -------
    X_windows : ndarray of shape (n_rows - W + 1, W, n_features)
        Window ``j`` holds rows ``j .. j + W - 1``; a run shorter than W
        gives no windows.
    y_windows : ndarray of shape (n_rows - W + 1,) or None
        Label of each window's last flow, because the detector decides about
        the newest flow given the flows before it.
    """
    if window < 1:
        raise ConfigError(f"window length must be at least 1, got {window}")
    n_rows, n_features = X.shape
    n_windows = max(n_rows - window + 1, 0)
    if n_windows == 0:
        empty = np.empty((0, window, n_features), dtype=X.dtype)
        return empty, (None if y is None else y[:0])
    if window == 1:
        X_windows = X[:, np.newaxis, :]
    else:
        view = np.lib.stride_tricks.sliding_window_view(X, window, axis=0)
        # sliding_window_view puts the window axis last: (n_windows, n_features, W).
        X_windows = np.ascontiguousarray(view.transpose(0, 2, 1))
    y_windows = None if y is None else y[window - 1 :]
    return X_windows, y_windows


def windows_for_runs(
    X: np.ndarray,
    y: np.ndarray | None,
    runs: Sequence[np.ndarray],
    window: int,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Build windows inside each run of rows and concatenate them.

    Parameters
    ----------
    X : ndarray of shape (n_rows, n_features)
    y : ndarray of shape (n_rows,) or None
    runs : sequence of ndarray of int
        Row indices of each run, for example the parts of a
        :class:`common.splits.Split`.
    window : int
        Flows per window.

    Returns
    -------
    X_windows : ndarray of shape (n_windows, W, n_features)
    y_windows : ndarray of shape (n_windows,) or None
    last_rows : ndarray of shape (n_windows,)
        Row index of each window's last flow, to map predictions back to flows.

    Raises
    ------
    ConfigError
        If ``window`` is below 1, even when ``runs`` is empty.
    """
    if window < 1:
        raise ConfigError(f"window length must be at least 1, got {window}")
    n_features = X.shape[1]
    X_parts, y_parts, row_parts = [], [], []
    for run in runs:
        X_run, y_run = make_windows(X[run], None if y is None else y[run], window)
        X_parts.append(X_run)
        if y_run is not None:
            y_parts.append(y_run)
        row_parts.append(run[window - 1 :] if len(run) >= window else run[:0])
    if not X_parts:
        empty_y = None if y is None else np.empty(0, dtype=np.int64)
        return np.empty((0, window, n_features), dtype=X.dtype), empty_y, np.empty(0, dtype=np.int64)
    y_windows = None if y is None else np.concatenate(y_parts)
    return np.concatenate(X_parts), y_windows, np.concatenate(row_parts).astype(np.int64)
