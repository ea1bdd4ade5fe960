"""Locate, load and split the traffic of the hospital site that runs this ClientApp.

Three places can hold a site's file, checked in this order:

1. ``data-path`` in the node config: a real deployment, where each hospital
   starts its SuperNode with ``--node-config 'data-path="/srv/flows.csv"'``;
2. ``<site-dir>/site-<partition-id>.csv`` when the message config names a
   ``site-dir``: a simulation driver wrote one file per simulated site;
3. otherwise (``flwr run .`` as a plain simulation) the dataset file in
   ``data-dir``, ``$FEDIDS_DATA_DIR`` or ``data/``. The global holdout test
   block is left out, and the training and validation rows are divided among
   ``num-partitions`` sites with :func:`common.partition.partition_rows`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config import DatasetConfig, TaskConfig, load_dataset_config, resolve_data_dir
from common.exceptions import ConfigError
from common.loading import FlowTable, load_flows
from common.partition import DEFAULT_BLOCK_SIZE, partition_rows
from common.site import class_counts, site_split
from common.splits import Split, make_splits

logger = logging.getLogger(__name__)

#: Node-config key naming a deployed site's own flow file.
DATA_PATH_KEY = "data-path"

#: Node-config key with a deployed site's name, which the server uses in logs and round records.
SITE_NAME_KEY = "site-name"


@dataclass
class SiteData:
    """One site's cleaned flows and their local split.

    Attributes
    ----------
    config : DatasetConfig
        Dataset configuration named by the message.
    task : TaskConfig
        Task named by the message, or the dataset's default task.
    table : FlowTable
        The site's cleaned flows in capture order, shape (n_rows, n_features).
    split : Split
        The site's own training, validation and test rows (``common.site.site_split``).
    source : str
        Where the rows came from, for log lines and error messages.
    """

    config: DatasetConfig
    task: TaskConfig
    table: FlowTable
    split: Split
    source: str


def config_value(config: Mapping[str, Any], key: str, kind: type) -> Any:
    """Return ``config[key]`` after checking its type.

    Raises
    ------
    ConfigError
        If the key is missing or its value is not of type ``kind`` (an int is
        accepted where a float is expected, a bool never where a number is).
    """
    if key not in config:
        raise ConfigError(
            f"message config: key {key!r} is missing; the server and this site may run different "
            "versions of the app"
        )
    value = config[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and kind is not bool:
        raise ConfigError(f"message config: key {key!r} must be of type {kind.__name__}, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"message config: key {key!r} must be of type {kind.__name__}, got {value!r}")
    return value


def dataset_and_task(message_config: Mapping[str, Any]) -> tuple[DatasetConfig, TaskConfig]:
    """Load the dataset configuration and task named by the message config."""
    config = load_dataset_config(config_value(message_config, "dataset", str))
    task_name = config_value(message_config, "task", str)
    return config, config.task(task_name or None)


def _node_int(node_config: Mapping[str, Any], key: str) -> int:
    value = node_config.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"node config: key {key!r} is missing or not an integer (got {value!r}); start the SuperNode "
            f"with --node-config '{DATA_PATH_KEY}=\"/path/to/flows.csv\"', or run it in a simulation, "
            "which sets partition-id and num-partitions"
        )
    return value


def load_site_table(
    node_config: Mapping[str, Any], message_config: Mapping[str, Any]
) -> tuple[DatasetConfig, TaskConfig, FlowTable, str]:
    """Load this site's cleaned flows, without splitting them.

    Parameters
    ----------
    node_config : mapping
        ``context.node_config``: ``data-path``, or ``partition-id`` and
        ``num-partitions`` in a simulation.
    message_config : mapping
        The ConfigRecord ``"config"`` of the server's message: ``dataset``,
        ``task``, ``data-dir``, ``site-dir``, ``partition``, ``alpha`` and ``seed``.

    Returns
    -------
    config, task, table, source
        ``table`` has shape (n_rows, n_features) and ``source`` names the
        file or partition it came from.

    Raises
    ------
    ConfigError
        If a config key is missing or invalid.
    DataValidationError
        If the file is missing or does not match the dataset configuration.
    EmptyDataError
        If no rows are left after cleaning, or the dataset is too small to
        divide among the simulated sites.
    """
    config, task = dataset_and_task(message_config)
    if DATA_PATH_KEY in node_config:
        source = str(node_config[DATA_PATH_KEY])
        table = load_flows(source, config, task)
    elif config_value(message_config, "site-dir", str):
        partition_id = _node_int(node_config, "partition-id")
        source = str(Path(config_value(message_config, "site-dir", str)) / f"site-{partition_id}.csv")
        table = load_flows(source, config, task)
    else:
        table, source = _load_partition(node_config, message_config, config, task)

    assert table.labels is not None
    counts = class_counts(table.labels, task.n_classes)
    logger.info(
        "site %s: %d rows, class counts %s",
        source,
        len(table),
        dict(zip(task.classes, counts, strict=True)),
    )
    return config, task, table, source


def _load_partition(
    node_config: Mapping[str, Any],
    message_config: Mapping[str, Any],
    config: DatasetConfig,
    task: TaskConfig,
) -> tuple[FlowTable, str]:
    """Cut this simulated site's rows out of the whole dataset file."""
    partition_id = _node_int(node_config, "partition-id")
    num_partitions = _node_int(node_config, "num-partitions")
    if not 0 <= partition_id < num_partitions:
        raise ConfigError(
            f"node config: partition-id {partition_id} is outside 0..{num_partitions - 1} (num-partitions)"
        )
    data_dir_text = config_value(message_config, "data-dir", str)
    data_dir = resolve_data_dir(data_dir_text or None)
    paths = config.data_paths(data_dir)
    if len(paths) > 1:
        logger.warning("site: %s lists %d files; only %s is partitioned", config.name, len(paths), paths[0])
    whole = load_flows(paths[0], config, task)
    assert whole.labels is not None

    # The global holdout test block stays out of every site, so a simulation
    # can still score the final model on traffic no site has trained on.
    holdout = make_splits(config, whole.labels, folds=False)[0]
    pool = np.sort(np.concatenate([holdout.rows("train"), holdout.rows("validation")]))
    site_rows = partition_rows(
        whole.labels[pool],
        num_partitions,
        config_value(message_config, "partition", str),
        normal_index=task.normal_index,
        alpha=config_value(message_config, "alpha", float),
        seed=config_value(message_config, "seed", int),
        block_size=DEFAULT_BLOCK_SIZE if config.capture_order else 1,
    )[partition_id]
    source = f"partition {partition_id} of {num_partitions} of {paths[0]}"
    return whole.take(pool[site_rows]), source


def load_site(node_config: Mapping[str, Any], message_config: Mapping[str, Any]) -> SiteData:
    """Load this site's cleaned flows and split them into local training, validation and test rows.

    See :func:`load_site_table` for the parameters and where the file is
    looked up.

    Raises
    ------
    ConfigError, DataValidationError
        As :func:`load_site_table`.
    EmptyDataError
        If no rows are left after cleaning, or too few to split.
    """
    config, task, table, source = load_site_table(node_config, message_config)
    split = site_split(table, config)
    return SiteData(config=config, task=task, table=table, split=split, source=source)
