"""Export the global model to ONNX for the sites' fast detection path.

The coordinator exports once per published round and puts ``model.onnx``
into the signed bundle, instead of each site converting at load time.
Sites then need only onnxruntime (no tf2onnx, no TensorFlow for detection),
and the exported file is covered by the signature like the weights. The
agreement check below runs once, on the coordinator, where an operator
reads the log.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.exceptions import ModelMismatchError

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

#: Largest absolute difference in any class probability between the exported
#: model and Keras that is accepted.
ONNX_TOLERANCE = 1e-4

#: Random windows in [0, 1] (the range of scaled features) used for the check.
CHECK_WINDOWS = 512


def export_onnx(model: keras.Model, path: str | os.PathLike[str], *, seed: int = 0) -> float:
    """Write ``model`` as ONNX to ``path`` and check that it agrees with Keras.

    Parameters
    ----------
    model : keras.Model
        Input ``(batch, W, n_features)``; the batch axis stays dynamic.
    path : path-like
        Output ``.onnx`` file.
    seed : int
        Seed of the random check windows.

    Returns
    -------
    float
        Largest absolute probability difference on the check windows.

    Raises
    ------
    ImportError
        If tf2onnx or onnxruntime is missing.
    ModelMismatchError
        If the exported model differs from Keras by more than
        :data:`ONNX_TOLERANCE`; the file is removed then.
    """
    import tf2onnx  # noqa: F401  (Keras' ONNX export needs it; fail early with a clear ImportError)

    from common.inference import KerasPredictor, OnnxPredictor

    target = Path(path)
    window, n_features = (int(size) for size in model.input_shape[1:])
    X = np.random.default_rng(seed).random((CHECK_WINDOWS, window, n_features), dtype=np.float32)
    # Keras exports only a model that has been called once, which a freshly loaded one has not.
    expected = KerasPredictor(model).predict(X)
    model.export(str(target), format="onnx", verbose=False)
    difference = float(np.max(np.abs(OnnxPredictor(str(target)).predict(X) - expected)))
    if not difference <= ONNX_TOLERANCE:
        target.unlink(missing_ok=True)
        raise ModelMismatchError(
            f"ONNX export of {model.name!r} differs from Keras by {difference:.2e} on {CHECK_WINDOWS} random windows, "
            f"more than {ONNX_TOLERANCE:.0e}; the bundle is published without model.onnx"
        )
    logger.info("export: wrote %s (%d bytes), max difference to Keras %.1e", target, target.stat().st_size, difference)
    return difference
