"""Centralized baseline: train the CNN-LSTM on pooled data and compare classical detectors.

Example::

    python simulations/centralized.py --dataset wustl-ehms-2020 --out runs/centralized

For every fold (contiguous time blocks for data in capture order, stratified
shuffled folds otherwise; ``--holdout`` for a single split) the command trains one CNN-LSTM per
candidate window length, picks the length with the best validation F1, scores
every candidate on the test block, and runs the classical baselines on the
same split. It writes ``metrics.json`` and, for each fold, the model with its
preprocessing JSON; the top-level model is the last fold's, which was trained
on the traffic before the final test block.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.bundle import save_model, write_json
from common.config import (
    DATA_DIR_ENV,
    DatasetConfig,
    TaskConfig,
    load_dataset_config,
    resolve_data_dir,
)
from common.exceptions import ConfigError, FedIDSError
from common.loading import FlowTable, load_flows
from common.metrics import mean_metrics, metrics_from_counts
from common.pipeline import prepare_split
from common.splits import Split, make_splits
from simulations.arguments import LOG_LEVELS, non_negative_int, positive_int
from simulations.baselines import BASELINES, DEFAULT_BASELINES, run_baselines
from simulations.experiment import TrainedModel, train_and_evaluate

logger = logging.getLogger("simulations.centralized")


def load_dataset(
    config: DatasetConfig, task: TaskConfig, data_dir: Path, max_rows: int | None = None
) -> FlowTable:
    """Load the dataset's first file, optionally keeping only its first ``max_rows`` rows."""
    paths = config.data_paths(data_dir)
    if len(paths) > 1:
        logger.warning("load: %s lists %d files; only %s is used", config.name, len(paths), paths[0])
    table = load_flows(paths[0], config, task)
    if max_rows is not None and max_rows < len(table):
        table = table.take(np.arange(max_rows))
        logger.info("load: kept the first %d rows", max_rows)
    return table


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    defined = [value for value in values if value is not None]
    return float(np.mean(defined)) if defined else None


#: Scores recomputed from the confusion matrix summed over folds.
POOLED_KEYS = ("accuracy", "precision", "recall", "f1", "macro_f1", "fpr", "per_class")


def _fold_summary(fold_results: list[dict[str, Any]], task: TaskConfig, key: str = "test") -> dict[str, Any]:
    """Average the folds' scores, sum their confusion matrices and score the summed matrix.

    The means weigh every fold alike. A class with a few rows has no test row
    in some folds and drops out of those folds' macro averages, so the
    ``pooled`` scores from the summed matrix, where every test row counts
    once, can differ from the means.
    """
    runs = [fold[key] for fold in fold_results]
    summary: dict[str, Any] = dict(mean_metrics(runs))
    confusion = np.sum([run["confusion_matrix"] for run in runs], axis=0)
    summary["confusion_matrix"] = confusion.tolist()
    pooled = metrics_from_counts(confusion, None, task.classes, task.normal_class)
    summary["pooled"] = {name: pooled[name] for name in POOLED_KEYS}
    bursts = [run["bursts"] for run in runs if "bursts" in run]
    if bursts:
        total = sum(b["bursts"] for b in bursts)
        detected = sum(b["bursts_detected"] for b in bursts)
        delays = [b["detection_delay_mean"] for b in bursts if b["detection_delay_mean"] is not None]
        episodes = sum(b["false_alarm_episodes"] for b in bursts)
        summary["bursts"] = {
            "bursts": total,
            "bursts_detected": detected,
            "bursts_detected_share": detected / total if total else None,
            "detection_delay_mean": float(np.mean(delays)) if delays else None,
            "false_alarm_episodes": episodes,
            # None marks a test block without normal flows, which has no false-alarm rate.
            "false_alarm_episodes_per_10k_normal": _mean_or_none(
                [b["false_alarm_episodes_per_10k_normal"] for b in bursts]
            ),
            "recall_by_position": {
                bucket: _mean_or_none([b["recall_by_position"][bucket] for b in bursts])
                for bucket in ("first", "2-3", "4+")
            },
        }
    return summary


def _choose_window(candidates: dict[int, TrainedModel]) -> int:
    """Pick the window with the best validation F1; ties go to the shorter window."""
    def score(window: int) -> tuple[float, int]:
        validation = candidates[window].validation
        return (validation.get("f1", 0.0) if validation else 0.0, -window)

    return max(candidates, key=score)


