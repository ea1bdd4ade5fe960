"""Flower ClientApp of a hospital site: statistics, local training and local evaluation.

Only aggregates leave the site: feature statistics and class counts of the
training rows (query), model weights and training metrics (train), and a
confusion matrix, score histograms and the mean loss on the local test block
(evaluate). Every handler rebuilds its data, preprocessor and model from the
message, so nothing is kept between messages.

Record names (the protocol shared with ``server/``):

- every message carries ConfigRecord ``"config"``; train and evaluate add
  ``"preprocessing"`` (JSON of :meth:`Preprocessor.to_dict`) to it and send
  the global weights as ArrayRecord ``"arrays"``;
- query replies with ConfigRecord ``"site"``: ``statistics``,
  ``class-counts``, ``n-rows``, ``n-train-rows`` and ``site-name`` (the
  node-config ``site-name`` of a deployed SuperNode, empty in simulation);
- train replies with ArrayRecord ``"arrays"`` and MetricRecord ``"metrics"``:
  ``num-examples``, ``train-loss``, ``train-accuracy`` and ``train-seconds``;
- evaluate replies with MetricRecord ``"metrics"``: ``num-examples``,
  ``eval-loss``, ``confusion``, ``histograms`` and ``histogram-bins`` of the
  local test block, plus ``val-num-examples`` and ``val-confusion`` of the
  local validation block, on which the coordinator picks the best round.

A handler that raises makes Flower send an error reply, which the server
records as a failure of this site. A site without training or test windows
replies normally with ``num-examples`` 0 instead, so the server does not count it
as a failed site.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np
import pandas as pd
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.egress import egress_audit_mod
from client.site_data import SITE_NAME_KEY, SiteData, config_value, dataset_and_task, load_site, load_site_table
from common.config import DatasetConfig, TaskConfig
from common.exceptions import ConfigError, EmptyDataError, PreprocessingError
from common.metrics import DEFAULT_HISTOGRAM_BINS, confusion_counts, score_histograms
from common.model import build_model_from_config, get_weights, set_weights
from common.pipeline import PreparedSplit, fit_statistics, prepare_split
from common.preprocessing import FeatureStatistics, Preprocessor
from common.site import class_counts, site_split
from common.training import fit_model, predict_proba

logger = logging.getLogger(__name__)

# Probabilities are clipped like Keras' cross-entropy does, so log(0) never occurs.
_PROBABILITY_FLOOR = 1e-7


# Thread limits are left to the process environment (TF_NUM_INTRAOP_THREADS and
# TF_NUM_INTEROP_THREADS): a hospital's SuperNode should use all its cores, while
# the simulation driver sets one thread per simulated site.
# The egress audit records the keys and sizes of every reply that leaves the site.
app = ClientApp(mods=[egress_audit_mod])


# ---------------------------------------------------------------------------
# Message parsing
# ---------------------------------------------------------------------------


def _message_config(msg: Message) -> ConfigRecord:
    if "config" not in msg.content.config_records:
        raise ConfigError(
            f"{msg.metadata.message_type} message has no ConfigRecord 'config'; "
            "the server and this site may run different versions of the app"
        )
    return msg.content.config_records["config"]


def _received_weights(msg: Message) -> list[np.ndarray]:
    if "arrays" not in msg.content.array_records:
        raise ConfigError(f"{msg.metadata.message_type} message has no ArrayRecord 'arrays' with the global weights")
    return msg.content.array_records["arrays"].to_numpy_ndarrays()


def _federation_preprocessor(config: Mapping[str, Any], task: TaskConfig, dataset: DatasetConfig) -> Preprocessor:
    """Decode the federation's preprocessor and check that it belongs to the message's dataset and task."""
    text = config_value(config, "preprocessing", str)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise PreprocessingError(f"message config: key 'preprocessing' is not valid JSON: {error}") from error
    preprocessor = Preprocessor.from_dict(data)
    if preprocessor.dataset != dataset.name or preprocessor.task != task.name:
        raise PreprocessingError(
            f"message config: the preprocessing is for dataset {preprocessor.dataset!r}, task "
            f"{preprocessor.task!r}, but the message names dataset {dataset.name!r}, task {task.name!r}"
        )
    window = config_value(config, "window", int)
    if window < 1:
        raise ConfigError(f"message config: key 'window' must be at least 1, got {window}")
    return preprocessor.with_window(window)


def _build_model(preprocessor: Preprocessor, dataset: DatasetConfig, learning_rate: float) -> keras.Model:
    """Build a fresh CNN-LSTM with the dataset's layer sizes and the message's learning rate."""
    model_config = dataclasses.replace(dataset.model, learning_rate=learning_rate)
    return build_model_from_config(
        preprocessor.n_features, preprocessor.window, preprocessor.n_classes, model_config
    )


def _round_seed(config: Mapping[str, Any]) -> int:
    # A different seed per round varies dropout masks and batch order across
    # rounds, while a rerun of the same round repeats them.
    return config_value(config, "seed", int) + config_value(config, "server-round", int)


# ---------------------------------------------------------------------------
# Query: statistics of the local training rows
# ---------------------------------------------------------------------------


def _empty_features(config: DatasetConfig) -> pd.DataFrame:
    """Return a frame with the dataset's feature columns and no rows."""
    columns: dict[str, pd.Series] = {name: pd.Series(dtype=np.float64) for name in config.numeric_features}
    columns.update({name: pd.Series(dtype=object) for name in config.categorical_features})
    return pd.DataFrame(columns)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Reply with the statistics and class counts of this site's local training rows.

    Returns
    -------
    Message
        ConfigRecord ``"site"`` with ``statistics`` (JSON of
        :meth:`FeatureStatistics.to_dict`), ``class-counts`` (JSON list of
        training rows per class), ``n-rows`` (cleaned rows),
        ``n-train-rows`` and ``site-name``. A site without rows, or with too few to split,
        reports zero training rows, which the server's merge ignores.
    """
    config = _message_config(msg)
    dataset, task = dataset_and_task(config)
    n_rows = 0
    train_features = _empty_features(dataset)
    train_labels = np.empty(0, dtype=np.int64)
    try:
        dataset, task, table, _source = load_site_table(context.node_config, config)
        n_rows = len(table)
        split = site_split(table, dataset)
        train_rows = split.rows("train")
        train_features = table.features.iloc[train_rows]
        assert table.labels is not None
        train_labels = table.labels[train_rows]
        statistics = fit_statistics(table, train_rows, dataset)
    except EmptyDataError as error:
        logger.warning("query: this site reports no training rows: %s", error)
        statistics = FeatureStatistics.fit(train_features, dataset)

    counts = class_counts(train_labels, task.n_classes)
    site = ConfigRecord(
        {
            "statistics": json.dumps(statistics.to_dict(), allow_nan=False),
            "class-counts": json.dumps(counts),
            "n-rows": int(n_rows),
            "n-train-rows": len(train_labels),
            "site-name": str(context.node_config.get(SITE_NAME_KEY, "")),
        }
    )
    logger.info("query: reported %d training rows of %d, class counts %s", len(train_labels), n_rows, counts)
    return Message(RecordDict({"site": site}), reply_to=msg)


# ---------------------------------------------------------------------------
# Train: local epochs on the site's resampled training windows
# ---------------------------------------------------------------------------


def _train_reply(
    msg: Message, weights: list[np.ndarray], num_examples: int, loss: float, accuracy: float, seconds: float
) -> Message:
    metrics = MetricRecord(
        {
            "num-examples": int(num_examples),
            "train-loss": float(loss),
            "train-accuracy": float(accuracy),
            "train-seconds": float(seconds),
        }
    )
    return Message(RecordDict({"arrays": ArrayRecord(weights), "metrics": metrics}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this site's training windows for ``local-epochs`` epochs.

    Returns
    -------
    Message
        ArrayRecord ``"arrays"`` with the updated weights and MetricRecord
        ``"metrics"`` with ``num-examples`` (resampled training windows),
        ``train-loss`` and ``train-accuracy`` of the last epoch and
        ``train-seconds``. A site without training windows returns the
        received weights and ``num-examples`` 0.

    Raises
    ------
    ModelMismatchError
        If the received weights do not fit the model the preprocessing describes.
    ConfigError, DataValidationError, PreprocessingError
        On an invalid message or site file; Flower turns them into an error reply.
    """
    config = _message_config(msg)
    server_round = config_value(config, "server-round", int)
    dataset, task = dataset_and_task(config)
    preprocessor = _federation_preprocessor(config, task, dataset)
    received = _received_weights(msg)

    seed = _round_seed(config)
    keras.utils.set_random_seed(seed)
    model = _build_model(preprocessor, dataset, config_value(config, "learning-rate", float))
    # Check the weights before touching the data, so a protocol mismatch fails every site alike.
    set_weights(model, received)

    try:
        site, prepared = _prepare_site(context, config, preprocessor, resample=True)
    except EmptyDataError as error:
        logger.warning(
            "train: round %d: no training windows at this site, returning the received weights unchanged: %s",
            server_round,
            error,
        )
        return _train_reply(msg, received, 0, 0.0, 0.0, 0.0)

    started = time.perf_counter()
    history = fit_model(
        model,
        prepared.X_train,
        prepared.y_train,
        epochs=config_value(config, "local-epochs", int),
        batch_size=config_value(config, "batch-size", int),
        proximal_mu=config_value(config, "proximal-mu", float),
        seed=seed,
    )
    seconds = time.perf_counter() - started
    loss = history["loss"][-1]
    accuracy = history["accuracy"][-1]
    logger.info(
        "train: round %d: %d windows from %s, loss %.4f, accuracy %.4f, %.1f s",
        server_round,
        len(prepared.y_train),
        site.source,
        loss,
        accuracy,
        seconds,
    )
    return _train_reply(msg, get_weights(model), len(prepared.y_train), loss, accuracy, seconds)


