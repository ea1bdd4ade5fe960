"""The site's model bundle and the detection path behind the console's upload page.

The detection modules import TensorFlow, which takes seconds, so they are
imported when the console loads its model rather than when the package is
imported: ``create-admin`` and ``create-user`` never need them.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """Details of the model in use, shown on every page."""

    version: str
    signature_verified: bool
    normal_class: str
    classes: tuple[str, ...]
    path: str


class Detector:
    """A loaded model bundle and a lock, so one analysis at a time uses the model.

    Parameters
    ----------
    bundle : common.bundle.Bundle
        The verified bundle from :func:`common.bundle.load_bundle`.
    """

    # TODO: type `bundle` as common.bundle.Bundle and the result as
    # client.detect.DetectionResult once the model-distribution modules are on this branch.
    def __init__(self, bundle: Any) -> None:
        self.bundle = bundle
        self._lock = threading.Lock()
        preprocessor = bundle.preprocessor
        self.info = ModelInfo(
            version=str(bundle.version),
            signature_verified=bool(bundle.signature_verified),
            normal_class=str(preprocessor.normal_class),
            classes=tuple(str(name) for name in preprocessor.classes),
            path=str(bundle.path),
        )

    def detect(self, path: Path) -> Any:
        """Score one traffic file with :func:`client.detect.detect_file`.

        Raises
        ------
        FedIDSError
            A subclass naming what is wrong with the file, for any file the
            training loader rejects.
        """
        from client.detect import detect_file

        with self._lock:
            return detect_file(self.bundle, path)


def load_detector(model_path: Path, public_key: Path | None) -> Detector:
    """Load and verify the bundle at ``model_path`` with :func:`common.bundle.load_bundle`.

    Parameters
    ----------
    model_path : Path
        The bundle folder or archive.
    public_key : Path or None
        PEM file of the coordinator's signing key; ``None`` uses the key configured for this site.

    Raises
    ------
    FedIDSError
        ``BundleVerificationError`` naming the file whose signature or hash
        failed, or another subclass for a missing or malformed bundle.
    """
    # TODO: import at the top once common.bundle.load_bundle is on this branch.
    bundles = importlib.import_module("common.bundle")
    bundle = bundles.load_bundle(model_path, public_key=public_key)
    detector = Detector(bundle)
    logger.info(
        "model: loaded %s from %s (signature %s)",
        detector.info.version, model_path, "verified" if detector.info.signature_verified else "not verified",
    )
    return detector