def run_fold(
    table: FlowTable,
    split: Split,
    config: DatasetConfig,
    task: TaskConfig,
    windows: Sequence[int],
    *,
    epochs: int | None,
    baselines: Sequence[str],
    top_k: int | None,
    out_dir: Path,
) -> dict[str, Any]:
    """Train every candidate window on one split, choose one on validation data and run the baselines."""
    candidates: dict[int, TrainedModel] = {}
    prepared_by_window = {}
    for window in windows:
        prepared = prepare_split(
            table, split, config, task, window, top_k=top_k, source=f"{split.name} W={window}"
        )
        prepared_by_window[window] = prepared
        candidates[window] = train_and_evaluate(prepared, config, task, epochs=epochs, table=table)
    chosen = _choose_window(candidates)
    best = candidates[chosen]
    logger.info("select: %s chose W=%d on validation F1 %.4f", split.name, chosen, best.validation.get("f1", 0.0))

    baseline_results: dict[str, Any] = {}
    if baselines:
        per_flow = prepared_by_window.get(1) or prepare_split(
            table, split, config, task, 1, top_k=top_k, source=f"{split.name} W=1"
        )
        baseline_results = run_baselines(
            baselines,
            per_flow.X_train,
            per_flow.y_train,
            per_flow.X_test,
            per_flow.y_test,
            task,
            config.training.seed,
        )

    prepared = prepared_by_window[chosen]
    fold_metrics = {
        "fold": split.name,
        "window": chosen,
        "train_rows": len(split.rows("train")),
        "validation_rows": len(split.rows("validation")),
        "test_rows": len(split.rows("test")),
        "resampling": prepared.resampling.to_dict() if prepared.resampling else None,
        "feature_ranking": prepared.ranking.ranked() if prepared.ranking else None,
        "input_columns": prepared.preprocessor.n_features,
        "test": best.test,
        "validation": best.validation,
        "epochs_run": best.epochs_run,
        "train_seconds": best.train_seconds,
        "candidates": {
            str(window): {
                "validation_f1": trained.validation.get("f1"),
                "test": trained.test,
                "epochs_run": trained.epochs_run,
                "train_seconds": trained.train_seconds,
            }
            for window, trained in candidates.items()
        },
        "baselines": baseline_results,
    }
    save_model(out_dir / split.name, best.model, prepared.preprocessor, fold_metrics)
    return fold_metrics


def _split_name(config: DatasetConfig, n_splits: int, folds: bool) -> str:
    if not folds:
        return "stratified holdout" if config.split.stratified else "time-block holdout"
    return f"{n_splits} stratified folds" if config.split.stratified else f"{n_splits} contiguous time-block folds"


def _remove_stale_splits(out_dir: Path, current: set[str]) -> None:
    """Delete the split folders of an earlier run in a reused ``out_dir``, so every folder belongs to this run."""
    for folder in sorted(out_dir.iterdir()):
        earlier = folder.name not in current and re.fullmatch(r"holdout|fold-\d+", folder.name)
        if earlier and folder.is_dir() and not folder.is_symlink() and (folder / "metrics.json").is_file():
            shutil.rmtree(folder)
            logger.info("out: removed %s, left by an earlier run", folder)


def run_centralized(
    config: DatasetConfig,
    task: TaskConfig,
    table: FlowTable,
    out_dir: Path,
    *,
    folds: bool = True,
    windows: Sequence[int] | None = None,
    epochs: int | None = None,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    top_k: int | None = None,
) -> dict[str, Any]:
    """Run the centralized evaluation and write ``metrics.json`` into ``out_dir``."""
    assert table.labels is not None
    windows = tuple(windows or config.training.window_lengths)
    if not config.capture_order and windows != (1,):
        raise FedIDSError(
            f"{config.name} has no capture order, so only W = 1 is valid; got windows {list(windows)}"
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} exists and is not a folder; choose another output folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = make_splits(config, table.labels, folds=folds)
    _remove_stale_splits(out_dir, {split.name for split in splits})
    started = time.perf_counter()
    fold_results = []
    for split in splits:
        logger.info(
            "fold: %s, %d training, %d validation and %d test rows",
            split.name,
            len(split.rows("train")),
            len(split.rows("validation")),
            len(split.rows("test")),
        )
        fold_results.append(
            run_fold(
                table, split, config, task, windows,
                epochs=epochs, baselines=baselines, top_k=top_k, out_dir=out_dir,
            )
        )

    summary = _fold_summary(fold_results, task)
    window_results = {
        str(window): mean_metrics([fold["candidates"][str(window)]["test"] for fold in fold_results])
        for window in windows
    }
    baseline_summary = {
        name: _fold_summary([{"test": fold["baselines"][name]} for fold in fold_results], task)
        for name in baselines
        if all(name in fold["baselines"] for fold in fold_results)
    }
    chosen_windows = [fold["window"] for fold in fold_results]
    metrics = {
        **summary,
        "dataset": config.name,
        "task": task.name,
        "classes": list(task.classes),
        "model": "cnn_lstm",
        "window": max(set(chosen_windows), key=chosen_windows.count),
        "windows_chosen": chosen_windows,
        "window_candidates": list(windows),
        "window_results": window_results,
        "split": _split_name(config, len(splits), folds),
        "folds": len(splits),
        "rows": len(table),
        "cleaning": table.report.to_dict(),
        # The columns kept, which is fewer than a top_k above the column count.
        "top_k_features": fold_results[-1]["input_columns"] if top_k else None,
        "predict_windows_per_second": float(
            np.mean([fold["test"].get("predict_windows_per_second") or 0.0 for fold in fold_results])
        ),
        "baselines": baseline_summary,
        "per_fold": fold_results,
        "wall_seconds": time.perf_counter() - started,
    }
    write_json(out_dir / "metrics.json", metrics)
    last = splits[-1].name
    for name in ("model.keras", "preprocessing.json"):
        (out_dir / name).write_bytes((out_dir / last / name).read_bytes())
    return metrics


