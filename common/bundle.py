"""Saving and loading a trained model together with its preprocessing.

A model is useless without the exact preprocessing it was trained with, so
the two are always written side by side: ``model.keras``,
``preprocessing.json`` and ``metrics.json`` in one folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import keras

from common.exceptions import DataFileNotFoundError, ModelMismatchError
from common.preprocessing import Preprocessor

MODEL_FILE = "model.keras"
PREPROCESSING_FILE = "preprocessing.json"
METRICS_FILE = "metrics.json"


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Write ``payload`` as indented JSON, replacing the file atomically."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    temporary.replace(path)


def save_model(
    folder: str | os.PathLike[str],
    model: keras.Model,
    preprocessor: Preprocessor,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write the model, its preprocessing and optional metrics into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / MODEL_FILE)
    preprocessor.save(folder / PREPROCESSING_FILE)
    if metrics is not None:
        write_json(folder / METRICS_FILE, metrics)
    return folder


def load_model(folder: str | os.PathLike[str]) -> tuple[keras.Model, Preprocessor]:
    """Load a model folder written by :func:`save_model`.

    Raises
    ------
    DataFileNotFoundError
        If the model or preprocessing file is missing.
    ModelMismatchError
        If the model's input or output shape disagrees with the preprocessing.
    """
    folder = Path(folder)
    for name in (MODEL_FILE, PREPROCESSING_FILE):
        if not (folder / name).is_file():
            raise DataFileNotFoundError(f"model folder {folder} has no {name}")
    preprocessor = Preprocessor.load(folder / PREPROCESSING_FILE)
    model = keras.saving.load_model(folder / MODEL_FILE)
    expected_input = (preprocessor.window, preprocessor.n_features)
    expected_output = preprocessor.n_classes
    if tuple(model.input_shape[1:]) != expected_input or model.output_shape[-1] != expected_output:
        raise ModelMismatchError(
            f"{folder}: model input {tuple(model.input_shape[1:])} and output "
            f"{model.output_shape[-1]} do not match the preprocessing, which gives input "
            f"{expected_input} and {expected_output} classes"
        )
    return model, preprocessor
