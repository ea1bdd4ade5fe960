"""The shared CNN-LSTM detector.

A one-dimensional convolution with ReLU and max-pooling extracts local
patterns, an LSTM reads the pooled sequence, and a dense softmax layer gives
class probabilities. The input is always a window of shape
``(window, n_features)``:

- with W = 1 the single flow's features are read as a sequence, so the
  convolution runs across the feature axis;
- with W > 1 the convolution runs across time, over the W consecutive flows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import keras
import numpy as np

from common.config import NORMALIZATIONS, ModelConfig
from common.exceptions import ModelMismatchError

logger = logging.getLogger(__name__)


def build_cnn_lstm(
    n_features: int,
    window: int,
    n_classes: int,
    *,
    conv_filters: int = 64,
    kernel_size: int = 3,
    pool_size: int = 2,
    lstm_units: int = 64,
    dense_units: int = 64,
    dropout: float = 0.3,
    learning_rate: float = 1e-3,
    normalization: str = "none",
) -> keras.Model:
    """Build and compile the CNN-LSTM.

    Parameters
    ----------
    n_features : int
        Input columns per flow after preprocessing.
    window : int
        Flows per sample, W >= 1.
    n_classes : int
        Output classes (2 for normal/attack).
    conv_filters, kernel_size, pool_size, lstm_units, dense_units : int
        Layer sizes. Pooling is skipped when the sequence is shorter than
        ``pool_size``.
    dropout : float
        Dropout rate after the LSTM and the dense layer.
    learning_rate : float
        Adam's learning rate, > 0.
    normalization : {"none", "layer", "batch"}, default="none"
        Normalisation of the pooled convolution features before the LSTM.
        Min-max scaled flow features are mostly near zero, so the
        convolution's outputs are small and uneven and the LSTM learns slowly
        from them. ``"layer"`` normalises each sample on its own and keeps no
        running statistics, so it behaves the same at every site.

    Returns
    -------
    keras.Model
        Input ``(batch, window, n_features)``, output ``(batch, n_classes)``
        softmax probabilities, compiled with Adam and sparse categorical
        cross-entropy.

    Raises
    ------
    ValueError
        If a size is below 1, ``n_classes`` is below 2, ``dropout`` is outside
        [0, 1], ``learning_rate`` is not positive or ``normalization`` is unknown.
    """
    if n_features < 1 or window < 1 or n_classes < 2:
        raise ValueError(
            "n_features and window must be >= 1 and n_classes >= 2; "
            f"got n_features={n_features}, window={window}, n_classes={n_classes}"
        )
    # Keras rejects the other invalid layer sizes itself, but a pool_size below 1
    # would silently skip pooling and a zero learning rate would silently never train.
    if pool_size < 1 or not learning_rate > 0:
        raise ValueError(
            f"pool_size must be >= 1 and learning_rate > 0; got pool_size={pool_size}, "
            f"learning_rate={learning_rate}"
        )
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, got {normalization!r}")
    inputs = keras.Input(shape=(window, n_features), name="flows")
    if window == 1:
        sequence = keras.layers.Reshape((n_features, 1), name="features_as_sequence")(inputs)
        sequence_length = n_features
    else:
        sequence = inputs
        sequence_length = window

    x = keras.layers.Conv1D(
        conv_filters, kernel_size, padding="same", activation="relu", name="conv"
    )(sequence)
    if sequence_length >= pool_size > 1:
        x = keras.layers.MaxPooling1D(pool_size, name="pool")(x)
    elif pool_size > 1:
        logger.warning(
            "model: the sequence has %d step(s), fewer than pool_size %d, so the model has no pooling layer",
            sequence_length,
            pool_size,
        )
    if normalization == "layer":
        x = keras.layers.LayerNormalization(name="normalization")(x)
    elif normalization == "batch":
        x = keras.layers.BatchNormalization(name="normalization")(x)
    x = keras.layers.LSTM(lstm_units, name="lstm")(x)
    x = keras.layers.Dropout(dropout, name="lstm_dropout")(x)
    x = keras.layers.Dense(dense_units, activation="relu", name="dense")(x)
    x = keras.layers.Dropout(dropout, name="dense_dropout")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="class_probabilities")(x)

    model = keras.Model(inputs, outputs, name=f"cnn_lstm_w{window}")
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def build_model_from_config(
    n_features: int, window: int, n_classes: int, config: ModelConfig
) -> keras.Model:
    """Build the CNN-LSTM with a dataset configuration's layer sizes for windows of ``window`` flows."""
    config = config.for_window(window)
    return build_cnn_lstm(
        n_features,
        window,
        n_classes,
        conv_filters=config.conv_filters,
        kernel_size=config.kernel_size,
        pool_size=config.pool_size,
        lstm_units=config.lstm_units,
        dense_units=config.dense_units,
        dropout=config.dropout,
        learning_rate=config.learning_rate,
        normalization=config.normalization,
    )


def get_weights(model: keras.Model) -> list[np.ndarray]:
    """Return the model's weights as a list of arrays, in layer order."""
    return [np.asarray(weight) for weight in model.get_weights()]


def set_weights(model: keras.Model, weights: Sequence[np.ndarray]) -> None:
    """Load ``weights`` into ``model`` after checking every shape.

    Raises
    ------
    ModelMismatchError
        If the number of arrays or any shape differs; the message names the
        model's and the received shapes.
    """
    expected = [tuple(weight.shape) for weight in model.weights]
    received = [tuple(np.shape(weight)) for weight in weights]
    if expected != received:
        raise ModelMismatchError(
            f"weights do not fit model {model.name!r}: the model expects {len(expected)} arrays "
            f"with shapes {expected}, received {len(received)} arrays with shapes {received}"
        )
    model.set_weights([np.asarray(weight) for weight in weights])
