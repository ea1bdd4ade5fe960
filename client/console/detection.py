"""The site's model bundle and the detection path behind the console's upload page."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from client.detect import DetectionResult, detect_file
from common.bundle import Bundle, load_bundle
from common.inference import Predictor, make_predictor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """Details of the model in use, shown on every page."""

    version: str
    signature_verified: bool
    normal_class: str
    classes: tuple[str, ...]
    window: int
    runtime: str
    path: str


class Detector:
    """A verified bundle with its runtime, and a lock so that one analysis at a time uses them.

    Parameters
    ----------
    bundle : Bundle
        From :func:`common.bundle.load_bundle`.
    predictor : Predictor or None
        The runtime that scores windows; ``None`` builds it once here with
        :func:`common.inference.make_predictor` (ONNX Runtime when the bundle
        has ``model.onnx``, else Keras), so no upload pays for building it.
    """

    def __init__(self, bundle: Bundle, predictor: Predictor | None = None) -> None:
        self.bundle = bundle
        self.predictor = predictor if predictor is not None else make_predictor(bundle)
        self._lock = threading.Lock()
        self.info = ModelInfo(
            version=str(bundle.version),
            signature_verified=bundle.signature_verified,
            normal_class=bundle.preprocessor.normal_class,
            classes=tuple(bundle.preprocessor.classes),
            window=bundle.preprocessor.window,
            runtime=self.predictor.name,
            path=str(bundle.source or bundle.path),
        )

    def detect(self, path: Path) -> DetectionResult:
        """Score one traffic file with :func:`client.detect.detect_file`.

        Raises
        ------
        FedIDSError
            A subclass naming what is wrong with the file, for any file that
            the training loader or the bundle's column check rejects.
        """
        with self._lock:
            return detect_file(self.bundle, path, predictor=self.predictor)


def load_detector(model_path: Path, public_key: Path | None, *, require_signature: bool = True) -> Detector:
    """Load and verify the bundle at ``model_path``, and build its runtime.

    Parameters
    ----------
    model_path : Path
        The bundle folder or ``.tar.gz`` archive.
    public_key : Path or None
        PEM file of the coordinator's signing key; ``None`` uses the file
        named by ``FEDIDS_BUNDLE_PUBLIC_KEY``.
    require_signature : bool
        Reject an unsigned bundle or one without a key to check it with.

    Raises
    ------
    BundleVerificationError
        Naming the file whose signature or checksum failed, or the missing bundle.
    """
    bundle = load_bundle(model_path, public_key, require_signature=require_signature)
    detector = Detector(bundle)
    if not detector.info.signature_verified:
        logger.warning("model: serving %s WITHOUT a verified signature", detector.info.version)
    logger.info(
        "model: loaded %s from %s (W=%d, runtime %s)",
        detector.info.version, model_path, detector.info.window, detector.info.runtime,
    )
    return detector
