"""Shared fixtures: the real captures, located through ``FEDIDS_DATA_DIR``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.config import DATA_DIR_ENV, DatasetConfig, load_dataset_config


def _real_file(config: DatasetConfig) -> Path:
    data_dir = os.environ.get(DATA_DIR_ENV)
    if not data_dir:
        pytest.skip(f"set {DATA_DIR_ENV} to the folder with the real datasets to run this test")
    path = config.data_paths(data_dir)[0]
    if not path.exists():
        pytest.skip(f"{path} not found; download {config.name} into {DATA_DIR_ENV}")
    return path


@pytest.fixture(scope="session")
def wustl_config() -> DatasetConfig:
    return load_dataset_config("wustl-ehms-2020")


@pytest.fixture(scope="session")
def nfton_config() -> DatasetConfig:
    return load_dataset_config("nf-ton-iot-v2")


@pytest.fixture(scope="session")
def wustl_path(wustl_config: DatasetConfig) -> Path:
    """Path of the real WUSTL-EHMS-2020 CSV."""
    return _real_file(wustl_config)


@pytest.fixture(scope="session")
def nfton_path(nfton_config: DatasetConfig) -> Path:
    """Path of the real NF-ToN-IoT-v2 sample CSV."""
    return _real_file(nfton_config)


@pytest.fixture
def task_identity() -> None:
    """Set the task identity that Flower's Message() reads; only a Flower runtime sets it otherwise."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id = 1
    TaskIdentity.task_id = 1
    TaskIdentity.node_id = 1
