"""Tests of the shared training loop in common.training."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest

from common.model import build_cnn_lstm
from common.training import EpochProgress, ProximalStep, fit_model, macro_f1


def test_macro_f1_three_classes() -> None:
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])

    # Class 0: 1 hit, 2 predicted, 2 true -> 2/4. Class 1: 2 hits, 3 predicted, 2 true -> 4/5.
    # Class 2: never predicted -> 0.
    assert macro_f1(y_true, y_pred) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_macro_f1_absent_class_scores_zero() -> None:
    y_true = np.array([0, 0, 0, 0])
    y_pred = np.array([0, 0, 0, 3])

    # Class 0: 3 hits, 3 predicted, 4 true -> 6/7; class 3 was never true -> 0.
    assert macro_f1(y_true, y_pred) == pytest.approx((6 / 7 + 0.0) / 2)


def test_macro_f1_empty_is_zero() -> None:
    assert macro_f1(np.array([], dtype=np.int64), np.array([], dtype=np.int64)) == 0.0


def test_macro_f1_min_support_skips_small_classes() -> None:
    y_true = np.array([0, 0, 0, 1, 1, 1, 2, 3])
    y_pred = np.array([0, 0, 1, 1, 1, 1, 0, 3])

    # Class 0: 2 hits, 3 predicted, 3 true -> 4/6. Class 1: 3 hits, 4 predicted, 3 true -> 6/7.
    # Classes 2 and 3 have one true sample each and are left out.
    assert macro_f1(y_true, y_pred, min_support=3) == pytest.approx((4 / 6 + 6 / 7) / 2)
    assert macro_f1(y_true, y_pred, min_support=0) == pytest.approx((4 / 6 + 6 / 7 + 0.0 + 1.0) / 4)


def test_macro_f1_min_support_above_every_class() -> None:
    assert macro_f1(np.array([0, 1]), np.array([0, 1]), min_support=2) == 0.0


def test_fit_model_monitor_min_support_logged() -> None:
    keras.utils.set_random_seed(3)
    X_train, y_train = _toy(240, 0)
    X_val, y_val = _toy(60, 1)
    # One validation window of an extra class 3, which the model never predicts.
    X_val = np.concatenate([X_val, X_val[:1]])
    y_val = np.concatenate([y_val, [3]])
    model = build_cnn_lstm(5, 1, 4, conv_filters=8, lstm_units=8, dense_units=8, dropout=0.0, learning_rate=0.01)

    history = fit_model(
        model,
        X_train,
        y_train,
        X_val,
        y_val,
        epochs=2,
        batch_size=32,
        monitor="val_macro_f1",
        monitor_min_support=2,
    )

    # Without patience nothing restores an earlier epoch, so the last score belongs to the final weights.
    predicted = model.predict(X_val, verbose=0).argmax(axis=1)
    assert history["val_macro_f1"][-1] == pytest.approx(macro_f1(y_val, predicted, min_support=2))
    assert macro_f1(y_val, predicted, min_support=2) != pytest.approx(macro_f1(y_val, predicted))


def _toy(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    X = 0.1 + 0.4 * y[:, None, None] + rng.normal(0.0, 0.05, (n, 1, 5))
    return X.astype(np.float32), y


def test_fit_model_restores_best_macro_f1() -> None:
    keras.utils.set_random_seed(3)
    X_train, y_train = _toy(240, 0)
    X_val, y_val = _toy(60, 1)
    model = build_cnn_lstm(5, 1, 3, conv_filters=8, lstm_units=8, dense_units=8, dropout=0.0, learning_rate=0.01)

    history = fit_model(
        model, X_train, y_train, X_val, y_val, epochs=6, batch_size=32, patience=2, monitor="val_macro_f1"
    )

    scores = history["val_macro_f1"]
    assert len(scores) == len(history["loss"])
    assert all(0.0 <= score <= 1.0 for score in scores)
    # The restored weights are those of the best epoch, so their validation macro-F1 is the best one logged.
    restored = macro_f1(y_val, model.predict(X_val, verbose=0).argmax(axis=1))
    assert restored == pytest.approx(max(scores))


def test_fit_model_unknown_monitor_rejected() -> None:
    model = build_cnn_lstm(5, 1, 3, conv_filters=4, lstm_units=4, dense_units=4)
    X, y = _toy(20, 0)

    with pytest.raises(ValueError, match=r"monitor must be one of \['val_loss', 'val_macro_f1'\], got 'val_f1'"):
        fit_model(model, X, y, X, y, epochs=1, batch_size=8, patience=1, monitor="val_f1")


def _toy_training_set(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.random((64, 1, 4)).astype(np.float32)
    y = (X[:, 0, 0] > 0.5).astype(np.int64)
    return X, y


@pytest.mark.parametrize(("mu", "max_distance"), [(0.0, None), (10.0, 1e-6)])
def test_fit_model_proximal_mu_limits_drift(mu: float, max_distance: float | None) -> None:
    X, y = _toy_training_set()
    model = build_cnn_lstm(4, 1, 2, conv_filters=4, lstm_units=4, dense_units=4, learning_rate=0.1)
    start = [np.array(variable.numpy()) for variable in model.trainable_variables]

    fit_model(model, X, y, epochs=2, batch_size=16, proximal_mu=mu)

    # With learning rate 0.1 and mu 10 each proximal step returns the weights to where training began.
    distance = max(
        float(np.abs(variable.numpy() - before).max())
        for variable, before in zip(model.trainable_variables, start, strict=True)
    )
    if max_distance is None:
        assert distance > 1e-3
    else:
        assert distance < max_distance


def test_fit_model_proximal_mu_drifts_less() -> None:
    X, y = _toy_training_set(1)
    free = build_cnn_lstm(4, 1, 2, conv_filters=4, lstm_units=4, dense_units=4, learning_rate=0.01)
    pulled = keras.models.clone_model(free)
    pulled.set_weights(free.get_weights())
    pulled.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    start = [np.array(variable.numpy()) for variable in free.trainable_variables]

    fit_model(free, X, y, epochs=3, batch_size=16, seed=3)
    fit_model(pulled, X, y, epochs=3, batch_size=16, seed=3, proximal_mu=20.0)

    def drift(model: keras.Model) -> float:
        return float(
            sum(np.sum((v.numpy() - s) ** 2) for v, s in zip(model.trainable_variables, start, strict=True))
        )

    assert 0 < drift(pulled) < drift(free)


@pytest.mark.parametrize("mu", [-1.0, float("nan"), float("inf")])
def test_proximal_step_invalid_mu(mu: float) -> None:
    with pytest.raises(ValueError, match="mu must be a finite number >= 0"):
        ProximalStep(mu)
    with pytest.raises(ValueError, match="mu must be a finite number >= 0"):
        fit_model(keras.Sequential(), np.zeros((1, 1, 1)), np.zeros(1), epochs=1, batch_size=1, proximal_mu=mu)


def test_fit_model_proximal_step_above_one_rejected() -> None:
    X, y = _toy_training_set()
    model = build_cnn_lstm(4, 1, 2, conv_filters=4, lstm_units=4, dense_units=4, learning_rate=0.1)

    # 0.1 x 20 = 2: each proximal step would overshoot the global weights by their whole distance.
    with pytest.raises(ValueError, match=r"proximal mu 20 times learning rate 0\.1 is 2; it must be at most 1"):
        fit_model(model, X, y, epochs=1, batch_size=16, proximal_mu=20.0)


def test_fit_model_progress_lines(caplog: pytest.LogCaptureFixture) -> None:
    keras.utils.set_random_seed(5)
    X_train, y_train = _toy(120, 0)
    X_val, y_val = _toy(30, 1)
    model = build_cnn_lstm(5, 1, 3, conv_filters=8, lstm_units=8, dense_units=8, dropout=0.0, learning_rate=0.01)

    with caplog.at_level(logging.INFO, logger="common.training"):
        history = fit_model(
            model, X_train, y_train, X_val, y_val, epochs=5, batch_size=32, monitor="val_macro_f1", progress_every=2
        )

    lines = [record.getMessage() for record in caplog.records if record.getMessage().startswith("fit: epoch")]
    assert len(lines) == 2
    assert lines[0].startswith("fit: epoch 2 of at most 5, ")
    assert lines[1].startswith("fit: epoch 4 of at most 5, ")
    assert f"val_macro_f1 {history['val_macro_f1'][3]:.4f}" in lines[1]
    assert f"loss {history['loss'][1]:.4f}" in lines[0]


def test_epoch_progress_rejects_zero() -> None:
    with pytest.raises(ValueError, match="every must be at least 1, got 0"):
        EpochProgress(0, 10)
