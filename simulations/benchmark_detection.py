"""Benchmark the site's detection path: flows per second and peak memory, ONNX Runtime versus Keras.

Example::

    python simulations/benchmark_detection.py --dataset wustl-ehms-2020 --windows 1,16 --repeat 5 \\
        --out runs/bench-detect.json

For every window length the script trains a CNN-LSTM for one epoch on the
first 70% of the file, because the weights do not change the cost of
inference. It publishes the model as a signed bundle with model.onnx. Then,
for each runtime, it starts a fresh worker process that

- times ``detect_file`` end to end on the whole file: read the CSV, clean,
  transform, window, infer, build predictions and episodes (the ``--out``
  CSV writing of the command is timed separately);
- times inference alone (``Predictor.predict`` on the prebuilt windows);
- records the wall time and the CPU time of every step. On a machine
  shared with other jobs the wall time grows with their load, while the CPU
  time of the process stays close to what the step costs;
- reports its peak resident memory (``VmHWM`` of that process, so each
  runtime is measured alone: a Keras worker imports TensorFlow, an ONNX
  worker never does). ``ru_maxrss`` is not used because Linux carries it
  over from the parent through fork and exec, and the parent has loaded
  TensorFlow and trained a model.

It also runs the real command (``python -m client.detect``) once per
configuration and reports its wall time and peak memory, Python start-up
and bundle verification included.

Timings are the median and the best of ``--repeat`` runs after one warm-up
run. The machine's load average is recorded before and after, because other
jobs sharing the CPUs slow every timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    # Run as a script, the repository root is not on the path; the worker processes need it too.
    sys.path.insert(0, str(ROOT))

from common.config import DATA_DIR_ENV, load_dataset_config, resolve_data_dir  # noqa: E402
from common.exceptions import FedIDSError  # noqa: E402

#: Share of the file's rows the throw-away model trains on.
TRAIN_FRACTION = 0.7


def _timings(step: Callable[[], object], repeat: int) -> tuple[list[float], list[float]]:
    """Return the wall and the CPU seconds (all threads of this process) of ``repeat`` runs after a warm-up."""
    step()  # warm-up: first-call graph building, allocator growth
    wall, cpu = [], []
    for _ in range(repeat):
        started, started_cpu = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - started)
        cpu.append(time.process_time() - started_cpu)
    return wall, cpu


def peak_rss_mb() -> float:
    """Return this process's peak resident memory in MB (``VmHWM`` from /proc, Linux only)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def run_command(report: Path, detect_arguments: list[str]) -> int:
    """Run ``client.detect`` in this fresh process and write its wall time and peak memory to ``report``."""
    import psutil

    from client.detect import main as detect_main

    status = detect_main(detect_arguments)
    seconds = time.time() - psutil.Process().create_time()
    report.write_text(json.dumps({"exit": status, "wall_seconds": round(seconds, 2), "peak_rss_mb": peak_rss_mb()}))
    return status


def _rate(rows: int, timings: tuple[Sequence[float], Sequence[float]]) -> dict[str, float]:
    wall, cpu = timings
    return {
        "median_seconds": round(statistics.median(wall), 4),
        "best_seconds": round(min(wall), 4),
        "median_flows_per_second": round(rows / statistics.median(wall)),
        "best_flows_per_second": round(rows / min(wall)),
        # CPU time hardly grows when other jobs take turns on the cores, so
        # flows per CPU-second stay comparable between a busy and an idle machine.
        "median_cpu_seconds": round(statistics.median(cpu), 4),
        "median_flows_per_cpu_second": round(rows / statistics.median(cpu)),
    }


# ---------------------------------------------------------------------------
# Worker: one runtime, one bundle, one process
# ---------------------------------------------------------------------------


