"""Stand-in for the detection interface (``client.detect`` and ``common.bundle.load_bundle``) in console tests.

It reads files with the real training loader, so hostile uploads fail
exactly as they would with the real model, and it "predicts" each flow's own
label, so the expected alert episodes of a labelled file are known in advance.
"""

from __future__ import annotations

import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.config import load_dataset_config
from common.loading import load_flows

STAND_IN_VERSION = "stand-in-run/round-003"


@dataclass
class StandInEpisode:
    first_row: int
    last_row: int
    predicted: str
    flows: int
    peak_probability: float


@dataclass
class StandInResult:
    predictions: pd.DataFrame
    class_counts: dict[str, int]
    episodes: list[StandInEpisode]
    model_version: str
    signature_verified: bool
    rows_read: int
    rows_scored: int
    seconds: float

    def to_summary(self) -> dict[str, Any]:
        return {"class_counts": self.class_counts, "episodes": [vars(episode) for episode in self.episodes]}

    def write_predictions(self, path: str | Path) -> None:
        self.predictions.to_csv(path, index=False)


@dataclass
class StandInPreprocessor:
    classes: tuple[str, ...] = ("normal", "attack")
    normal_class: str = "normal"


@dataclass
class StandInBundle:
    path: Path = Path("/models/stand-in")
    version: str = STAND_IN_VERSION
    signature_verified: bool = True
    preprocessor: StandInPreprocessor = field(default_factory=StandInPreprocessor)
    metrics: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    model: Any = None


def _episodes(predicted: list[str], rows: np.ndarray, probability: np.ndarray, normal: str) -> list[StandInEpisode]:
    episodes: list[StandInEpisode] = []
    start = None
    for position in range(len(predicted) + 1):
        is_attack = position < len(predicted) and predicted[position] != normal
        if is_attack and start is None:
            start = position
        elif not is_attack and start is not None:
            names = predicted[start:position]
            episodes.append(
                StandInEpisode(
                    first_row=int(rows[start]),
                    last_row=int(rows[position - 1]),
                    predicted=max(set(names), key=names.count),
                    flows=position - start,
                    peak_probability=float(probability[start:position].max()),
                )
            )
            start = None
    return episodes


def detect_file(bundle: StandInBundle, path: str | Path, **_options: Any) -> StandInResult:
    started = time.perf_counter()
    table = load_flows(path, load_dataset_config("wustl-ehms-2020"), "binary")
    assert table.labels is not None and table.source_rows is not None
    classes = bundle.preprocessor.classes
    predicted = [classes[index] for index in table.labels]
    # Deterministic "probabilities": 0.9 for attacks, 0.1 for normal flows.
    attack_probability = np.where(table.labels == 1, 0.9, 0.1)
    predictions = pd.DataFrame(
        {
            "row": table.source_rows,
            "predicted": predicted,
            "probability": 0.9,
            "attack_probability": attack_probability,
            "label": predicted,
        }
    )
    counts = {name: predicted.count(name) for name in classes if predicted.count(name)}
    return StandInResult(
        predictions=predictions,
        class_counts=counts,
        episodes=_episodes(predicted, table.source_rows, attack_probability, bundle.preprocessor.normal_class),
        model_version=str(bundle.version),
        signature_verified=bundle.signature_verified,
        rows_read=table.report.rows_read,
        rows_scored=len(predictions),
        seconds=time.perf_counter() - started,
    )


def stand_in_module() -> types.ModuleType:
    """Return a module object that replaces ``client.detect``."""
    module = types.ModuleType("client.detect")
    module.detect_file = detect_file  # type: ignore[attr-defined]
    module.DetectionResult = StandInResult  # type: ignore[attr-defined]
    module.Episode = StandInEpisode  # type: ignore[attr-defined]
    return module
