"""Benchmark the data pipeline and one training epoch on a full dataset file.

Example::

    python simulations/benchmark_pipeline.py --dataset wustl-ehms-2020 --repeat 5

Reports, as JSON on standard output and optionally into ``--out``:
throughput of each preprocessing step in rows per second (median of
``--repeat`` runs), seconds per training epoch of the CNN-LSTM at each window
length, and the peak resident memory of the process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras

from common.config import DATA_DIR_ENV, load_dataset_config, resolve_data_dir
from common.exceptions import FedIDSError
from common.loading import clean_flows, read_flow_csv
from common.model import build_model_from_config
from common.preprocessing import FeatureStatistics, Preprocessor
from common.resampling import resample_training
from common.splits import make_splits
from common.windows import windows_for_runs


def _median_seconds(step: Callable[[], object], repeat: int) -> float:
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        step()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def _peak_memory_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_benchmark(dataset: str, data_dir: Path, repeat: int, windows: Sequence[int], epochs: int) -> dict[str, Any]:
    """Time each pipeline step and one training epoch per window length."""
    config = load_dataset_config(dataset)
    task = config.task()
    path = config.data_paths(data_dir)[0]

    frame = read_flow_csv(path)
    n_rows = len(frame)
    read_seconds = _median_seconds(lambda: read_flow_csv(path), repeat)
    clean_seconds = _median_seconds(lambda: clean_flows(frame, config, task, source=str(path)), repeat)
    table = clean_flows(frame, config, task, source=str(path))
    assert table.labels is not None

    split = make_splits(config, table.labels, folds=False)[0]
    train_rows = split.rows("train")
    train_features = table.features.iloc[train_rows]
    fit_seconds = _median_seconds(lambda: FeatureStatistics.fit(train_features, config), repeat)
    preprocessor = Preprocessor.from_statistics(FeatureStatistics.fit(train_features, config), config, task.name)
    transform_seconds = _median_seconds(lambda: preprocessor.transform(table.features), repeat)
    X = preprocessor.transform(table.features)

    steps = {
        "read_csv": read_seconds,
        "clean": clean_seconds,
        "fit_statistics": fit_seconds,
        "transform": transform_seconds,
    }
    results: dict[str, Any] = {
        "dataset": dataset,
        "file": str(path),
        "rows": n_rows,
        "repeat": repeat,
        "steps_seconds": steps,
        "rows_per_second": {
            name: (len(train_rows) if name == "fit_statistics" else n_rows) / seconds
            for name, seconds in steps.items()
        },
        "clean_and_transform_rows_per_second": n_rows / (clean_seconds + transform_seconds),
        "end_to_end_rows_per_second": n_rows / (read_seconds + clean_seconds + transform_seconds),
        "epochs": {},
    }

    for window in windows:
        labels = table.labels
        window_seconds = _median_seconds(
            lambda: windows_for_runs(X, labels, split.train, window),  # noqa: B023
            repeat,
        )
        X_train, y_train, _ = windows_for_runs(X, table.labels, split.train, window)
        assert y_train is not None
        started = time.perf_counter()
        X_train, y_train, _ = resample_training(
            X_train,
            y_train,
            k_neighbors=config.training.smote_k_neighbors,
            max_ratio=config.training.oversample_max_ratio,
            seed=config.training.seed,
        )
        smote_seconds = time.perf_counter() - started
        keras.utils.set_random_seed(config.training.seed)
        model = build_model_from_config(preprocessor.n_features, window, task.n_classes, config.model)
        epoch_seconds = []
        for _ in range(epochs):
            started = time.perf_counter()
            model.fit(X_train, y_train, epochs=1, batch_size=config.training.batch_size, verbose=0)
            epoch_seconds.append(time.perf_counter() - started)
        results["epochs"][str(window)] = {
            "windows_seconds": window_seconds,
            "smote_seconds": smote_seconds,
            "training_samples": len(y_train),
            # The first epoch includes graph tracing, so it is reported apart.
            "first_epoch_seconds": epoch_seconds[0],
            "epoch_seconds_median": statistics.median(epoch_seconds[1:] or epoch_seconds),
        }
    results["peak_memory_mb"] = _peak_memory_mb()
    results["machine"] = {
        "processor": platform.processor() or platform.machine(),
        "cpus": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
    }
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="wustl-ehms-2020", help="dataset configuration name")
    parser.add_argument("--data-dir", help=f"folder with the dataset files (default: ${DATA_DIR_ENV}, then ./data)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per timed step; the median is reported")
    parser.add_argument("--windows", default="1,16", help="window lengths to time training for (default: 1,16)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed per window length (default: 3)")
    parser.add_argument("--out", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    windows = [int(part) for part in args.windows.split(",")]
    try:
        results = run_benchmark(args.dataset, resolve_data_dir(args.data_dir), args.repeat, windows, args.epochs)
    except FedIDSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
