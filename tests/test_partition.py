"""Tests for dividing a capture among simulated hospital sites."""

from __future__ import annotations

import numpy as np
import pytest

from common.exceptions import ConfigError, EmptyDataError
from common.partition import partition_rows

SEED = 7


def _labels(n_rows: int = 2000, attack_share: float = 0.2) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    return (rng.random(n_rows) < attack_share).astype(np.int64)


@pytest.mark.parametrize("mode", ["contiguous", "iid", "dirichlet"])
def test_partition_covers_rows_once(mode: str) -> None:
    labels = _labels()
    sites = partition_rows(labels, 4, mode, alpha=1.0, seed=SEED, block_size=20)
    assert len(sites) == 4
    combined = np.concatenate(sites)
    assert len(combined) == len(labels)
    assert np.array_equal(np.sort(combined), np.arange(len(labels)))
    for rows in sites:
        assert np.all(np.diff(rows) > 0), "site rows must stay in capture order"


def test_partition_contiguous_gives_stretches() -> None:
    sites = partition_rows(_labels(10), 3, "contiguous")
    assert [rows.tolist() for rows in sites] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]


def test_partition_iid_keeps_blocks_whole() -> None:
    sites = partition_rows(_labels(100), 2, "iid", seed=SEED, block_size=10)
    for rows in sites:
        starts = rows[::10]
        assert np.all(starts % 10 == 0)
        assert len(rows) == 50


def test_partition_dirichlet_skews_labels() -> None:
    labels = _labels(4000, attack_share=0.5)
    sites = partition_rows(labels, 4, "dirichlet", alpha=0.1, seed=SEED, block_size=1)
    shares = [labels[rows].mean() for rows in sites if len(rows)]
    assert max(shares) - min(shares) > 0.3


def test_partition_is_reproducible() -> None:
    labels = _labels()
    first = partition_rows(labels, 3, "dirichlet", seed=SEED, block_size=10)
    second = partition_rows(labels, 3, "dirichlet", seed=SEED, block_size=10)
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a, b)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "bogus"}, "unknown partition mode 'bogus'"),
        ({"mode": "iid", "n_sites": 0}, "at least 1, got 0"),
        ({"mode": "dirichlet", "alpha": 0.0}, "alpha must be positive, got 0.0"),
        ({"mode": "iid", "block_size": 0}, "block size must be at least 1"),
    ],
    ids=["mode", "sites", "alpha", "block-size"],
)
def test_partition_rejects_invalid_settings(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"n_sites": 2, **kwargs}
    with pytest.raises(ConfigError, match=message):
        partition_rows(_labels(100), **arguments)  # type: ignore[arg-type]


def test_partition_too_many_sites() -> None:
    with pytest.raises(EmptyDataError, match="fewer than 50 sites"):
        partition_rows(_labels(100), 50, "iid", block_size=10)


def test_partition_dirichlet_failure_is_config_error() -> None:
    # 30 blocks cannot give 10 sites the minimum size under a strong skew.
    with pytest.raises(ConfigError, match="use fewer sites, a larger alpha or more rows"):
        partition_rows(_labels(30), 10, "dirichlet", alpha=0.01, seed=SEED, block_size=1)
