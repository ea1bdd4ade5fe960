"""Train-and-evaluate steps shared by the centralized and federated comparisons."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from common.config import DatasetConfig, TaskConfig
from common.loading import FlowTable
from common.metrics import burst_metrics, classification_metrics
from common.model import build_model_from_config
from common.pipeline import PreparedSplit
from common.training import fit_model, predict_proba

logger = logging.getLogger(__name__)

#: Epochs between two progress lines of a training run in the log.
PROGRESS_EVERY = 10


@dataclass
class TrainedModel:
    """A trained CNN-LSTM with its validation and test scores."""

    model: keras.Model
    window: int
    validation: dict[str, Any]
    test: dict[str, Any]
    history: dict[str, list[float]]
    epochs_run: int
    train_seconds: float


def evaluate_model(
    model: keras.Model,
    X: np.ndarray,
    y: np.ndarray,
    task: TaskConfig,
) -> tuple[dict[str, Any], np.ndarray]:
    """Return the metrics of ``model`` on windows ``X`` and the predicted probabilities."""
    proba = predict_proba(model, X)
    return classification_metrics(y, proba, task.classes, task.normal_class), proba


def add_burst_metrics(
    metrics: dict[str, Any],
    proba: np.ndarray,
    test_rows: np.ndarray,
    window: int,
    table: FlowTable,
    task: TaskConfig,
) -> None:
    """Add burst-level detection scores over the test rows, in capture order.

    ``test_rows`` holds the table row of each scored window's last flow. The
    rows before it that had no full window count as flows without an alert.
    """
    assert table.labels is not None
    if len(test_rows) == 0:
        return
    first, last = int(test_rows.min()), int(test_rows.max())
    span = np.arange(max(first - window + 1, 0), last + 1)
    y_pred = np.full(len(span), task.normal_index)
    scored = np.zeros(len(span), dtype=bool)
    position = test_rows - span[0]
    y_pred[position] = proba.argmax(axis=1)
    scored[position] = True
    metrics["bursts"] = burst_metrics(table.labels[span], y_pred, task.normal_index, scored)


def train_and_evaluate(
    prepared: PreparedSplit,
    config: DatasetConfig,
    task: TaskConfig,
    *,
    epochs: int | None = None,
    table: FlowTable | None = None,
    verbose: int = 0,
) -> TrainedModel:
    """Build, train and score a CNN-LSTM on one prepared split.

    Early stopping watches the configured validation quantity. With ``table`` given and rows
    in capture order, burst-level scores are added to the test metrics.
    """
    window = prepared.preprocessor.window
    keras.utils.set_random_seed(config.training.seed)
    model = build_model_from_config(
        prepared.preprocessor.n_features, window, task.n_classes, config.model
    )
    started = time.perf_counter()
    history = fit_model(
        model,
        prepared.X_train,
        prepared.y_train,
        prepared.X_val,
        prepared.y_val,
        epochs=epochs or config.training.epochs,
        batch_size=config.training.batch_size,
        patience=config.training.patience,
        monitor=config.training.monitor,
        monitor_min_support=config.training.monitor_min_support,
        seed=config.training.seed,
        verbose=verbose,
        progress_every=PROGRESS_EVERY,
    )
    seconds = time.perf_counter() - started

    validation: dict[str, Any] = {}
    if len(prepared.y_val):
        validation, _ = evaluate_model(model, prepared.X_val, prepared.y_val, task)
    predict_started = time.perf_counter()
    test, proba = evaluate_model(model, prepared.X_test, prepared.y_test, task)
    predict_seconds = time.perf_counter() - predict_started
    test["predict_windows_per_second"] = len(prepared.y_test) / predict_seconds if predict_seconds else None
    if table is not None and config.capture_order:
        add_burst_metrics(test, proba, prepared.test_rows, window, table, task)
    epochs_run = len(history.get("loss", []))
    logger.info(
        "train: W=%d, %d epochs in %.1f s, validation F1 %s, test F1 %.4f",
        window,
        epochs_run,
        seconds,
        f"{validation['f1']:.4f}" if validation else "n/a",
        test["f1"],
    )
    return TrainedModel(model, window, validation, test, history, epochs_run, seconds)