# ---------------------------------------------------------------------------
# Evaluate: counts on the site's local test block
# ---------------------------------------------------------------------------


def _evaluate_reply(
    msg: Message,
    num_examples: int,
    loss: float,
    confusion: np.ndarray,
    histograms: np.ndarray,
    bins: int,
    validation_confusion: np.ndarray,
) -> Message:
    metrics = MetricRecord(
        {
            "num-examples": int(num_examples),
            "eval-loss": float(loss),
            "confusion": [int(value) for value in confusion.ravel()],
            "histograms": [int(value) for value in histograms.ravel()],
            "histogram-bins": int(bins),
            "val-num-examples": int(validation_confusion.sum()),
            "val-confusion": [int(value) for value in validation_confusion.ravel()],
        }
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def _prepare_site(
    context: Context, config: ConfigRecord, preprocessor: Preprocessor, *, resample: bool
) -> tuple[SiteData, PreparedSplit]:
    """Load this site's data and window it with the federation's preprocessing."""
    site = load_site(context.node_config, config)
    return site, prepare_split(
        site.table,
        site.split,
        site.config,
        site.task,
        preprocessor.window,
        preprocessor=preprocessor,
        resample=resample,
        source=site.source,
    )


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the received global model on this site's local test windows.

    Returns
    -------
    Message
        MetricRecord ``"metrics"`` with ``num-examples`` (test windows),
        ``eval-loss`` (mean cross-entropy), ``confusion`` (flattened
        n_classes x n_classes matrix, true classes as rows), ``histograms``
        (flattened :func:`score_histograms`, n_classes x 2 x bins) and
        ``histogram-bins``, plus ``val-num-examples`` and ``val-confusion``
        (flattened n_classes x n_classes) of the local validation windows.
        A site without test windows sends zeros.
    """
    config = _message_config(msg)
    server_round = config_value(config, "server-round", int)
    dataset, task = dataset_and_task(config)
    preprocessor = _federation_preprocessor(config, task, dataset)
    n_classes = preprocessor.n_classes
    bins = DEFAULT_HISTOGRAM_BINS

    model = _build_model(preprocessor, dataset, config_value(config, "learning-rate", float))
    set_weights(model, _received_weights(msg))

    try:
        _, prepared = _prepare_site(context, config, preprocessor, resample=False)
    except EmptyDataError as error:
        logger.warning("evaluate: round %d: no usable data at this site: %s", server_round, error)
        prepared = None
    validation_confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    if prepared is not None and len(prepared.y_val) > 0:
        validation_predicted = predict_proba(model, prepared.X_val).argmax(axis=1)
        validation_confusion = confusion_counts(prepared.y_val, validation_predicted, n_classes)
    if prepared is None or len(prepared.y_test) == 0:
        if prepared is not None:
            logger.warning("evaluate: round %d: the local test block contains no window", server_round)
        empty_confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
        empty_histograms = np.zeros((n_classes, 2, bins), dtype=np.int64)
        return _evaluate_reply(msg, 0, 0.0, empty_confusion, empty_histograms, bins, validation_confusion)

    y_test = prepared.y_test
    proba = predict_proba(model, prepared.X_test)
    true_class_probability = np.clip(proba[np.arange(len(y_test)), y_test], _PROBABILITY_FLOOR, 1.0)
    loss = float(-np.mean(np.log(true_class_probability)))
    confusion = confusion_counts(y_test, proba.argmax(axis=1), n_classes)
    histograms = score_histograms(y_test, proba, bins)
    logger.info(
        "evaluate: round %d: %d test windows, loss %.4f, accuracy %.4f",
        server_round,
        len(y_test),
        loss,
        float(np.trace(confusion)) / len(y_test),
    )
    return _evaluate_reply(msg, len(y_test), loss, confusion, histograms, bins, validation_confusion)
