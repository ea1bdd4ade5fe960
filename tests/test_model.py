"""Tests of the CNN-LSTM detector and its weight exchange in common.model."""

from __future__ import annotations

import logging
import re
from typing import Any

import keras
import numpy as np
import pytest

from common.config import ModelConfig
from common.exceptions import ModelMismatchError
from common.model import build_cnn_lstm, build_model_from_config, get_weights, set_weights

# Tiny layers keep model building and training fast.
TINY: dict[str, Any] = {"conv_filters": 4, "lstm_units": 4, "dense_units": 4}


@pytest.fixture(autouse=True)
def _seed_keras() -> None:
    keras.utils.set_random_seed(1234)


def _layer_names(model: keras.Model) -> list[str]:
    return [layer.name for layer in model.layers]


@pytest.mark.parametrize("window", [1, 8], ids=["per-flow-W1", "window-W8"])
def test_build_cnn_lstm_output_probabilities(window: int) -> None:
    model = build_cnn_lstm(6, window, 3, **TINY)
    X = np.random.default_rng(0).random((5, window, 6)).astype(np.float32)

    proba = model.predict(X, verbose=0)

    assert model.input_shape == (None, window, 6)
    assert proba.shape == (5, 3)
    assert np.all(proba >= 0.0)
    np.testing.assert_allclose(proba.sum(axis=1), np.ones(5), atol=1e-5)


@pytest.mark.parametrize("window", [1, 8], ids=["per-flow-W1", "window-W8"])
def test_build_cnn_lstm_layer_names(window: int) -> None:
    names = _layer_names(build_cnn_lstm(6, window, 2, **TINY))

    for expected in ("conv", "pool", "lstm", "class_probabilities"):
        assert expected in names, expected


def test_build_cnn_lstm_w1_convolves_features() -> None:
    model = build_cnn_lstm(7, 1, 2, **TINY)

    assert "features_as_sequence" in _layer_names(model)
    # With W = 1 the 7 features form a sequence of length 7 with one channel.
    assert tuple(model.get_layer("conv").input.shape) == (None, 7, 1)


def test_build_cnn_lstm_window_convolves_time() -> None:
    model = build_cnn_lstm(7, 8, 2, **TINY)

    assert "features_as_sequence" not in _layer_names(model)
    assert tuple(model.get_layer("conv").input.shape) == (None, 8, 7)
    # Pooling of size 2 halves the 8 time steps before the LSTM.
    assert tuple(model.get_layer("lstm").input.shape) == (None, 4, 4)


@pytest.mark.parametrize(
    ("n_features", "window", "pool_size", "has_pool"),
    [
        pytest.param(1, 1, 2, False, id="W1-one-feature"),
        pytest.param(5, 3, 4, False, id="W3-pool4"),
        pytest.param(5, 4, 4, True, id="W4-pool4-boundary"),
        pytest.param(3, 1, 4, False, id="W1-three-features-pool4"),
        pytest.param(5, 8, 1, False, id="pool1-no-op"),
    ],
)
def test_build_cnn_lstm_pooling_skipped_short_sequence(
    n_features: int, window: int, pool_size: int, has_pool: bool, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="common.model"):
        model = build_cnn_lstm(n_features, window, 2, pool_size=pool_size, **TINY)

    assert ("pool" in _layer_names(model)) is has_pool
    # Pooling by 1 changes nothing, so only a real pool that is left out is reported.
    warned = not has_pool and pool_size > 1
    assert ("no pooling layer" in caplog.text) is warned
    proba = model.predict(np.zeros((2, window, n_features), dtype=np.float32), verbose=0)
    assert proba.shape == (2, 2)


