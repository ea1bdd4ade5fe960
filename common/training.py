"""Local training and prediction loops shared by every role."""

from __future__ import annotations

import logging
import time
from typing import Any

import keras
import numpy as np

from common.config import check_proximal_step

logger = logging.getLogger(__name__)

#: Samples per forward pass when predicting; large batches are faster and
#: memory stays small because windows are short.
PREDICT_BATCH_SIZE = 4096

#: Quantities early stopping can watch, with the direction that is better.
MONITOR_MODES = {"val_loss": "min", "val_macro_f1": "max"}


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, min_support: int = 0) -> float:
    """Return the unweighted mean F1 over the classes that occur in ``y_true`` or ``y_pred``.

    Parameters
    ----------
    y_true, y_pred : ndarray of shape (n_samples,)
        True and predicted class indices.
    min_support : int, default=0
        Leave out classes with fewer than ``min_support`` true samples. With
        a positive value, classes that are predicted but never true are left
        out as well.

    Returns
    -------
    float
        Macro-F1 in [0, 1]; a class that is predicted but never true, or true
        but never predicted, counts with F1 0. 0.0 for empty input or when
        no class has ``min_support`` samples.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    if len(y_true) == 0:
        return 0.0
    classes = np.union1d(y_true, y_pred)
    if min_support > 0:
        supported = [label for label in classes if np.sum(y_true == label) >= min_support]
        if not supported:
            return 0.0
        classes = np.asarray(supported)
    scores = []
    for label in classes:
        true_positive = float(np.sum((y_true == label) & (y_pred == label)))
        predicted = float(np.sum(y_pred == label))
        actual = float(np.sum(y_true == label))
        scores.append(2.0 * true_positive / (predicted + actual))
    return float(np.mean(scores))


class ValidationMacroF1(keras.callbacks.Callback):
    """Add ``val_macro_f1`` (macro-F1 on the validation windows) to each epoch's logs.

    Placed before :class:`keras.callbacks.EarlyStopping` in the callback
    list, it lets early stopping keep the epoch with the best macro-F1, the
    score a multi-class detector is judged by, instead of the lowest loss.
    Classes with fewer than ``min_support`` validation windows are left out
    of the score (see :func:`macro_f1`).
    """

    def __init__(self, X_val: np.ndarray, y_val: np.ndarray, min_support: int = 0) -> None:
        super().__init__()
        self.X_val = X_val
        self.y_val = y_val
        self.min_support = min_support

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is None:
            return
        proba = self.model.predict(self.X_val, batch_size=PREDICT_BATCH_SIZE, verbose=0)
        logs["val_macro_f1"] = macro_f1(self.y_val, np.asarray(proba).argmax(axis=1), self.min_support)


class EpochProgress(keras.callbacks.Callback):
    """Log the epoch number, the training loss and the validation scores every ``every`` epochs.

    A centralized model may train for a hundred epochs and a quarter of an
    hour, so the log shows its progress and its current validation scores.
    Placed after :class:`ValidationMacroF1`, it also logs ``val_macro_f1``.
    """

    def __init__(self, every: int, epochs: int) -> None:
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be at least 1, got {every}")
        self.every = every
        self.epochs = epochs
        self._started = 0.0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if (epoch + 1) % self.every != 0:
            return
        scores = ", ".join(f"{key} {float(value):.4f}" for key, value in sorted((logs or {}).items()))
        elapsed = time.perf_counter() - self._started
        logger.info("fit: epoch %d of at most %d, %s, %.0f s", epoch + 1, self.epochs, scores, elapsed)


class ProximalStep(keras.callbacks.Callback):
    """Pull the trainable weights towards the weights they had when training began, after every batch.

    This is the proximal term of FedProx (Li et al., "Federated Optimization
    in Heterogeneous Networks", MLSys 2020): a site minimises its loss plus
    ``mu / 2 * ||w - w_global||^2``, so that sites with very different label
    mixes drift less far from the global model within one round. The term's
    gradient ``mu * (w - w_global)`` is applied as a separate step
    ``w -= learning_rate * mu * (w - w_global)`` after the optimiser's step,
    as AdamW applies weight decay, so Adam's per-weight scaling does not
    change its strength. ``learning_rate * mu`` must be at most 1 (see
    :func:`common.config.check_proximal_step`).
    """

    def __init__(self, mu: float) -> None:
        super().__init__()
        if not (mu >= 0 and np.isfinite(mu)):
            raise ValueError(f"mu must be a finite number >= 0, got {mu}")
        self.mu = mu
        self._anchors: list[np.ndarray] = []

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        check_proximal_step(self.mu, float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)))
        self._anchors = [np.array(variable.numpy()) for variable in self.model.trainable_variables]

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)) * self.mu
        for variable, anchor in zip(self.model.trainable_variables, self._anchors, strict=True):
            variable.assign(variable - rate * (variable - anchor))


def fit_model(
    model: keras.Model,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    *,
    epochs: int,
    batch_size: int,
    patience: int | None = None,
    monitor: str = "val_loss",
    monitor_min_support: int = 0,
    proximal_mu: float = 0.0,
    seed: int = 42,
    verbose: int = 0,
    progress_every: int = 0,
) -> dict[str, list[float]]:
    """Train ``model`` in place, with early stopping on validation data when it is given.

    Parameters
    ----------
    X_train : ndarray of shape (n_samples, W, n_features)
    y_train : ndarray of shape (n_samples,)
    X_val, y_val : ndarrays, optional
        Validation windows. Early stopping restores the weights of the epoch
        with the best value of ``monitor``.
    epochs, batch_size, patience : int
        Epoch limit, batch size and epochs without improvement before stopping.
    monitor : {"val_loss", "val_macro_f1"}, default="val_loss"
        What early stopping watches: the validation loss (lower is better)
        or the validation macro-F1 (higher is better).
    monitor_min_support : int, default=0
        With ``monitor="val_macro_f1"``, leave classes with fewer validation
        windows than this out of the macro-F1. A class with one or two
        validation windows can move the score by ``1 / n_classes`` in one
        epoch, so early stopping could keep an epoch that got those few
        windows right by chance.
    proximal_mu : float, default=0.0
        Strength of the FedProx proximal term that keeps the weights near
        the ones the model had before this call (see :class:`ProximalStep`);
        0 trains without it.
    seed : int
        Shuffling seed.
    verbose : int, default=0
        Keras' own progress output (0 is silent).
    progress_every : int, default=0
        Log the losses and validation scores at INFO level every this many
        epochs (see :class:`EpochProgress`); 0 logs nothing.

    Returns
    -------
    dict of str to list of float
        Keras' per-epoch history (``loss``, ``accuracy``, ``val_loss`` and,
        when watched, ``val_macro_f1``).

    Raises
    ------
    ValueError
        If ``monitor`` is not one of :data:`MONITOR_MODES`, ``proximal_mu``
        is negative or not finite, or ``proximal_mu`` times the model's
        learning rate is above 1.
    """
    if monitor not in MONITOR_MODES:
        raise ValueError(f"monitor must be one of {list(MONITOR_MODES)}, got {monitor!r}")
    # ProximalStep rejects a negative or non-finite mu, so only an exact 0 skips it.
    callbacks: list[Any] = [ProximalStep(proximal_mu)] if proximal_mu != 0 else []
    validation = None
    if X_val is not None and y_val is not None and len(y_val) > 0:
        validation = (X_val, y_val)
        if monitor == "val_macro_f1":
            callbacks.append(ValidationMacroF1(X_val, y_val, monitor_min_support))
        if patience:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor=monitor, mode=MONITOR_MODES[monitor], patience=patience, restore_best_weights=True
                )
            )
    if progress_every > 0:
        callbacks.append(EpochProgress(progress_every, epochs))
    # Shuffle with a seeded permutation so runs repeat without touching global seeds.
    order = np.random.default_rng(seed).permutation(len(y_train))
    history = model.fit(
        X_train[order],
        y_train[order],
        validation_data=validation,
        epochs=epochs,
        batch_size=batch_size,
        callbacks=callbacks,
        verbose=verbose,
        shuffle=True,
    )
    return {key: [float(v) for v in values] for key, values in history.history.items()}


def predict_proba(model: keras.Model, X: np.ndarray) -> np.ndarray:
    """Return class probabilities of shape ``(n_samples, n_classes)``."""
    if len(X) == 0:
        return np.empty((0, int(model.output_shape[-1])), dtype=np.float32)
    return np.asarray(model.predict(X, batch_size=PREDICT_BATCH_SIZE, verbose=0))
