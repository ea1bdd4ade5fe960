"""Division of one capture into hospital sites, for simulations.

Real hospitals each own their traffic; a simulation has to invent that split
from a single dataset. Three schemes are offered:

- ``contiguous``: each site owns one stretch of capture time, the realistic
  case for time-ordered traffic;
- ``iid``: blocks of consecutive flows are dealt to sites at random, so every
  site sees the same mix of traffic;
- ``dirichlet``: blocks are dealt with per-class site shares drawn from a
  Dirichlet distribution with concentration ``alpha``; small ``alpha`` gives
  each site a skewed mix of attack classes.

For data in capture order the unit dealt out is a block of consecutive flows,
so windows inside a block stay meaningful; for data without capture order it
is a single flow.
"""

from __future__ import annotations

import logging
from typing import Literal, get_args

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import DirichletPartitioner

from common.exceptions import ConfigError, EmptyDataError

logger = logging.getLogger(__name__)

PartitionMode = Literal["contiguous", "iid", "dirichlet"]
PARTITION_MODES: tuple[str, ...] = get_args(PartitionMode)

#: Flows per block dealt out by the iid and Dirichlet schemes on time-ordered
#: data. Attack bursts in the hospital captures last 17 to 31 flows, so a
#: block of 64 flows usually keeps a burst together with its normal context.
DEFAULT_BLOCK_SIZE = 64


def _blocks(n_rows: int, block_size: int) -> list[np.ndarray]:
    return [np.arange(start, min(start + block_size, n_rows)) for start in range(0, n_rows, block_size)]


def _block_label(labels: np.ndarray, normal_index: int) -> int:
    """Label a block by its most frequent attack class, or as normal if it has no attack."""
    attacks = labels[labels != normal_index]
    if len(attacks) == 0:
        return normal_index
    values, counts = np.unique(attacks, return_counts=True)
    return int(values[np.argmax(counts)])


def partition_rows(
    labels: np.ndarray,
    n_sites: int,
    mode: str,
    *,
    normal_index: int = 0,
    alpha: float = 0.5,
    seed: int = 42,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> list[np.ndarray]:
    """Assign rows to ``n_sites`` hospital sites.

    Parameters
    ----------
    labels : ndarray of shape (n_rows,)
        Class index of every row, in capture order.
    n_sites : int
        Number of sites, at least 1.
    mode : {"contiguous", "iid", "dirichlet"}
        Partitioning scheme (see the module documentation).
    normal_index : int
        Index of the benign class, used to label blocks for ``dirichlet``.
    alpha : float
        Dirichlet concentration; only used by ``dirichlet``.
    seed : int
        Random seed of ``iid`` and ``dirichlet``.
    block_size : int
        Consecutive flows dealt out together by ``iid`` and ``dirichlet``;
        1 for data without capture order.

    Returns
    -------
    list of ndarray of int64
        Sorted row indices of each site; together they cover every row once.

    Raises
    ------
    ConfigError
        On an unknown mode, ``n_sites < 1``, ``alpha <= 0`` or ``block_size < 1``.
    EmptyDataError
        If there are fewer blocks than sites.
    """
    if mode not in PARTITION_MODES:
        raise ConfigError(f"unknown partition mode {mode!r}; choose one of {list(PARTITION_MODES)}")
    if n_sites < 1:
        raise ConfigError(f"the number of sites must be at least 1, got {n_sites}")
    if block_size < 1:
        raise ConfigError(f"block size must be at least 1, got {block_size}")
    n_rows = len(labels)
    if mode == "contiguous":
        if n_rows < n_sites:
            raise EmptyDataError(f"{n_rows} rows cannot be divided among {n_sites} sites")
        bounds = np.linspace(0, n_rows, n_sites + 1).round().astype(np.int64)
        return [np.arange(bounds[i], bounds[i + 1], dtype=np.int64) for i in range(n_sites)]

    blocks = _blocks(n_rows, block_size)
    if len(blocks) < n_sites:
        raise EmptyDataError(
            f"{n_rows} rows in blocks of {block_size} give {len(blocks)} blocks, fewer than {n_sites} sites"
        )
    rng = np.random.default_rng(seed)
    if mode == "iid":
        order = rng.permutation(len(blocks))
        assignment = np.empty(len(blocks), dtype=np.int64)
        assignment[order] = np.arange(len(blocks)) % n_sites
    else:
        if not alpha > 0:
            raise ConfigError(f"Dirichlet alpha must be positive, got {alpha}")
        block_labels = [_block_label(labels[block], normal_index) for block in blocks]
        assignment = _dirichlet_assignment(block_labels, n_sites, alpha, seed)

    sites = []
    for site in range(n_sites):
        chosen = [blocks[b] for b in np.flatnonzero(assignment == site)]
        rows = np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)
        sites.append(rows.astype(np.int64))
    logger.info(
        "partition: %s over %d sites, rows per site %s",
        mode,
        n_sites,
        [len(rows) for rows in sites],
    )
    return sites


def _dirichlet_assignment(block_labels: list[int], n_sites: int, alpha: float, seed: int) -> np.ndarray:
    """Deal blocks to sites with flwr-datasets' Dirichlet partitioner."""
    dataset = Dataset.from_dict({"label": block_labels, "block": list(range(len(block_labels)))})
    # A site needs a few blocks to hold a training, validation and test part.
    min_size = max(1, min(10, len(block_labels) // (2 * n_sites)))
    partitioner = DirichletPartitioner(
        num_partitions=n_sites,
        partition_by="label",
        alpha=alpha,
        min_partition_size=min_size,
        self_balancing=False,
        shuffle=True,
        seed=seed,
    )
    partitioner.dataset = dataset
    assignment = np.full(len(block_labels), -1, dtype=np.int64)
    try:
        for site in range(n_sites):
            assignment[partitioner.load_partition(site)["block"]] = site
    except ValueError as error:
        # flwr-datasets gives up when its draws keep leaving a site below the minimum size.
        raise ConfigError(
            f"the Dirichlet partition of {len(block_labels)} blocks into {n_sites} sites with alpha {alpha} "
            f"failed ({error}); use fewer sites, a larger alpha or more rows"
        ) from error
    return assignment