@pytest.mark.parametrize("window", [1, 4], ids=["per-flow-W1", "window-W4"])
def test_build_cnn_lstm_learns_separable_toy(window: int) -> None:
    rng = np.random.default_rng(5)

    def toy(n: int) -> tuple[np.ndarray, np.ndarray]:
        # Class 1 sits around 0.8 in every feature, class 0 around 0.2.
        y = rng.integers(0, 2, n)
        X = 0.2 + 0.6 * y[:, None, None] + rng.normal(0.0, 0.05, (n, window, 4))
        return X.astype(np.float32), y

    X_train, y_train = toy(256)
    X_test, y_test = toy(128)
    # With four units per layer this seed stays at chance level (the loss stays at ln 2,
    # likely dead ReLUs), so this test uses eight.
    model = build_cnn_lstm(
        4, window, 2, conv_filters=8, lstm_units=8, dense_units=8, dropout=0.0, learning_rate=0.01
    )

    model.fit(X_train, y_train, epochs=8, batch_size=32, verbose=0)
    accuracy = float(np.mean(model.predict(X_test, verbose=0).argmax(axis=1) == y_test))

    assert accuracy > 0.95


def test_build_model_from_config_layer_sizes() -> None:
    config = ModelConfig(
        conv_filters=5,
        kernel_size=2,
        pool_size=2,
        lstm_units=3,
        dense_units=6,
        dropout=0.1,
        learning_rate=0.02,
    )

    model = build_model_from_config(4, 8, 3, config)

    assert model.get_layer("conv").filters == 5
    assert model.get_layer("conv").kernel_size == (2,)
    assert model.get_layer("pool").pool_size == (2,)
    assert model.get_layer("lstm").units == 3
    assert model.get_layer("dense").units == 6
    assert model.get_layer("lstm_dropout").rate == pytest.approx(0.1)
    assert model.get_layer("class_probabilities").units == 3
    assert float(model.optimizer.learning_rate) == pytest.approx(0.02)


@pytest.mark.parametrize(
    ("normalization", "layer_type", "extra_weights"),
    [
        pytest.param("layer", keras.layers.LayerNormalization, 2, id="layer"),
        pytest.param("batch", keras.layers.BatchNormalization, 4, id="batch"),
    ],
)
def test_build_cnn_lstm_normalization_before_lstm(
    normalization: str, layer_type: type, extra_weights: int
) -> None:
    plain = build_cnn_lstm(7, 1, 3, **TINY)
    model = build_cnn_lstm(7, 1, 3, normalization=normalization, **TINY)

    layer = model.get_layer("normalization")
    assert isinstance(layer, layer_type)
    names = _layer_names(model)
    assert names.index("pool") < names.index("normalization") < names.index("lstm")
    # Layer normalisation adds a scale and an offset; batch normalisation also its two running statistics.
    assert len(model.weights) == len(plain.weights) + extra_weights
    assert "normalization" not in _layer_names(plain)


def test_build_cnn_lstm_layer_normalization_output_normalised() -> None:
    model = build_cnn_lstm(8, 1, 2, normalization="layer", **TINY)
    probe = keras.Model(model.inputs, [model.get_layer("pool").output, model.get_layer("normalization").output])
    X = np.random.default_rng(2).random((3, 1, 8)).astype(np.float32)

    pooled, normalised = (np.asarray(part) for part in probe.predict(X, verbose=0))

    # Freshly built (scale 1, offset 0), each pooled step is standardised over its filters,
    # with Keras' default epsilon of 1e-3 added to the variance.
    mean = pooled.mean(axis=-1, keepdims=True)
    expected = (pooled - mean) / np.sqrt(pooled.var(axis=-1, keepdims=True) + 1e-3)
    np.testing.assert_allclose(normalised, expected, atol=1e-4)


def test_build_model_from_config_normalization() -> None:
    config = ModelConfig(conv_filters=4, lstm_units=4, dense_units=4, normalization="layer")

    model = build_model_from_config(4, 8, 2, config)

    assert isinstance(model.get_layer("normalization"), keras.layers.LayerNormalization)


