"""Class probabilities from a bundle's model, with ONNX Runtime when it is available.

Two runtimes give the same probabilities (the coordinator checks that the
exported model agrees with Keras within 1e-4 before it publishes it):

- :class:`OnnxPredictor` runs the bundle's ``model.onnx`` with ONNX Runtime.
  It needs neither TensorFlow nor Keras, starts in well under a second and is
  the faster runtime for the project's CNN-LSTM on a CPU (see
  ``simulations/BENCHMARKS.md``);
- :class:`KerasPredictor` runs ``model.keras``; it is the fallback when the
  bundle has no ONNX file or onnxruntime is not installed.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from common.exceptions import ConfigError, ModelMismatchError

if TYPE_CHECKING:
    import keras

    from common.bundle import Bundle

logger = logging.getLogger(__name__)

#: Windows per call of the runtime. ONNX Runtime's LSTM was fastest with
#: batches of about a hundred windows on this project's 2-core machine (more did
#: not fit the LSTM state in the core's cache),
#: while Keras' predict loop amortises its per-call overhead over larger ones.
ONNX_BATCH_SIZE = 128
KERAS_BATCH_SIZE = 4096

Runtime = Literal["auto", "onnx", "keras"]
RUNTIMES: tuple[str, ...] = ("auto", "onnx", "keras")


class Predictor(Protocol):
    """Anything that turns windows into class probabilities."""

    name: str

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Return probabilities of shape (n_windows, n_classes) for X of shape (n_windows, W, n_features)."""
        ...


class KerasPredictor:
    """Predict with a Keras model.

    Parameters
    ----------
    model : keras.Model
        Input ``(batch, W, n_features)``, softmax output ``(batch, n_classes)``.
    batch_size : int
        Windows per forward pass.
    """

    name = "keras"

    def __init__(self, model: keras.Model, batch_size: int = KERAS_BATCH_SIZE) -> None:
        self.model = model
        self.batch_size = batch_size
        self.n_classes = int(model.output_shape[-1])

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Return probabilities of shape (n_windows, n_classes), float32."""
        if len(X) == 0:
            return np.empty((0, self.n_classes), dtype=np.float32)
        return np.asarray(self.model.predict(X, batch_size=self.batch_size, verbose=0), dtype=np.float32)


class OnnxPredictor:
    """Predict with an ONNX model in ONNX Runtime's CPU execution provider.

    The session runs each call on one thread, and ``threads`` worker threads
    score batches in parallel. ONNX Runtime releases the GIL inside ``run``,
    and on a busy machine one single-threaded run per core lost far less to
    contention than ONNX Runtime's own intra-op thread pool
    (simulations/benchmark_detection.py).

    Parameters
    ----------
    path : path-like
        The ``.onnx`` file, with one float32 input of shape (batch, W, n_features).
    batch_size : int
        Windows per ``run`` call.
    threads : int, optional
        Parallel workers; ``None`` uses one per CPU core.

    Raises
    ------
    ImportError
        If onnxruntime is not installed.
    """

    name = "onnx"

    def __init__(self, path: str, batch_size: int = ONNX_BATCH_SIZE, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        output_shape = self.session.get_outputs()[0].shape
        self.n_classes = int(output_shape[-1]) if isinstance(output_shape[-1], int) else 0
        self.batch_size = batch_size
        self.threads = max(1, threads if threads is not None else (os.cpu_count() or 1))
        self._pool: ThreadPoolExecutor | None = None

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: batch})[0])

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Return probabilities of shape (n_windows, n_classes), float32."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        if len(X) == 0:
            return np.empty((0, self.n_classes), dtype=np.float32)
        batches = [X[start : start + self.batch_size] for start in range(0, len(X), self.batch_size)]
        if self.threads == 1 or len(batches) == 1:
            parts = [self._run(batch) for batch in batches]
        else:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="onnx")
            parts = list(self._pool.map(self._run, batches))
        return np.concatenate(parts).astype(np.float32, copy=False)


def onnxruntime_available() -> bool:
    """Return whether the onnxruntime package can be imported."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def make_predictor(
    bundle: Bundle, runtime: str = "auto", *, batch_size: int | None = None, threads: int | None = None
) -> Predictor:
    """Choose and build the runtime for a bundle's model.

    Parameters
    ----------
    bundle : Bundle
        A verified bundle.
    runtime : {"auto", "onnx", "keras"}
        ``"auto"`` uses ONNX Runtime when the bundle has ``model.onnx`` and
        onnxruntime is installed, else Keras, and logs an INFO line saying why.
    batch_size : int, optional
        Windows per call; the runtime's default when omitted.
    threads : int, optional
        Parallel ONNX Runtime workers (default: one per core).

    Raises
    ------
    ConfigError
        If ``runtime`` is unknown, or ``"onnx"`` is requested but unavailable.
    ModelMismatchError
        If the model does not match the bundle's preprocessing.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}; choose one of {list(RUNTIMES)}")
    onnx_path = bundle.onnx_path
    if runtime in ("auto", "onnx"):
        reason = ""
        if onnx_path is None:
            reason = f"bundle {bundle.version} has no model.onnx"
        elif not onnxruntime_available():
            reason = "onnxruntime is not installed (pip install onnxruntime)"
        if not reason and onnx_path is not None:
            predictor = OnnxPredictor(str(onnx_path), batch_size or ONNX_BATCH_SIZE, threads)
            _check_onnx_shape(predictor, bundle)
            logger.info("runtime: ONNX Runtime with %s", onnx_path.name)
            return predictor
        if runtime == "onnx":
            raise ConfigError(f"runtime 'onnx' requested, but {reason}; use --runtime keras or auto")
        logger.info("runtime: Keras, because %s", reason)
    return KerasPredictor(bundle.model, batch_size or KERAS_BATCH_SIZE)


def _check_onnx_shape(predictor: OnnxPredictor, bundle: Bundle) -> None:
    shape = predictor.session.get_inputs()[0].shape
    expected = [bundle.preprocessor.window, bundle.preprocessor.n_features]
    if list(shape[1:]) != expected or predictor.n_classes != bundle.preprocessor.n_classes:
        raise ModelMismatchError(
            f"{bundle.onnx_path}: ONNX input {shape[1:]} and {predictor.n_classes} outputs do not match the "
            f"preprocessing, which gives input {expected} and {bundle.preprocessor.n_classes} classes"
        )
