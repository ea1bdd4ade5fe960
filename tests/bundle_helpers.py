"""A toy dataset, model and signing key for bundle, registry, pull and detection tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from common.bundle import save_model
from common.model import build_cnn_lstm
from common.preprocessing import Preprocessor

#: Two numeric features, one flag column and a binary label given as 0/1.
TOY_DATASET_TOML = """
[dataset]
name = "toy"
files = ["toy.csv"]
capture_order = true
default_task = "binary"
identifier_columns = ["SrcAddr"]
missing_values = "impute"
log_transform = false
drop_duplicates = true

[features]
numeric = ["a", "b"]

[features.categorical]
flag = ["x", "y"]

[tasks.binary]
label_column = "Label"
classes = ["normal", "attack"]
normal_class = "normal"
label_values = { "0" = "normal", "1" = "attack" }

[model]
conv_filters = 4
kernel_size = 2
pool_size = 2
lstm_units = 4
dense_units = 4
dropout = 0.0
"""


def write_toy_dataset(folder: Path) -> Path:
    """Write the toy dataset configuration and return its path."""
    path = folder / "toy.toml"
    path.write_text(TOY_DATASET_TOML, encoding="utf-8")
    return path


def toy_preprocessor(window: int = 1) -> Preprocessor:
    """Scale ``a`` and ``b`` from [0, 10] to [0, 1]; one-hot ``flag`` over x, y and unknown."""
    return Preprocessor(
        dataset="toy",
        task="binary",
        label_column="Label",
        classes=("normal", "attack"),
        normal_class="normal",
        numeric_features=("a", "b"),
        categorical_features={"flag": ("x", "y")},
        log_transform=False,
        minimum=np.array([0.0, 0.0]),
        maximum=np.array([10.0, 10.0]),
        fill_value=np.array([5.0, 5.0]),
        window=window,
    )


def round_metrics(server_round: int, val_f1: float | None, test_f1: float = 0.5) -> dict[str, Any]:
    """Return a round's metrics.json content with the given validation and test F1."""
    validation = None if val_f1 is None else {"f1": val_f1, "macro_f1": val_f1, "fpr": 0.01, "n_samples": 100}
    return {
        "round": server_round,
        "metrics": {"f1": test_f1, "fpr": 0.02, "accuracy": 0.9, "n_samples": 200},
        "validation_metrics": validation,
        "loss": 0.3,
    }


def write_toy_round(
    folder: Path, server_round: int = 1, val_f1: float | None = 0.8, window: int = 1, seed: int = 0
) -> Path:
    """Save a small untrained toy model as a checkpoint round folder and return the folder."""
    import keras

    keras.utils.set_random_seed(seed)
    preprocessor = toy_preprocessor(window)
    model = build_cnn_lstm(
        preprocessor.n_features, window, 2, conv_filters=4, kernel_size=2, lstm_units=4, dense_units=4, dropout=0.0
    )
    save_model(folder, model, preprocessor, round_metrics(server_round, val_f1))
    return folder


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def train_wustl_round(
    folder: Path, wustl_path: Path, *, window: int, train_rows: int, epochs: int = 3, seed: int = 42
) -> Path:
    """Train a CNN-LSTM on the first ``train_rows`` cleaned WUSTL rows and save it as a checkpoint round.

    Scaling statistics come from those rows only; the rows after them stay
    unseen for detection tests.
    """
    import keras

    from common.config import load_dataset_config
    from common.loading import load_flows
    from common.model import build_model_from_config
    from common.preprocessing import FeatureStatistics
    from common.resampling import resample_training
    from common.training import fit_model
    from common.windows import make_windows

    config = load_dataset_config("wustl-ehms-2020")
    table = load_flows(wustl_path, config).take(slice(0, train_rows))
    assert table.labels is not None
    preprocessor = Preprocessor.from_statistics(FeatureStatistics.fit(table.features, config), config, window=window)
    X, y = make_windows(preprocessor.transform(table.features), table.labels, window)
    assert y is not None
    X, y, _ = resample_training(X, y, seed=seed)
    keras.utils.set_random_seed(seed)
    model = build_model_from_config(preprocessor.n_features, window, preprocessor.n_classes, config.model)
    fit_model(model, X, y, epochs=epochs, batch_size=256, seed=seed)
    save_model(folder, model, preprocessor, round_metrics(1, val_f1=None))
    return folder
