"""Local training and prediction loops shared by every role."""

from __future__ import annotations

import logging
from typing import Any

import keras
import numpy as np

logger = logging.getLogger(__name__)

#: Samples per forward pass when predicting; large batches are faster and
#: memory stays small because windows are short.
PREDICT_BATCH_SIZE = 4096


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
    seed: int = 42,
    verbose: int = 0,
) -> dict[str, list[float]]:
    """Train ``model`` in place, with early stopping on validation loss when validation data is given.

    Parameters
    ----------
    X_train : ndarray of shape (n_samples, W, n_features)
    y_train : ndarray of shape (n_samples,)
    X_val, y_val : ndarrays, optional
        Validation windows. Early stopping restores the weights of the epoch
        with the lowest validation loss.
    epochs, batch_size, patience : int
        Epoch limit, batch size and epochs without improvement before stopping.
    seed : int
        Shuffling seed.

    Returns
    -------
    dict of str to list of float
        Keras' per-epoch history (``loss``, ``accuracy``, ``val_loss``, ...).
    """
    callbacks: list[Any] = []
    validation = None
    if X_val is not None and y_val is not None and len(y_val) > 0:
        validation = (X_val, y_val)
        if patience:
            callbacks.append(
                keras.callbacks.EarlyStopping(
                    monitor="val_loss", patience=patience, restore_best_weights=True
                )
            )
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
