"""Benchmark simulate.py: wall time, peak memory of all its processes and Flower's overhead.

Example::

    python simulations/benchmark_simulation.py --out runs/bench-sim -- \\
        --dataset wustl-ehms-2020 --sites 5 --partition contiguous --rounds 10

Everything after ``--`` is passed to ``simulations/simulate.py`` (``--out`` is
added). The script samples the resident memory of simulate.py and every
process it starts (Ray's services and workers) twice a second and reports the
peak of their sum. Flower's overhead is the federation's wall time divided by
the sites' summed local training time, read from the round checkpoints.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

SIMULATE = Path(__file__).resolve().parent / "simulate.py"

#: Seconds between two memory samples.
SAMPLE_INTERVAL = 0.5


def _tree_rss(root: psutil.Process) -> int:
    total = 0
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def _training_seconds(out: Path) -> tuple[float, float]:
    """Return the sites' summed local training time and the slowest site's per round, summed."""
    summed = slowest = 0.0
    for metrics_path in sorted(out.glob("checkpoints/*/round-*/metrics.json")):
        record = json.loads(metrics_path.read_text())
        times = [site.get("train_seconds") or 0.0 for site in record.get("trained", [])]
        summed += sum(times)
        slowest += max(times, default=0.0)
    return summed, slowest


def run_benchmark(out: Path, simulate_args: Sequence[str]) -> dict[str, Any]:
    """Run simulate.py once and measure it."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(SIMULATE), *simulate_args, "--out", str(out)]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=(out / "simulate.log").open("w"), stderr=subprocess.STDOUT)
    root = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        peak = max(peak, _tree_rss(root))
        time.sleep(SAMPLE_INTERVAL)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"simulate.py exited with {process.returncode}; see {out / 'simulate.log'}")

    report = json.loads((out / "report.json").read_text())
    summed, slowest = _training_seconds(out)
    federation = float(report["federation_seconds"])
    return {
        "command": " ".join(["python", "simulations/simulate.py", *simulate_args, "--out", str(out)]),
        "wall_seconds": wall,
        "federation_seconds": federation,
        "peak_rss_mb_all_processes": peak / 2**20,
        "sites_training_seconds_summed": summed,
        "sites_training_seconds_slowest_per_round": slowest,
        "overhead_ratio_federation_to_summed_training": federation / summed if summed else None,
        "overhead_ratio_wall_to_summed_training": wall / summed if summed else None,
        "federated_f1": report["federated"]["f1"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, simulate_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder of the simulation and the results")
    args = parser.parse_args(own)
    results = run_benchmark(args.out, simulate_args)
    text = json.dumps(results, indent=2)
    (args.out / "benchmark.json").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