def run_worker(bundle_path: Path, public_key: Path, data_path: Path, runtime: str, threads: int | None,
               repeat: int, batch_size: int | None = None) -> dict[str, Any]:
    """Time the detection path of one runtime in this process."""
    from client.detect import FlowDetector, _windows, detect_file
    from common.bundle import load_bundle
    from common.inference import OnnxPredictor, make_predictor
    from common.loading import clean_flows, read_flow_csv

    bundle = load_bundle(bundle_path, public_key)
    if runtime == "onnx":
        assert bundle.onnx_path is not None
        predictor: Any = OnnxPredictor(str(bundle.onnx_path), threads=threads)
    else:
        predictor = make_predictor(bundle, runtime)
    if batch_size is not None:
        predictor.batch_size = batch_size

    frame = read_flow_csv(data_path)
    n_rows = len(frame)
    detector = FlowDetector(bundle, predictor)
    table = clean_flows(frame, detector.config, detector.task, require_labels=False)
    X = bundle.preprocessor.transform(table.features)
    windows = _windows(X, bundle.preprocessor.window)
    result = detect_file(bundle, data_path, predictor=predictor)

    with tempfile.TemporaryDirectory() as folder:
        output = Path(folder) / "predictions.csv"
        write = _timings(lambda: result.write_predictions(output), repeat)

    return {
        "runtime": runtime,
        "onnx_threads": predictor.threads if runtime == "onnx" else None,
        "batch_size": predictor.batch_size,
        "window": bundle.preprocessor.window,
        "rows": n_rows,
        "windows": len(windows),
        "end_to_end": _rate(n_rows, _timings(lambda: detect_file(bundle, data_path, predictor=predictor), repeat)),
        "inference_only": _rate(len(windows), _timings(lambda: predictor.predict(windows), repeat)),
        "read_csv": _rate(n_rows, _timings(lambda: read_flow_csv(data_path), repeat)),
        "clean_and_transform": _rate(
            n_rows,
            _timings(
                lambda: bundle.preprocessor.transform(
                    clean_flows(frame, detector.config, detector.task, require_labels=False).features
                ),
                repeat,
            ),
        ),
        "write_predictions_csv": _rate(result.rows_scored, write),
        "peak_rss_mb": peak_rss_mb(),
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


def _run(command: list[str]) -> str:
    """Run a command from the repository root and return its standard output."""
    completed = subprocess.run(
        command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True, text=True, check=False,
    )
    if completed.returncode != 0:
        raise FedIDSError(f"{' '.join(command[:4])} ... failed ({completed.returncode}): {completed.stderr[-2000:]}")
    return completed.stdout


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------


def publish_benchmark_bundle(work: Path, data_path: Path, dataset: str, window: int, key: Any) -> Path:
    """Train a one-epoch model on the first 70% of the file and publish it as a signed bundle with ONNX."""
    import keras

    from common.bundle import save_model
    from common.loading import load_flows
    from common.model import build_model_from_config
    from common.preprocessing import FeatureStatistics, Preprocessor
    from common.training import fit_model
    from common.windows import make_windows
    from server.registry import Registry

    config = load_dataset_config(dataset)
    table = load_flows(data_path, config)
    train = table.take(slice(0, int(len(table) * TRAIN_FRACTION)))
    assert train.labels is not None
    preprocessor = Preprocessor.from_statistics(FeatureStatistics.fit(train.features, config), config, window=window)
    X, y = make_windows(preprocessor.transform(train.features), train.labels, window)
    assert y is not None
    keras.utils.set_random_seed(config.training.seed)
    model = build_model_from_config(preprocessor.n_features, window, preprocessor.n_classes, config.model)
    fit_model(model, X, y, epochs=1, batch_size=config.training.batch_size)
    folder = save_model(work / f"round-w{window}", model, preprocessor, {"round": 1})
    entry = Registry(work / "registry").publish(
        folder, run_id=f"bench-w{window}", server_round=1, signing_key=key, dataset_file=config.source, model=model
    )
    return Path(entry["path"])


def run_benchmark(
    dataset: str, data_dir: Path, windows: Sequence[int], repeat: int, batch_sizes: Sequence[int] = ()
) -> dict[str, Any]:
    """Build one bundle per window length and measure every runtime in its own worker process.

    ``batch_sizes`` adds runs of ONNX Runtime with one worker and each of
    these batch sizes, to choose the default batch size.
    """
    from server.signing import generate_keypair, load_private_key

    config = load_dataset_config(dataset)
    data_path = config.data_paths(data_dir)[0]
    report: dict[str, Any] = {
        "dataset": dataset,
        "file": data_path.name,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "nice": os.nice(0),
            "load_average_before": [round(value, 2) for value in os.getloadavg()],
        },
        "repeat": repeat,
        "results": [],
    }
    configurations: list[tuple[str, int | None, int | None]] = [
        ("onnx", None, None),
        ("onnx", 1, None),
        ("keras", None, None),
        *(("onnx", 1, size) for size in batch_sizes),
    ]
    with tempfile.TemporaryDirectory(prefix="fedids-bench-") as folder:
        work = Path(folder)
        private_path, public_path = generate_keypair(work / "keys")
        key = load_private_key(private_path)
        for window in windows:
            bundle_path = publish_benchmark_bundle(work, data_path, dataset, window, key)
            report.setdefault("bundle_bytes", {})[f"W={window}"] = sum(
                path.stat().st_size for path in bundle_path.iterdir()
            )
            for runtime, threads, batch_size in configurations:
                worker = [
                    sys.executable, str(Path(__file__).resolve()), "--worker", "--bundle", str(bundle_path),
                    "--public-key", str(public_path), "--input", str(data_path), "--runtime", runtime,
                    "--repeat", str(repeat),
                ]
                if threads is not None:
                    worker += ["--threads", str(threads)]
                if batch_size is not None:
                    worker += ["--batch-size", str(batch_size)]
                measured = json.loads(_run(worker))
                if threads is None and batch_size is None:
                    command_report = work / "command.json"
                    _run([
                        sys.executable, str(Path(__file__).resolve()), "--command-report", str(command_report), "--",
                        "--model", str(bundle_path), "--public-key", str(public_path), "--input", str(data_path),
                        "--out", str(work / "predictions.csv"), "--runtime", runtime,
                    ])
                    measured["command"] = json.loads(command_report.read_text())
                report["results"].append(measured)
                print(
                    f"W={window} {runtime}{'' if threads is None else f' threads={threads}'} "
                    f"batch={measured['batch_size']}: "
                    f"end to end {measured['end_to_end']['median_flows_per_second']:,} flows/s, "
                    f"inference {measured['inference_only']['median_flows_per_second']:,} flows/s, "
                    f"peak {measured['peak_rss_mb']} MB",
                    file=sys.stderr,
                )
    report["machine"]["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Benchmark the detection path (ONNX Runtime versus Keras).")
    parser.add_argument("--dataset", default="wustl-ehms-2020", help="dataset configuration name")
    parser.add_argument("--data-dir", type=Path, help=f"folder with the dataset files (default: ${DATA_DIR_ENV})")
    parser.add_argument("--windows", default="", help="comma-separated window lengths (default: 1 and the configured)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement, after one warm-up")
    parser.add_argument(
        "--onnx-batch-sizes",
        default="",
        help="comma-separated batch sizes to also time with one ONNX Runtime worker (default: none)",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    # Worker mode, used by the driver for one runtime per process.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bundle", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--public-key", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--runtime", default="onnx", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--command-report", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("detect_arguments", nargs="*", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command_report is not None:
            return run_command(args.command_report, args.detect_arguments)
        if args.worker:
            measured = run_worker(
                args.bundle, args.public_key, args.input, args.runtime, args.threads, args.repeat, args.batch_size
            )
            print(json.dumps(measured))
            return 0
        config = load_dataset_config(args.dataset)
        windows = [int(value) for value in args.windows.split(",") if value] or sorted({1, config.training.window})
        batch_sizes = [int(value) for value in args.onnx_batch_sizes.split(",") if value]
        report = run_benchmark(args.dataset, resolve_data_dir(args.data_dir), windows, args.repeat, batch_sizes)
    except (FedIDSError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
