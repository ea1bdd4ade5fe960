"""Tests of the Flower apps without Ray: client handlers, site data, settings, strategy and checkpoints.

Handlers are called directly with hand-built Messages. Flower's Message
constructor reads the process's task identity, which only a Flower runtime
sets, so the ``task_identity`` fixture sets it for these tests.
"""

from __future__ import annotations

import json
import logging
import math
import tomllib
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict

from client.app import app as client_app
from client.app import evaluate, query, train
from client.site_data import load_site, load_site_table
from common.config import DatasetConfig, load_dataset_config
from common.exceptions import ConfigError, DataValidationError, ModelMismatchError
from common.metrics import DEFAULT_HISTOGRAM_BINS
from common.model import build_cnn_lstm, get_weights
from common.preprocessing import FeatureStatistics, Preprocessor
from common.splits import make_splits
from server.app import run_federation, wait_for_nodes
from server.checkpoints import CheckpointWriter
from server.settings import DEFAULTS, FederationSettings
from server.strategy import FederatedIDSStrategy, FederationError, RoundRecord, trim_reason

REPOSITORY = Path(__file__).resolve().parent.parent
SITE_ROWS = 600
# Rows of the 600-row site in its 70/10/20 time-block split.
TRAIN_ROWS = 420
TEST_ROWS = 120


# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------


pytestmark = pytest.mark.usefixtures("task_identity")


@pytest.fixture(scope="module")
def wustl_rows(wustl_path: Path) -> pd.DataFrame:
    """The first rows of the real WUSTL capture, as text; they hold 78 attack flows."""
    return pd.read_csv(wustl_path, dtype=str, keep_default_na=False, nrows=SITE_ROWS)


def write_site(frame: pd.DataFrame, folder: Path, name: str = "site.csv") -> Path:
    path = folder / name
    frame.to_csv(path, index=False)
    return path


def site_context(path: Path | None = None, node_id: int = 7, **node_config: Any) -> Context:
    config = dict(node_config)
    if path is not None:
        config["data-path"] = str(path)
    return Context(run_id=1, node_id=node_id, node_config=config, state=RecordDict(), run_config={})


def message_config(window: int = 1, server_round: int = 1, **changes: Any) -> dict[str, Any]:
    """Return a message's ConfigRecord values; keyword names use ``_`` for the key's ``-``."""
    settings = FederationSettings.from_run_config({}, {"window": window})
    config: dict[str, Any] = settings.message_config(server_round)
    config.update({key.replace("_", "-"): value for key, value in changes.items()})
    return config


def server_message(
    message_type: str, config: dict[str, Any], arrays: ArrayRecord | None = None, node_id: int = 7
) -> Message:
    content = RecordDict({"config": ConfigRecord(config)})
    if arrays is not None:
        content["arrays"] = arrays
    message = Message(content, dst_node_id=node_id, message_type=message_type)
    _assign_message_id(message)
    return message


def _assign_message_id(message: Message) -> None:
    # Flower's grids assign the id when they push a message; Metadata has no public setter.
    message.metadata.__dict__["_message_id"] = uuid.uuid4().hex


def federation_preprocessor(site_path: Path, window: int) -> Preprocessor:
    """Build the preprocessor a one-site federation would agree on, from the site's query reply."""
    reply = query(server_message(MessageType.QUERY, message_config(window)), site_context(site_path))
    statistics = FeatureStatistics.from_dict(json.loads(str(reply.content["site"]["statistics"])))
    return Preprocessor.from_statistics(statistics, load_dataset_config("wustl-ehms-2020"), "binary", window)


def initial_arrays(preprocessor: Preprocessor, config: DatasetConfig) -> ArrayRecord:
    sizes = config.model.for_window(preprocessor.window)
    model = build_cnn_lstm(
        preprocessor.n_features,
        preprocessor.window,
        preprocessor.n_classes,
        conv_filters=sizes.conv_filters,
        kernel_size=sizes.kernel_size,
        pool_size=sizes.pool_size,
        lstm_units=sizes.lstm_units,
        dense_units=sizes.dense_units,
    )
    return ArrayRecord(get_weights(model))