def format_table(metrics: dict[str, Any]) -> str:
    """Render the headline metrics of the CNN-LSTM and the baselines as a text table."""
    rows = [(f"cnn_lstm (W={metrics['window']})", metrics)]
    # With one candidate its row would repeat the chosen model's.
    if len(metrics["window_results"]) > 1:
        rows += [(f"cnn_lstm W={w}", m) for w, m in metrics["window_results"].items()]
    rows += list(metrics["baselines"].items())
    keys = ("accuracy", "precision", "recall", "f1", "macro_f1", "fpr", "roc_auc")
    lines = [f"{'model':<24}" + "".join(f"{key:>10}" for key in keys)]
    for name, values in rows:
        cells = "".join(
            f"{values[key]:>10.4f}" if values.get(key) is not None else f"{'n/a':>10}" for key in keys
        )
        lines.append(f"{name:<24}{cells}")
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"window lengths must be integers >= 1, got {text!r}")
    # A repeated length would train the same candidate twice.
    return list(dict.fromkeys(values))


def _baseline_list(text: str) -> list[str]:
    if text == "none":
        return []
    if text == "all":
        return list(BASELINES)
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(names) - set(BASELINES))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown baseline(s) {unknown}; choose from {list(BASELINES)}, all or none")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="dataset configuration name (configs/NAME.toml) or path")
    parser.add_argument("--task", help="task name from the configuration (default: its default_task)")
    parser.add_argument(
        "--data-dir",
        help=f"folder with the dataset files (default: ${DATA_DIR_ENV}, then ./data)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder for metrics and models")
    parser.add_argument(
        "--holdout",
        action="store_true",
        help="one train/validation/test split instead of the configured folds",
    )
    parser.add_argument("--windows", type=_int_list, help="candidate window lengths, e.g. 1,8,16 (default: configured)")
    parser.add_argument("--epochs", type=positive_int, help="maximum training epochs (default: configured)")
    parser.add_argument(
        "--baselines",
        type=_baseline_list,
        default=list(DEFAULT_BASELINES),
        help=f"comma-separated classical baselines, 'all' or 'none' (default: {','.join(DEFAULT_BASELINES)}); "
        f"available: {','.join(BASELINES)}",
    )
    parser.add_argument(
        "--top-k",
        type=non_negative_int,
        help="keep the k highest-ranked input columns; 0 keeps all (default: configured, else all)",
    )
    parser.add_argument(
        "--max-rows", type=positive_int, help="use only the first N rows of the file (quick runs)"
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        default="INFO",
        choices=LOG_LEVELS,
        help="logging level (default: INFO)",
    )
    return parser


#: Set once metrics.json is written, so that a late signal does not claim otherwise.
_metrics_written = False


def _exit_on_signal(signum: int, _frame: object) -> None:
    """End the command at once on SIGINT or SIGTERM, with status 128 + the signal number.

    The handler exits itself instead of raising an exception into the
    training code, because an exception raised at an arbitrary point inside
    TensorFlow or Keras can be swallowed, and the run then trains on.
    Nothing is left to save: metrics.json is written atomically at the end.
    """
    event = "interrupted" if signum == signal.SIGINT else "terminated"
    state = "metrics.json was already written" if _metrics_written else "metrics.json was not written"
    print(f"{event}; {state}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    global _metrics_written
    try:
        config = load_dataset_config(args.dataset)
        task = config.task(args.task)
        table = load_dataset(config, task, resolve_data_dir(args.data_dir), args.max_rows)
        metrics = run_centralized(
            config,
            task,
            table,
            args.out,
            folds=not args.holdout,
            windows=args.windows,
            epochs=args.epochs,
            baselines=args.baselines,
            top_k=args.top_k if args.top_k is not None else config.top_k_features,
        )
    except FedIDSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; metrics.json was not written", file=sys.stderr)
        return 128 + signal.SIGINT
    _metrics_written = True
    print(format_table(metrics))
    print(f"wrote {args.out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    # Installed here, not in main(), so that tests calling main() keep their own handlers.
    signal.signal(signal.SIGINT, _exit_on_signal)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    sys.exit(main())
