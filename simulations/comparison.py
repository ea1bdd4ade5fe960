"""Federated, centralized and local-only models scored on the same test rows.

The simulation holds out one block of the capture as the common test set.
The federated model comes from the final checkpoint; the centralized model
trains on the pooled training parts of every site; each local-only model
trains on one site's training part alone, with preprocessing fitted on that
site only. Every model is scored on the same held-out rows.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from common.config import DatasetConfig, TaskConfig
from common.exceptions import FedIDSError
from common.loading import FlowTable
from common.metrics import classification_metrics
from common.model import build_model_from_config
from common.pipeline import prepare_split
from common.preprocessing import Preprocessor
from common.resampling import resample_training
from common.site import site_split
from common.training import fit_model, predict_proba
from common.windows import windows_for_runs
from simulations.experiment import add_burst_metrics

logger = logging.getLogger(__name__)


@dataclass
class TestSet:
    """The held-out rows every model is scored on."""

    table: FlowTable
    runs: tuple[np.ndarray, ...]


def score_on_test_set(
    model: keras.Model,
    preprocessor: Preprocessor,
    test_set: TestSet,
    config: DatasetConfig,
    task: TaskConfig,
) -> dict[str, Any]:
    """Transform the held-out rows with ``preprocessor``, window them and score ``model``."""
    table = test_set.table
    assert table.labels is not None
    X = preprocessor.transform(table.features)
    X_test, y_test, test_rows = windows_for_runs(X, table.labels, test_set.runs, preprocessor.window)
    assert y_test is not None
    proba = predict_proba(model, X_test)
    metrics = classification_metrics(y_test, proba, task.classes, task.normal_class)
    if config.capture_order:
        add_burst_metrics(metrics, proba, test_rows, preprocessor.window, table, task)
    return metrics


def _train(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    preprocessor: Preprocessor,
    config: DatasetConfig,
    task: TaskConfig,
    epochs: int | None,
) -> tuple[keras.Model, float, int]:
    keras.utils.set_random_seed(config.training.seed)
    model = build_model_from_config(preprocessor.n_features, preprocessor.window, task.n_classes, config.model)
    started = time.perf_counter()
    history = fit_model(
        model,
        X_train,
        y_train,
        X_val,
        y_val,
        epochs=epochs or config.training.epochs,
        batch_size=config.training.batch_size,
        patience=config.training.patience,
        monitor=config.training.monitor,
        monitor_min_support=config.training.monitor_min_support,
        seed=config.training.seed,
    )
    return model, time.perf_counter() - started, len(history.get("loss", []))


def train_centralized(
    sites: dict[int, FlowTable],
    preprocessor: Preprocessor,
    config: DatasetConfig,
    task: TaskConfig,
    epochs: int | None = None,
) -> tuple[keras.Model, dict[str, Any]]:
    """Train one model on the pooled training parts of all sites.

    Each site's part is windowed on its own, exactly as that site would, and
    SMOTE then balances the pooled training windows.
    """
    parts: dict[str, list[np.ndarray]] = {"X_train": [], "y_train": [], "X_val": [], "y_val": []}
    for index, site in sites.items():
        prepared = prepare_split(
            site,
            site_split(site, config),
            config,
            task,
            preprocessor.window,
            preprocessor=preprocessor,
            resample=False,
            source=f"site {index} (pooled)",
        )
        for key in parts:
            parts[key].append(getattr(prepared, key))
    X_train, y_train, _ = resample_training(
        np.concatenate(parts["X_train"]),
        np.concatenate(parts["y_train"]),
        k_neighbors=config.training.smote_k_neighbors,
        max_ratio=config.training.oversample_max_ratio,
        seed=config.training.seed,
        source="pooled training data",
    )
    model, seconds, epochs_run = _train(
        X_train,
        y_train,
        np.concatenate(parts["X_val"]),
        np.concatenate(parts["y_val"]),
        preprocessor,
        config,
        task,
        epochs,
    )
    logger.info("centralized: trained on %d pooled windows in %.1f s", len(y_train), seconds)
    return model, {"train_windows": len(y_train), "train_seconds": seconds, "epochs_run": epochs_run}


def train_local(
    site: FlowTable,
    index: int,
    window: int,
    config: DatasetConfig,
    task: TaskConfig,
    epochs: int | None = None,
) -> tuple[keras.Model, Preprocessor, dict[str, Any]]:
    """Train a model on one site's data alone, with preprocessing fitted on that site only."""
    prepared = prepare_split(
        site, site_split(site, config), config, task, window, source=f"site {index} (local-only)"
    )
    model, seconds, epochs_run = _train(
        prepared.X_train,
        prepared.y_train,
        prepared.X_val,
        prepared.y_val,
        prepared.preprocessor,
        config,
        task,
        epochs,
    )
    return model, prepared.preprocessor, {
        "train_windows": len(prepared.y_train),
        "train_seconds": seconds,
        "epochs_run": epochs_run,
    }


def compare_models(
    sites: dict[int, FlowTable],
    test_set: TestSet,
    federated_model: keras.Model,
    federated_preprocessor: Preprocessor,
    config: DatasetConfig,
    task: TaskConfig,
    *,
    epochs: int | None = None,
    local_only: bool = True,
    centralized: bool = True,
) -> dict[str, Any]:
    """Score the federated model and train and score the centralized and local-only references."""
    results: dict[str, Any] = {
        "federated": score_on_test_set(federated_model, federated_preprocessor, test_set, config, task)
    }
    if centralized:
        model, info = train_centralized(sites, federated_preprocessor, config, task, epochs)
        results["centralized"] = {
            **score_on_test_set(model, federated_preprocessor, test_set, config, task),
            **info,
        }
    if local_only:
        results["local_only"] = {}
        for index, site in sites.items():
            name = f"site-{index}"
            try:
                model, preprocessor, info = train_local(
                    site, index, federated_preprocessor.window, config, task, epochs
                )
            except FedIDSError as error:
                logger.warning("local-only: skipped %s: %s", name, error)
                results["local_only"][name] = {"error": str(error)}
                continue
            results["local_only"][name] = {
                **score_on_test_set(model, preprocessor, test_set, config, task),
                **info,
            }
    return results
