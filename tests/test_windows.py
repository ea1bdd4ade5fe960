"""Tests of sliding windows of flows in common.windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.config import DatasetConfig
from common.exceptions import ConfigError
from common.splits import make_splits
from common.windows import make_windows, windows_for_runs

# Five flows with two features. Feature 0 is the row number, feature 1 the row number plus 10.
FLOWS = np.array(
    [
        [0.0, 10.0],
        [1.0, 11.0],
        [2.0, 12.0],
        [3.0, 13.0],
        [4.0, 14.0],
    ]
)
LABELS = np.array([0, 0, 1, 1, 0])


def _row_features(n_rows: int) -> np.ndarray:
    """Return features whose column 0 is the row index, so windows can be traced to rows."""
    rows = np.arange(n_rows, dtype=np.float64)
    return np.column_stack([rows, rows + 100.0])


# ---------------------------------------------------------------------------
# make_windows
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "expected_X", "expected_y"),
    [
        pytest.param(
            1,
            [
                [[0.0, 10.0]],
                [[1.0, 11.0]],
                [[2.0, 12.0]],
                [[3.0, 13.0]],
                [[4.0, 14.0]],
            ],
            [0, 0, 1, 1, 0],
            id="W1-one-window-per-flow",
        ),
        pytest.param(
            3,
            [
                [[0.0, 10.0], [1.0, 11.0], [2.0, 12.0]],
                [[1.0, 11.0], [2.0, 12.0], [3.0, 13.0]],
                [[2.0, 12.0], [3.0, 13.0], [4.0, 14.0]],
            ],
            # Labels of flows 2, 3 and 4, the last flow of each window.
            [1, 1, 0],
            id="W3-labelled-by-last-flow",
        ),
        pytest.param(
            5,
            [[[0.0, 10.0], [1.0, 11.0], [2.0, 12.0], [3.0, 13.0], [4.0, 14.0]]],
            [0],
            id="W5-whole-run",
        ),
    ],
)
def test_make_windows_literal_values(
    window: int, expected_X: list[list[list[float]]], expected_y: list[int]
) -> None:
    X_windows, y_windows = make_windows(FLOWS, LABELS, window)

    assert X_windows.shape == (len(expected_y), window, 2)
    assert np.array_equal(X_windows, np.array(expected_X))
    assert y_windows is not None
    assert np.array_equal(y_windows, np.array(expected_y))


@pytest.mark.parametrize("window", [6, 10], ids=["W6", "W10"])
def test_make_windows_run_shorter_than_window(window: int) -> None:
    X_windows, y_windows = make_windows(FLOWS, LABELS, window)

    assert X_windows.shape == (0, window, 2)
    assert X_windows.dtype == FLOWS.dtype
    assert y_windows is not None
    assert y_windows.shape == (0,)


def test_make_windows_without_labels() -> None:
    X_windows, y_windows = make_windows(FLOWS, None, 2)

    assert y_windows is None
    assert X_windows.shape == (4, 2, 2)


def test_make_windows_copy_independent_of_input() -> None:
    flows = FLOWS.copy()
    X_windows, _ = make_windows(flows, None, 3)

    flows[2, 0] = -1.0

    # The windows overlap in the input, so they must be a copy that later writes do not change.
    assert X_windows[0, 2, 0] == 2.0


@pytest.mark.parametrize("window", [0, -1], ids=["W0", "negative"])
def test_make_windows_invalid_window(window: int) -> None:
    with pytest.raises(ConfigError, match=rf"window length must be at least 1, got {window}"):
        make_windows(FLOWS, LABELS, window)


# ---------------------------------------------------------------------------
# windows_for_runs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "expected_last_rows"),
    [
        pytest.param(1, [0, 1, 2, 3, 4, 7, 8, 9], id="W1"),
        pytest.param(2, [1, 2, 3, 4, 8, 9], id="W2"),
        pytest.param(3, [2, 3, 4, 9], id="W3"),
        # The second run has only 3 rows, so it yields no window of 4 or 5.
        pytest.param(4, [3, 4], id="W4-second-run-too-short"),
        pytest.param(5, [4], id="W5"),
        pytest.param(6, [], id="W6-no-window"),
    ],
)
def test_windows_for_runs_never_cross_runs(window: int, expected_last_rows: list[int]) -> None:
    X = _row_features(10)
    y = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]) % 2
    runs = [np.arange(0, 5), np.arange(7, 10)]

    X_windows, y_windows, last_rows = windows_for_runs(X, y, runs, window)

    assert X_windows.shape == (len(expected_last_rows), window, 2)
    assert last_rows.tolist() == expected_last_rows
    assert last_rows.dtype == np.int64
    assert y_windows is not None
    assert np.array_equal(y_windows, y[last_rows])
    for X_window, last_row in zip(X_windows, last_rows, strict=True):
        window_rows = X_window[:, 0].astype(int)
        # The rows are consecutive and end at the mapped row, so no window spans rows 5 and 6.
        assert window_rows.tolist() == list(range(last_row - window + 1, last_row + 1))
        assert np.array_equal(X_window, X[window_rows])


def test_windows_for_runs_without_labels() -> None:
    X_windows, y_windows, last_rows = windows_for_runs(_row_features(10), None, [np.arange(2, 6)], 2)

    assert y_windows is None
    assert last_rows.tolist() == [3, 4, 5]
    assert X_windows.shape == (3, 2, 2)


@pytest.mark.parametrize("with_labels", [True, False], ids=["labels", "no-labels"])
def test_windows_for_runs_no_runs(with_labels: bool) -> None:
    y = np.zeros(10, dtype=np.int64) if with_labels else None

    X_windows, y_windows, last_rows = windows_for_runs(_row_features(10), y, [], 3)

    assert X_windows.shape == (0, 3, 2)
    assert last_rows.shape == (0,)
    if with_labels:
        assert y_windows is not None
        assert y_windows.shape == (0,)
    else:
        assert y_windows is None


@pytest.mark.parametrize(
    ("window", "runs"),
    [
        pytest.param(0, [np.arange(0, 5)], id="W0"),
        pytest.param(-2, [np.arange(0, 5)], id="negative"),
        pytest.param(0, [], id="W0-no-runs"),
        pytest.param(-1, [], id="negative-no-runs"),
    ],
)
def test_windows_for_runs_invalid_window(window: int, runs: list[np.ndarray]) -> None:
    with pytest.raises(ConfigError, match=rf"window length must be at least 1, got {window}"):
        windows_for_runs(_row_features(10), None, runs, window)


def test_windows_for_runs_real_wustl_folds(wustl_config: DatasetConfig, wustl_path: Path) -> None:
    labels = pd.read_csv(wustl_path, usecols=["Label"])["Label"].to_numpy()
    X = _row_features(len(labels))
    window = 8

    for fold in make_splits(wustl_config, labels, folds=True):
        for part in ("train", "validation", "test"):
            runs = getattr(fold, part)
            part_rows = set(fold.rows(part).tolist())
            X_windows, y_windows, last_rows = windows_for_runs(X, labels, runs, window)

            expected_count = sum(max(len(run) - window + 1, 0) for run in runs)
            assert len(last_rows) == expected_count, (fold.name, part)
            assert y_windows is not None
            assert np.array_equal(y_windows, labels[last_rows]), (fold.name, part)
            window_rows = X_windows[:, :, 0].astype(int)
            # Every flow of every window belongs to the same part, so no window straddles a split.
            assert set(np.unique(window_rows).tolist()) <= part_rows, (fold.name, part)
            assert np.all(np.diff(window_rows, axis=1) == 1), (fold.name, part)