def test_build_model_per_flow_sizes() -> None:
    config = ModelConfig(
        conv_filters=4, pool_size=2, lstm_units=6, dense_units=4, per_flow=(("pool_size", 4), ("lstm_units", 3))
    )

    per_flow = build_model_from_config(12, 1, 2, config)
    windowed = build_model_from_config(12, 8, 2, config)

    assert per_flow.get_layer("pool").pool_size == (4,)
    assert per_flow.get_layer("lstm").units == 3
    # 12 features pooled by 4 leave 3 LSTM steps at W = 1.
    assert per_flow.get_layer("pool").output.shape[1] == 3
    assert windowed.get_layer("pool").pool_size == (2,)
    assert windowed.get_layer("lstm").units == 6


def test_set_weights_round_trip() -> None:
    source = build_cnn_lstm(5, 4, 2, **TINY)
    target = build_cnn_lstm(5, 4, 2, **TINY)
    X = np.random.default_rng(1).random((3, 4, 5)).astype(np.float32)

    weights = get_weights(source)
    set_weights(target, weights)

    # Conv kernel and bias, three LSTM arrays, dense kernel and bias, output kernel and bias.
    assert len(weights) == 9
    assert all(isinstance(weight, np.ndarray) for weight in weights)
    np.testing.assert_allclose(target.predict(X, verbose=0), source.predict(X, verbose=0), rtol=1e-6)


def test_set_weights_wrong_shape_names_both() -> None:
    six_features = build_cnn_lstm(6, 4, 2, **TINY)
    five_features = build_cnn_lstm(5, 4, 2, **TINY)

    with pytest.raises(ModelMismatchError) as error:
        set_weights(five_features, get_weights(six_features))

    message = str(error.value)
    # The conv kernel has shape (kernel_size, n_features, conv_filters).
    assert "(3, 5, 4)" in message
    assert "(3, 6, 4)" in message
    assert "cnn_lstm_w4" in message


def test_set_weights_wrong_count() -> None:
    model = build_cnn_lstm(5, 4, 2, **TINY)
    weights = get_weights(model)[:-1]

    with pytest.raises(ModelMismatchError, match=r"expects 9 arrays .* received 8 arrays"):
        set_weights(model, weights)


def test_set_weights_mismatch_leaves_model_unchanged() -> None:
    model = build_cnn_lstm(5, 4, 2, **TINY)
    before = get_weights(model)
    wrong = [np.zeros_like(weight) for weight in before]
    wrong[-1] = np.zeros(3, dtype=np.float32)

    with pytest.raises(ModelMismatchError, match=re.escape("(3,)")):
        set_weights(model, wrong)

    for old, new in zip(before, get_weights(model), strict=True):
        assert np.array_equal(old, new)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param({"n_features": 0}, r"got n_features=0", id="no-features"),
        pytest.param({"window": 0}, r"got n_features=\d+, window=0", id="window-0"),
        pytest.param({"n_classes": 1}, r"n_classes=1", id="one-class"),
        pytest.param({"pool_size": 0}, r"pool_size=0", id="pool-0"),
        pytest.param({"learning_rate": 0.0}, r"learning_rate=0\.0", id="learning-rate-0"),
        pytest.param({"learning_rate": -0.1}, r"learning_rate=-0\.1", id="negative-learning-rate"),
        pytest.param({"dropout": 1.5}, r"rate=1\.5", id="dropout-above-1"),
        pytest.param({"kernel_size": 0}, r"kernel_size=0", id="kernel-0"),
        pytest.param({"lstm_units": 0}, r"got 0", id="lstm-units-0"),
        pytest.param({"normalization": "group"}, r"normalization must be one of .*'group'", id="normalization"),
    ],
)
def test_build_cnn_lstm_invalid_arguments(arguments: dict[str, Any], message: str) -> None:
    settings: dict[str, Any] = {"n_features": 5, "window": 4, "n_classes": 2, **TINY, **arguments}

    with pytest.raises(ValueError, match=message):
        build_cnn_lstm(**settings)