def signed_log(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.log1p(np.abs(values))


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


def test_settings_defaults_match_pyproject() -> None:
    with (REPOSITORY / "pyproject.toml").open("rb") as handle:
        app_config = tomllib.load(handle)["tool"]["flwr"]["app"]["config"]

    assert app_config == DEFAULTS


def test_settings_overrides_win_over_run_config() -> None:
    settings = FederationSettings.from_run_config({"num-rounds": 5, "window": 4}, {"num-rounds": 2})

    assert settings.num_rounds == 2
    assert settings.window == 4
    assert settings.task == "binary"
    assert settings.round_timeout == 600.0


def test_settings_empty_run_name_becomes_timestamp() -> None:
    settings = FederationSettings.from_run_config({})

    assert len(settings.run_name) == len("20260101-120000")
    assert settings.run_name[8] == "-"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("num-rounds", "3", r"'num-rounds' must be an integer"),
        ("num-rounds", 0, r"'num-rounds' must be at least 1"),
        ("window", True, r"'window' must be an integer"),
        ("learning-rate", 0.0, r"'learning-rate' must be in \(0.0, inf\)"),
        ("proximal-mu", -0.1, r"'proximal-mu' must be in \[0.0, inf\)"),
        ("proximal-mu", math.inf, r"'proximal-mu' must be in \[0.0, inf\)"),
        (
            "proximal-mu",
            2000.0,
            r"keys 'proximal-mu' and 'learning-rate' are invalid: proximal mu 2000 times learning rate 0.001 is 2",
        ),
        ("fraction-train", 1.5, r"'fraction-train' must be in \(0.0, 1.0\]"),
        ("round-timeout", math.nan, r"'round-timeout' must be in"),
        ("partition", "random", r"'partition' must be one of"),
        ("run-name", "../elsewhere", r"'run-name' must be a plain folder name"),
        ("dataset", "no-such-dataset", r"'dataset' is invalid"),
        ("task", "no-such-task", r"'task' is invalid"),
        ("checkpoint-dir", " ", r"'checkpoint-dir' must not be empty"),
    ],
)
def test_settings_invalid_value_names_key(key: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FederationSettings.from_run_config({}, {key: value})


def test_settings_unknown_key_rejected() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['num-round'\] in the run config"):
        FederationSettings.from_run_config({"num-round": 3})


def test_settings_window_rejected_without_capture_order() -> None:
    with pytest.raises(ConfigError, match=r"'window' must be 1 for dataset 'nf-ton-iot-v2'"):
        FederationSettings.from_run_config({"dataset": "nf-ton-iot-v2", "window": 4})


def test_settings_message_config_keys() -> None:
    config = FederationSettings.from_run_config({}).message_config(3)

    assert sorted(config) == sorted(
        [
            "dataset", "task", "window", "local-epochs", "batch-size", "learning-rate", "proximal-mu",
            "data-dir", "site-dir", "partition", "alpha", "seed", "server-round",
        ]
    )
    assert config["server-round"] == 3


# ---------------------------------------------------------------------------
# Client handlers on real WUSTL rows
# ---------------------------------------------------------------------------


def test_query_statistics_match_training_rows(wustl_rows: pd.DataFrame, tmp_path: Path) -> None:
    path = write_site(wustl_rows, tmp_path)

    reply = query(server_message(MessageType.QUERY, message_config()), site_context(path))

    site = reply.content["site"]
    statistics = json.loads(str(site["statistics"]))
    config = load_dataset_config("wustl-ehms-2020")
    train_part = wustl_rows.iloc[:TRAIN_ROWS]
    expected = signed_log(train_part[list(config.numeric_features)].astype(float).to_numpy())
    assert site["n-rows"] == SITE_ROWS
    assert site["n-train-rows"] == TRAIN_ROWS
    assert statistics["n_rows"] == TRAIN_ROWS
    np.testing.assert_allclose(statistics["minimum"], expected.min(axis=0), rtol=1e-12)
    np.testing.assert_allclose(statistics["maximum"], expected.max(axis=0), rtol=1e-12)
    labels = train_part["Label"].astype(int).to_numpy()
    assert json.loads(str(site["class-counts"])) == [int((labels == 0).sum()), int((labels == 1).sum())]


def test_query_through_client_app_routes_message(wustl_rows: pd.DataFrame, tmp_path: Path) -> None:
    path = write_site(wustl_rows, tmp_path)

    reply = client_app(server_message(MessageType.QUERY, message_config()), site_context(path))

    assert set(reply.content.config_records) == {"site"}


def test_train_returns_weights_of_model_shape(wustl_rows: pd.DataFrame, tmp_path: Path) -> None:
    path = write_site(wustl_rows, tmp_path)
    preprocessor = federation_preprocessor(path, window=4)
    sent = initial_arrays(preprocessor, load_dataset_config("wustl-ehms-2020"))
    config = message_config(4, preprocessing=json.dumps(preprocessor.to_dict()))

    reply = train(server_message(MessageType.TRAIN, config, sent), site_context(path))

    arrays = reply.content.array_records["arrays"]
    metrics = reply.content.metric_records["metrics"]
    assert [array.shape for array in arrays.values()] == [array.shape for array in sent.values()]
    assert list(arrays.keys()) == list(sent.keys())
    assert sorted(metrics) == ["num-examples", "train-accuracy", "train-loss", "train-seconds"]
    assert isinstance(metrics["num-examples"], int)
    assert metrics["num-examples"] > 0
    assert 0.0 <= float(metrics["train-accuracy"]) <= 1.0  # type: ignore[arg-type]
    changed = [not np.array_equal(arrays[key].numpy(), sent[key].numpy()) for key in sent]
    assert any(changed)


def test_train_proximal_term_keeps_global_weights(wustl_rows: pd.DataFrame, tmp_path: Path) -> None:
    path = write_site(wustl_rows, tmp_path)
    preprocessor = federation_preprocessor(path, window=4)
    sent = initial_arrays(preprocessor, load_dataset_config("wustl-ehms-2020"))
    learning_rate = 0.01
    # With mu = 1 / learning rate each proximal step moves the weights all the way back to the global ones.
    config = message_config(
        4,
        preprocessing=json.dumps(preprocessor.to_dict()),
        **{"learning-rate": learning_rate, "proximal-mu": 1 / learning_rate},
    )

    reply = train(server_message(MessageType.TRAIN, config, sent), site_context(path))

    arrays = reply.content.array_records["arrays"]
    for key in sent:
        np.testing.assert_allclose(arrays[key].numpy(), sent[key].numpy(), atol=1e-6)
    assert reply.content.metric_records["metrics"]["num-examples"] > 0  # type: ignore[operator]


def test_evaluate_confusion_sums_to_test_windows(wustl_rows: pd.DataFrame, tmp_path: Path) -> None:
    path = write_site(wustl_rows, tmp_path)
    window = 4
    preprocessor = federation_preprocessor(path, window)
    sent = initial_arrays(preprocessor, load_dataset_config("wustl-ehms-2020"))
    config = message_config(window, preprocessing=json.dumps(preprocessor.to_dict()))

    reply = evaluate(server_message(MessageType.EVALUATE, config, sent), site_context(path))

    metrics = reply.content.metric_records["metrics"]
    test_windows = TEST_ROWS - window + 1
    assert metrics["num-examples"] == test_windows
    assert sum(metrics["confusion"]) == test_windows  # type: ignore[arg-type]
    assert len(metrics["confusion"]) == 4  # type: ignore[arg-type]
    assert metrics["histogram-bins"] == DEFAULT_HISTOGRAM_BINS
    histograms = np.asarray(metrics["histograms"]).reshape(2, 2, DEFAULT_HISTOGRAM_BINS)
    assert histograms.sum(axis=(1, 2)).tolist() == [test_windows, test_windows]
    test_labels = wustl_rows["Label"].astype(int).to_numpy()[SITE_ROWS - TEST_ROWS + window - 1 :]
    confusion = np.asarray(metrics["confusion"]).reshape(2, 2)
    assert confusion.sum(axis=1).tolist() == [int((test_labels == 0).sum()), int((test_labels == 1).sum())]
    assert float(metrics["eval-loss"]) > 0.0  # type: ignore[arg-type]


def test_train_missing_column_raises(wustl_rows: pd.DataFrame, tmp_path: Path) -> None:
    good = write_site(wustl_rows, tmp_path, "good.csv")
    broken = write_site(wustl_rows.drop(columns=["SrcLoad"]), tmp_path, "broken.csv")
    preprocessor = federation_preprocessor(good, window=1)
    sent = initial_arrays(preprocessor, load_dataset_config("wustl-ehms-2020"))
    config = message_config(1, preprocessing=json.dumps(preprocessor.to_dict()))

    with pytest.raises(DataValidationError, match=r"missing required column\(s\) \['SrcLoad'\]"):
        train(server_message(MessageType.TRAIN, config, sent), site_context(broken))


def test_train_shape_mismatch_raises(wustl_rows: pd.DataFrame, tmp_path: Path) -> None:
    path = write_site(wustl_rows, tmp_path)
    preprocessor = federation_preprocessor(path, window=1)
    config = message_config(1, preprocessing=json.dumps(preprocessor.to_dict()))
    wrong = ArrayRecord([np.zeros((3, 3), dtype=np.float32)])

    with pytest.raises(ModelMismatchError, match=r"received 1 arrays with shapes \[\(3, 3\)\]"):
        train(server_message(MessageType.TRAIN, config, wrong), site_context(path))


def test_handlers_all_labels_missing_report_zero_examples(
    wustl_rows: pd.DataFrame, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = write_site(wustl_rows, tmp_path, "good.csv")
    empty = write_site(wustl_rows.assign(Label=""), tmp_path, "empty.csv")
    preprocessor = federation_preprocessor(good, window=1)
    sent = initial_arrays(preprocessor, load_dataset_config("wustl-ehms-2020"))
    config = message_config(1, preprocessing=json.dumps(preprocessor.to_dict()))

    with caplog.at_level(logging.WARNING, logger="client.app"):
        query_reply = query(server_message(MessageType.QUERY, message_config()), site_context(empty))
        train_reply = train(server_message(MessageType.TRAIN, config, sent), site_context(empty))
        evaluate_reply = evaluate(server_message(MessageType.EVALUATE, config, sent), site_context(empty))

    site = query_reply.content["site"]
    assert site["n-rows"] == 0
    assert json.loads(str(site["statistics"]))["n_rows"] == 0
    assert json.loads(str(site["class-counts"])) == [0, 0]
    train_metrics = train_reply.content.metric_records["metrics"]
    assert dict(train_metrics) == {"num-examples": 0, "train-loss": 0.0, "train-accuracy": 0.0, "train-seconds": 0.0}
    for key, array in train_reply.content.array_records["arrays"].items():
        np.testing.assert_array_equal(array.numpy(), sent[key].numpy())
    evaluate_metrics = evaluate_reply.content.metric_records["metrics"]
    assert evaluate_metrics["num-examples"] == 0
    assert evaluate_metrics["confusion"] == [0, 0, 0, 0]
    assert "no training windows at this site" in caplog.text


# ---------------------------------------------------------------------------
# Site data
# ---------------------------------------------------------------------------


def test_load_site_site_dir_uses_partition_file(wustl_rows: pd.DataFrame, tmp_path: Path) -> None:
    write_site(wustl_rows.iloc[:300], tmp_path, "site-0.csv")
    write_site(wustl_rows.iloc[300:], tmp_path, "site-1.csv")

    node_config = {"partition-id": 1, "num-partitions": 2}

    site = load_site(node_config, message_config(site_dir=str(tmp_path)))

    assert site.source.endswith("site-1.csv")
    assert len(site.table) == 300
    assert len(site.split.rows("train")) == 210


def test_load_site_partitions_holdout_pool(wustl_path: Path, wustl_config: DatasetConfig) -> None:
    data_dir = str(wustl_path.parent.parent)
    config = message_config(data_dir=data_dir)

    tables = [load_site_table({"partition-id": pid, "num-partitions": 2}, config)[2] for pid in (0, 1)]

    whole = pd.read_csv(wustl_path, dtype=str, keep_default_na=False)
    assert whole.duplicated().sum() == 0
    holdout = make_splits(wustl_config, whole["Label"].astype(int).to_numpy(), folds=False)[0]
    pool = len(holdout.rows("train")) + len(holdout.rows("validation"))
    assert sum(len(table) for table in tables) == pool
    assert len(tables[0]) == round(pool / 2)


def test_load_site_without_partition_id_raises() -> None:
    with pytest.raises(ConfigError, match=r"node config: key 'partition-id' is missing"):
        load_site({}, message_config(site_dir="/nonexistent"))


# ---------------------------------------------------------------------------
# Strategy
# ---------------------------------------------------------------------------


class FakeGrid:
    """The part of Flower's Grid that the strategy's configure_* calls use."""

    def __init__(self, node_ids: Iterable[int]) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def toy_preprocessor(bins_classes: tuple[str, ...] = ("normal", "attack")) -> Preprocessor:
    return Preprocessor(
        dataset="toy",
        task="binary",
        label_column="Label",
        classes=bins_classes,
        normal_class="normal",
        numeric_features=("a",),
        categorical_features={},
        log_transform=False,
        minimum=np.array([0.0]),
        maximum=np.array([1.0]),
        fill_value=np.array([0.5]),
    )


def sent_messages(strategy: FederatedIDSStrategy, phase: str, node_ids: list[int]) -> list[Message]:
    arrays = ArrayRecord([np.zeros((2, 2), dtype=np.float32), np.zeros(2, dtype=np.float32)])
    grid = FakeGrid(node_ids)
    configure = strategy.configure_train if phase == "train" else strategy.configure_evaluate
    messages = list(configure(1, arrays, ConfigRecord({"dataset": "toy"}), grid))  # type: ignore[arg-type]
    for message in messages:
        _assign_message_id(message)
    return sorted(messages, key=lambda message: message.metadata.dst_node_id)


def evaluate_reply(
    sent: Message,
    confusion: list[int],
    histograms: list[int],
    loss: float,
    bins: int = 4,
    validation_confusion: list[int] | None = None,
) -> Message:
    validation = validation_confusion if validation_confusion is not None else [1, 0, 0, 1]
    metrics = MetricRecord(
        {
            "num-examples": sum(confusion),
            "eval-loss": loss,
            "confusion": confusion,
            "histograms": histograms,
            "histogram-bins": bins,
            "val-num-examples": sum(validation),
            "val-confusion": validation,
        }
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=sent)


# Two sites with 4 histogram bins: (confusion, histograms, eval-loss). Histograms are
# class 0 [own rows, other rows], then class 1 [own rows, other rows], 4 bins each.
SITE_A = ([5, 1, 2, 3], [*[0, 1, 1, 4], *[3, 1, 1, 0], *[0, 1, 1, 3], *[4, 1, 1, 0]], 0.5)
SITE_B = ([7, 0, 1, 4], [*[0, 0, 2, 5], *[3, 2, 0, 0], *[0, 0, 2, 3], *[5, 2, 0, 0]], 0.2)


def test_aggregate_evaluate_sums_counts() -> None:
    strategy = FederatedIDSStrategy(toy_preprocessor(), min_sites=2, round_timeout=5.0)
    sent = sent_messages(strategy, "evaluate", [11, 22])
    replies = [evaluate_reply(sent[0], *SITE_A), evaluate_reply(sent[1], *SITE_B)]

    result = strategy.aggregate_evaluate(1, replies)

    record = strategy.rounds[1]
    assert result is not None
    assert record.metrics is not None
    # Summed confusion [[12, 1], [3, 7]]: tp 7, fp 1, fn 3, tn 12.
    assert record.metrics["confusion_matrix"] == [[12, 1], [3, 7]]
    assert result["precision"] == pytest.approx(7 / 8)
    assert result["recall"] == pytest.approx(7 / 10)
    assert result["f1"] == pytest.approx(14 / 18)
    assert result["accuracy"] == pytest.approx(19 / 23)
    assert result["fpr"] == pytest.approx(1 / 13)
    # Attack scores of attack rows [0, 1, 3, 6] against normal rows [9, 3, 1, 0]: 126 of 130 pairs.
    assert result["roc_auc"] == pytest.approx(126 / 130)
    assert result["loss"] == pytest.approx((0.5 * 11 + 0.2 * 12) / 23)
    assert result["num-examples"] == 23
    assert record.evaluate.ok == {11: 11, 22: 12}


def test_aggregate_evaluate_sums_validation_counts() -> None:
    strategy = FederatedIDSStrategy(toy_preprocessor(), min_sites=2, round_timeout=5.0)
    sent = sent_messages(strategy, "evaluate", [11, 22])
    replies = [
        evaluate_reply(sent[0], *SITE_A, validation_confusion=[6, 2, 1, 3]),
        evaluate_reply(sent[1], *SITE_B, validation_confusion=[4, 0, 3, 1]),
    ]

    strategy.aggregate_evaluate(1, replies)

    validation = strategy.rounds[1].validation_metrics
    assert validation is not None
    # Summed [[10, 2], [4, 4]]: tp 4, fp 2, fn 4, so F1 = 8 / (8 + 2 + 4).
    assert validation["confusion_matrix"] == [[10, 2], [4, 4]]
    assert validation["f1"] == pytest.approx(8 / 14)
    assert validation["fpr"] == pytest.approx(2 / 12)


def test_aggregate_evaluate_rejects_inconsistent_validation_count() -> None:
    strategy = FederatedIDSStrategy(toy_preprocessor(), min_sites=1, round_timeout=5.0)
    sent = sent_messages(strategy, "evaluate", [11])
    reply = evaluate_reply(sent[0], *SITE_A)
    reply.content.metric_records["metrics"]["val-num-examples"] = 7

    strategy.aggregate_evaluate(1, [reply])

    outcome = strategy.rounds[1].evaluate
    assert "val-confusion sums to 2, but val-num-examples is 7" in outcome.failures[0].reason


def test_aggregate_evaluate_drops_malformed_reply() -> None:
    strategy = FederatedIDSStrategy(toy_preprocessor(), min_sites=2, round_timeout=5.0)
    sent = sent_messages(strategy, "evaluate", [11, 22, 33, 44, 55])
    malformed = evaluate_reply(sent[2], [1, 2, 3], SITE_A[1], 0.1)
    crashed = Message(
        Error(code=2, reason="<class 'common.exceptions.DataValidationError'>:<'site.csv: missing column'>"),
        reply_to=sent[3],
    )
    replies = [evaluate_reply(sent[0], *SITE_A), evaluate_reply(sent[1], *SITE_B), malformed, crashed]

    result = strategy.aggregate_evaluate(1, replies)

    outcome = strategy.rounds[1].evaluate
    assert result is not None
    assert result["num-examples"] == 23
    assert [failure.node_id for failure in outcome.failures] == [33, 44]
    assert "confusion must be a list of 4 counts, got 3" in outcome.failures[0].reason
    assert outcome.failures[1].reason == "common.exceptions.DataValidationError: site.csv: missing column"
    assert outcome.failures[1].code == 2
    assert outcome.timed_out == [55]


def test_aggregate_evaluate_below_min_sites_returns_none() -> None:
    strategy = FederatedIDSStrategy(toy_preprocessor(), min_sites=2, round_timeout=5.0)
    sent = sent_messages(strategy, "evaluate", [11, 22])

    result = strategy.aggregate_evaluate(1, [evaluate_reply(sent[0], *SITE_A)])

    outcome = strategy.rounds[1].evaluate
    assert result is None
    assert not outcome.aggregated
    assert "fewer than min-sites" in outcome.note
    assert outcome.timed_out == [22]


def train_reply(sent: Message, weights: list[np.ndarray], num_examples: int) -> Message:
    metrics = MetricRecord(
        {"num-examples": num_examples, "train-loss": 0.5, "train-accuracy": 0.75, "train-seconds": 2.0}
    )
    arrays = ArrayRecord({str(i): Array(weight) for i, weight in enumerate(weights)})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=sent)


def test_aggregate_train_weighted_average() -> None:
    strategy = FederatedIDSStrategy(toy_preprocessor(), min_sites=2, round_timeout=5.0)
    sent = sent_messages(strategy, "train", [11, 22])
    ones = [np.ones((2, 2), dtype=np.float32), np.ones(2, dtype=np.float32)]
    fives = [np.full((2, 2), 5.0, dtype=np.float32), np.full(2, 5.0, dtype=np.float32)]

    arrays, metrics = strategy.aggregate_train(1, [train_reply(sent[0], ones, 1), train_reply(sent[1], fives, 3)])

    assert arrays is not None
    assert metrics is not None
    # (1 * 1 + 3 * 5) / 4 = 4
    np.testing.assert_allclose(arrays["0"].numpy(), np.full((2, 2), 4.0))
    assert metrics["num-examples"] == 4
    assert metrics["train-loss"] == pytest.approx(0.5)
    assert strategy.rounds[1].train.aggregated


def test_aggregate_train_zero_examples_keeps_weights() -> None:
    strategy = FederatedIDSStrategy(toy_preprocessor(), min_sites=2, round_timeout=5.0)
    sent = sent_messages(strategy, "train", [11, 22])
    zeros = [np.zeros((2, 2), dtype=np.float32), np.zeros(2, dtype=np.float32)]

    result = strategy.aggregate_train(1, [train_reply(sent[0], zeros, 0), train_reply(sent[1], zeros, 0)])

    assert result == (None, None)
    assert "num-examples 0 everywhere" in strategy.rounds[1].train.note


def test_aggregate_train_drops_wrong_shapes() -> None:
    strategy = FederatedIDSStrategy(toy_preprocessor(), min_sites=2, round_timeout=5.0)
    sent = sent_messages(strategy, "train", [11, 22, 33])
    ones = [np.ones((2, 2), dtype=np.float32), np.ones(2, dtype=np.float32)]
    wrong = [np.ones((3, 2), dtype=np.float32), np.ones(2, dtype=np.float32)]
    replies = [train_reply(sent[0], ones, 2), train_reply(sent[1], ones, 2), train_reply(sent[2], wrong, 2)]

    arrays, _ = strategy.aggregate_train(1, replies)

    outcome = strategy.rounds[1].train
    assert arrays is not None
    assert [failure.node_id for failure in outcome.failures] == [33]
    assert "weights do not match the global model" in outcome.failures[0].reason


def test_trim_reason_keeps_site_exception_line() -> None:
    reason = (
        "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m "
        "(pid=1, ip=127.0.0.1)\n  File \"client/app.py\", line 3, in query\n    raise DataValidationError(\n"
        "common.exceptions.DataValidationError: site-2.csv: missing required column(s) ['SrcLoad']\n\n"
        "flwr.clientapp.client_app.ClientAppException: \nException ClientAppException occurred. Message: x'>"
    )

    trimmed = trim_reason(reason)

    assert trimmed == "common.exceptions.DataValidationError: site-2.csv: missing required column(s) ['SrcLoad']"


def test_trim_reason_limits_length() -> None:
    trimmed = trim_reason("x" * 1000 + "\nsecond line")

    assert len(trimmed) == 300
    assert trimmed.endswith("...")


# ---------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------


def test_checkpoint_writer_writes_rounds_and_history(tmp_path: Path) -> None:
    preprocessor = toy_preprocessor()
    model = build_cnn_lstm(1, 1, 2, conv_filters=2, lstm_units=2, dense_units=2)
    writer = CheckpointWriter(tmp_path / "run", preprocessor, model)
    statistics = FeatureStatistics(
        ("a",), False, 4, np.array([4]), np.array([0.0]), np.array([1.0]), np.array([2.0]), {}
    )
    writer.start_run({"num-rounds": 1}, [11, 22], [], [], statistics)
    arrays = ArrayRecord(get_weights(model))
    record = RoundRecord(1)
    record.train.ok = {11: 10, 22: 20}
    record.train.seconds = {11: 1.5}
    record.evaluate.ok = {11: 5}
    record.evaluate.timed_out = [22]
    record.metrics = {"f1": 0.5, "accuracy": 0.9, "confusion_matrix": [[1, 0], [0, 1]]}
    record.loss = 0.25

    writer.save_round(0, arrays, None)
    writer.save_round(1, arrays, record)
    writer.finish("finished")

    for name in ("round-000", "round-001"):
        assert sorted(path.name for path in (tmp_path / "run" / name).iterdir()) == [
            "metrics.json", "model.keras", "preprocessing.json",
        ]
    lines = (tmp_path / "run" / "history.jsonl").read_text().splitlines()
    assert len(lines) == 1
    history = json.loads(lines[0])
    assert history["round"] == 1
    assert history["f1"] == 0.5
    assert history["loss"] == 0.25
    assert history["n_sites_ok"] == 1
    assert history["failures"] == 1
    round_metrics = json.loads((tmp_path / "run" / "round-001" / "metrics.json").read_text())
    assert round_metrics["timed_out"] == [{"node_id": 22, "site": "", "phase": "evaluate"}]
    assert round_metrics["trained"] == [
        {"node_id": 11, "num_examples": 10, "train_seconds": 1.5},
        {"node_id": 22, "num_examples": 20, "train_seconds": None},
    ]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "finished"
    assert run["final_round"] == 1
    assert (tmp_path / "run" / "preprocessing.json").is_file()


def test_checkpoint_writer_existing_run_raises(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")

    with pytest.raises(ConfigError, match="already contains a run; choose another run-name"):
        CheckpointWriter(tmp_path / "run", toy_preprocessor(), build_cnn_lstm(1, 1, 2, conv_filters=2))


# ---------------------------------------------------------------------------
# The whole ServerApp flow with sites in this process
# ---------------------------------------------------------------------------


class InProcessGrid:
    """A grid that delivers each message to the ClientApp in this process, one site per node id."""

    def __init__(self, contexts: dict[int, Context]) -> None:
        self.contexts = contexts

    def get_node_ids(self) -> list[int]:
        return sorted(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = []
        for message in messages:
            _assign_message_id(message)
            try:
                reply = client_app(message, self.contexts[message.metadata.dst_node_id])
            except Exception as error:
                # Flower turns every ClientApp exception into an error reply like this one.
                kind = f"{type(error).__module__}.{type(error).__qualname__}"
                reply = Message(Error(code=2, reason=f"<class '{kind}'>:<'{error}'>"), reply_to=message)
            replies.append(reply)
        return replies


def test_run_federation_records_failed_site(wustl_rows: pd.DataFrame, tmp_path: Path) -> None:
    paths = [
        write_site(wustl_rows.iloc[:300], tmp_path, "a.csv"),
        write_site(wustl_rows.iloc[300:], tmp_path, "b.csv"),
        write_site(wustl_rows.drop(columns=["SrcLoad"]), tmp_path, "broken.csv"),
    ]
    contexts = {node: site_context(path, node_id=node) for node, path in zip((11, 22, 33), paths, strict=True)}
    grid = InProcessGrid(contexts)
    settings = FederationSettings.from_run_config(
        {}, {"num-rounds": 1, "checkpoint-dir": str(tmp_path / "runs"), "run-name": "test", "node-wait-timeout": 1.0}
    )

    run_federation(grid, settings)  # type: ignore[arg-type]

    run_dir = tmp_path / "runs" / "test"
    run = json.loads((run_dir / "run.json").read_text())
    assert run["status"] == "finished"
    assert [site["node_id"] for site in run["sites"]] == [11, 22]
    assert run["query_failures"][0]["node_id"] == 33
    assert "['SrcLoad']" in run["query_failures"][0]["reason"]
    round_metrics = json.loads((run_dir / "round-001" / "metrics.json").read_text())
    assert [(failure["node_id"], failure["phase"]) for failure in round_metrics["failures"]] == [
        (33, "train"), (33, "evaluate"),
    ]
    assert sorted(site["node_id"] for site in round_metrics["evaluated"]) == [11, 22]
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [line["round"] for line in history] == [1]
    assert math.isfinite(history[0]["loss"])
    assert history[0]["n_sites_ok"] == 2
    assert history[0]["failures"] == 2


def test_wait_for_nodes_times_out() -> None:
    with pytest.raises(FederationError, match=r"only 1 of the required 2 sites \(min-sites\) connected within 0 s"):
        wait_for_nodes(FakeGrid([5]), 2, 0.2)  # type: ignore[arg-type]
