"""End-to-end runs of simulations/simulate.py on Flower's simulation engine with real data."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from client.detect import detect_file
from common.bundle import load_bundle
from common.config import DATA_DIR_ENV, DatasetConfig
from common.loading import load_flows, read_flow_csv
from common.preprocessing import FeatureStatistics, Preprocessor
from common.site import site_split
from server.registry import Registry
from server.registry import main as registry_main
from server.signing import generate_keypair
from simulations.simulate import best_validation_round, format_report
from tests.process_helpers import TAG_ENV, signal_after_line, wait_until_gone

ROOT = Path(__file__).resolve().parent.parent
SIMULATE = ROOT / "simulations" / "simulate.py"

#: Output folder, finished process and the tag of its processes.
SimulationRun = tuple[Path, "subprocess.CompletedProcess[str]", str]

#: Rows of the real capture the simulation may use. No site sees the rows
#: after them, so they are the held-out slice for detection.
SIMULATION_ROWS = 6000

#: Floor on the attack F1 of the simulated run's final bundle on the held-out
#: rows. Flagging flows at random at the attack rate (about 12% there) scores about 0.12.
DETECTION_F1_FLOOR = 0.5

#: Wall-clock limit of one simulation subprocess; a healthy run takes about a minute.
RUN_TIMEOUT_SECONDS = 900


#: Environment variable that marks the processes of one test run; Ray's
#: services and workers inherit it from simulate.py.


def _environment(data_dir: Path, tag: str = "") -> dict[str, str]:
    return {**os.environ, DATA_DIR_ENV: str(data_dir), "TF_CPP_MIN_LOG_LEVEL": "2", TAG_ENV: tag}


@pytest.fixture(scope="module")
def broken_site_file(tmp_path_factory: pytest.TempPathFactory, wustl_path: Path) -> Path:
    """Real WUSTL rows with the SrcLoad column removed."""
    frame = pd.read_csv(wustl_path, nrows=1500, dtype=str, keep_default_na=False)
    path = tmp_path_factory.mktemp("broken") / "site.csv"
    frame.drop(columns=["SrcLoad"]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def simulation_run(
    tmp_path_factory: pytest.TempPathFactory, wustl_path: Path, broken_site_file: Path
) -> SimulationRun:
    """Three sites for two rounds on a real WUSTL slice; site 2 gets a file without SrcLoad.

    The output folder already contains the site file of an earlier run with more sites.
    """
    out = tmp_path_factory.mktemp("simulation")
    (out / "sites").mkdir()
    (out / "sites" / "site-5.csv").write_text("left by an earlier run\n", encoding="utf-8")
    private_key, _ = generate_keypair(out / "keys")
    tag = f"simulation-{os.getpid()}"
    data_dir = wustl_path.parent.parent
    completed = subprocess.run(
        [
            sys.executable, str(SIMULATE),
            "--dataset", "wustl-ehms-2020",
            "--sites", "3",
            "--partition", "contiguous",
            "--rounds", "2",
            "--window", "8",
            "--local-epochs", "1",
            "--epochs", "2",
            "--max-rows", str(SIMULATION_ROWS),
            "--site-file", f"2={broken_site_file}",
            "--signing-key", str(private_key),
            "--out", str(out),
        ],
        cwd=ROOT,
        env=_environment(data_dir, tag),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    return out, completed, tag


def _run_dir(out: Path) -> Path:
    runs = sorted((out / "checkpoints").iterdir())
    assert len(runs) == 1, f"expected one run folder, found {runs}"
    return runs[0]


def test_simulation_completes_with_broken_site(simulation_run: SimulationRun) -> None:
    out, completed, _ = simulation_run
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Traceback" not in completed.stdout
    assert (out / "report.json").is_file()
    assert (out / "report.png").stat().st_size > 0
    assert "federated" in completed.stdout


def test_simulation_removes_site_files_of_earlier_runs(simulation_run: SimulationRun) -> None:
    out, completed, _ = simulation_run

    assert sorted(path.name for path in (out / "sites").iterdir()) == ["site-0.csv", "site-1.csv", "site-2.csv"]
    assert "sites: removed" in completed.stderr
    assert "site-5.csv, left by an earlier run with more sites" in completed.stderr


def test_simulation_checkpoint_per_round(simulation_run: SimulationRun) -> None:
    out, _, _ = simulation_run
    run_dir = _run_dir(out)
    for round_number in (1, 2):
        folder = run_dir / f"round-{round_number:03d}"
        assert (folder / "model.keras").is_file(), f"no model in {folder}"
        assert (folder / "preprocessing.json").is_file()
        assert (folder / "metrics.json").is_file()
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [entry["round"] for entry in history] == [1, 2]


def test_simulation_metrics_finite(simulation_run: SimulationRun) -> None:
    out, _, _ = simulation_run
    report = json.loads((out / "report.json").read_text())
    for name in ("federated", "centralized"):
        for key in ("accuracy", "precision", "recall", "f1", "macro_f1", "fpr", "roc_auc"):
            value = report[name][key]
            assert value is not None and math.isfinite(value), f"{name} {key} = {value}"
    for entry in report["history"]:
        for key in ("f1", "loss", "accuracy"):
            assert math.isfinite(entry[key]), f"round {entry['round']} {key} = {entry[key]}"
    assert set(report["local_only"]) == {"site-0", "site-1"}


def test_simulation_scores_best_validation_round(simulation_run: SimulationRun) -> None:
    out, completed, _ = simulation_run
    report = json.loads((out / "report.json").read_text())

    scores = {entry["round"]: entry["val_f1"] for entry in report["history"]}
    best = report["best_validation_round"]
    assert best == max(scores, key=lambda number: (scores[number], number))
    if best == 2:
        assert "federated_best_validation" not in report
    else:
        extra = report["federated_best_validation"]
        assert extra["round"] == 1
        assert extra["checkpoint"].endswith("round-001")
        assert math.isfinite(extra["f1"])
        assert "federated, round 1" in completed.stdout


def test_best_validation_round_prefers_later_tie() -> None:
    history = [{"round": 1, "val_f1": 0.8}, {"round": 2, "val_f1": 0.9}, {"round": 3, "val_f1": 0.9}]

    assert best_validation_round(history) == 3
    assert best_validation_round([{"round": 1, "val_f1": None}]) is None
    assert best_validation_round([]) is None


def test_format_report_lists_best_round() -> None:
    scores = {"accuracy": 0.9, "precision": 0.6, "recall": 0.7, "f1": 0.75, "macro_f1": 0.8, "fpr": 0.01}
    report = {"federated": {**scores, "roc_auc": None}, "federated_best_validation": {**scores, "f1": 0.85, "round": 4}}

    lines = format_report(report).splitlines()

    assert lines[1].split()[:5] == ["federated", "0.9000", "0.6000", "0.7000", "0.7500"]
    assert lines[2].split()[:7] == ["federated,", "round", "4", "0.9000", "0.6000", "0.7000", "0.8500"]
    assert lines[1].endswith("n/a")


def test_simulation_broken_site_fails_alone(simulation_run: SimulationRun) -> None:
    out, _, _ = simulation_run
    run_dir = _run_dir(out)
    for round_number in (1, 2):
        record = json.loads((run_dir / f"round-{round_number:03d}" / "metrics.json").read_text())
        assert len(record["trained"]) == 2, record["trained"]
        reasons = json.dumps(record["failures"])
        assert "SrcLoad" in reasons, reasons
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert all(entry["n_sites_ok"] == 2 for entry in history)
    report = json.loads((out / "report.json").read_text())
    assert len(report["failures_per_round"]) == 2
    assert all(count > 0 for count in report["failures_per_round"])
    assert report["site_rows"][2] == len(read_flow_csv(out / "sites" / "site-2.csv"))
    assert report["site_files"][2].endswith("site-2.csv")


def test_simulation_merged_statistics_cover_sites(
    simulation_run: SimulationRun, wustl_config: DatasetConfig
) -> None:
    out, _, _ = simulation_run
    preprocessor = Preprocessor.load(_run_dir(out) / "round-001" / "preprocessing.json")
    site_minimum, site_maximum = [], []
    for index in (0, 1):
        table = load_flows(out / "sites" / f"site-{index}.csv", wustl_config)
        split = site_split(table, wustl_config)
        statistics = FeatureStatistics.fit(table.features.iloc[split.rows("train")], wustl_config)
        assert np.all(preprocessor.minimum <= statistics.minimum + 1e-12)
        assert np.all(preprocessor.maximum >= statistics.maximum - 1e-12)
        site_minimum.append(statistics.minimum)
        site_maximum.append(statistics.maximum)
    # The agreed range is exactly the union of the sites' ranges.
    np.testing.assert_allclose(preprocessor.minimum, np.minimum(*site_minimum))
    np.testing.assert_allclose(preprocessor.maximum, np.maximum(*site_maximum))


def test_simulation_publishes_signed_bundles(simulation_run: SimulationRun) -> None:
    out, _, _ = simulation_run
    registry = Registry(out / "registry")

    versions = registry.list_versions()

    run_name = _run_dir(out).name
    assert [entry["version"] for entry in versions] == [f"{run_name}/round-002", f"{run_name}/round-001"]
    assert versions[0]["is_latest"]
    assert sum(entry["is_best"] for entry in versions) == 1
    assert all(entry["has_onnx"] for entry in versions)
    assert all(entry["metrics"]["val_f1"] is not None for entry in versions)
    bundle = load_bundle(registry.archive_of(versions[0]["version"]), public_key=out / "keys" / "bundle-signing.pub")
    assert bundle.signature_verified
    assert bundle.preprocessor.window == 8


def test_simulation_bundle_detects_held_out_flows(
    simulation_run: SimulationRun, wustl_path: Path, tmp_path: Path
) -> None:
    out, _, _ = simulation_run
    latest = Registry(out / "registry").latest()
    assert latest is not None
    bundle = load_bundle(Path(latest["path"]), public_key=out / "keys" / "bundle-signing.pub")
    held_out = tmp_path / "held-out.csv"
    read_flow_csv(wustl_path).iloc[SIMULATION_ROWS:].to_csv(held_out, index=False)

    result = detect_file(bundle, held_out)

    predictions = result.predictions
    assert result.runtime == "onnx"
    assert result.rows_scored == result.rows_read - 7
    attack_true = predictions["label"] == "attack"
    attack_predicted = predictions["predicted"] == "attack"
    f1 = 2 * int((attack_true & attack_predicted).sum()) / (int(attack_true.sum()) + int(attack_predicted.sum()))
    assert f1 > DETECTION_F1_FLOOR, f"attack F1 {f1:.3f} on {len(predictions)} held-out flows"
    assert sum(episode.flows for episode in result.episodes) == int(attack_predicted.sum())


def test_simulation_round_published_later(simulation_run: SimulationRun, tmp_path: Path) -> None:
    out, _, _ = simulation_run
    run_dir = _run_dir(out)
    registry_dir = tmp_path / "registry"

    status = registry_main(
        [
            "--registry-dir", str(registry_dir),
            "publish", "--run-dir", str(run_dir), "--round", "1",
            "--signing-key", str(out / "keys" / "bundle-signing.key"),
        ]
    )

    assert status == 0
    latest = Registry(registry_dir).latest()
    assert latest is not None
    assert latest["version"] == f"{run_dir.name}/round-001"
    bundle = load_bundle(Path(latest["archive"]), public_key=out / "keys" / "bundle-signing.pub")
    assert bundle.signature_verified
    assert bundle.dataset_config.name == "wustl-ehms-2020"
    assert bundle.preprocessor.window == 8


def test_simulation_leaves_no_process(simulation_run: SimulationRun) -> None:
    _, _, tag = simulation_run
    assert not wait_until_gone(tag)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_signal_stops_simulation_cleanly(
    tmp_path: Path, wustl_path: Path, signum: signal.Signals
) -> None:
    tag = f"signal-{signum.name}-{os.getpid()}"
    process = subprocess.Popen(
        [
            sys.executable, str(SIMULATE),
            "--dataset", "wustl-ehms-2020",
            "--sites", "2",
            "--rounds", "50",
            "--window", "1",
            "--max-rows", "3000",
            "--no-baselines",
            "--out", str(tmp_path / "out"),
        ],
        cwd=ROOT,
        env=_environment(wustl_path.parent.parent, tag),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output = signal_after_line(process, "round 1:", signum, wait_seconds=90, read_seconds=RUN_TIMEOUT_SECONDS)

    assert process.returncode == 128 + signum, output[-3000:]
    leftover = wait_until_gone(tag)
    assert not leftover, [psutil.Process(pid).cmdline() for pid in leftover if psutil.pid_exists(pid)]
    run_info = json.loads((_run_dir(tmp_path / "out") / "run.json").read_text())
    assert run_info["status"] == "interrupted"
    assert run_info["error"] == f"stopped by {signum.name}"


def _run_simulate(data_dir: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """Run simulate.py for WUSTL-EHMS-2020 with 2 sites and ``arguments``, as a user would."""
    return subprocess.run(
        [sys.executable, str(SIMULATE), "--dataset", "wustl-ehms-2020", "--sites", "2", *arguments],
        cwd=ROOT,
        env=_environment(data_dir),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_simulation_rejects_missing_signing_key(tmp_path: Path, wustl_path: Path) -> None:
    completed = _run_simulate(
        wustl_path.parent.parent, "--signing-key", str(tmp_path / "absent.key"), "--out", str(tmp_path / "out")
    )

    assert completed.returncode == 2
    assert "cannot read the signing key" in completed.stderr
    assert "absent.key" in completed.stderr
    assert "partition" not in completed.stderr
    assert "Traceback" not in completed.stderr


def test_simulation_rejects_file_as_registry(tmp_path: Path, wustl_path: Path) -> None:
    private_key, _ = generate_keypair(tmp_path / "keys")
    registry = tmp_path / "registry"
    registry.write_text("", encoding="utf-8")

    completed = _run_simulate(
        wustl_path.parent.parent, "--signing-key", str(private_key), "--registry-dir", str(registry),
        "--out", str(tmp_path / "out"),
    )

    assert completed.returncode == 2
    assert "is a file, not a folder" in completed.stderr
    assert "partition" not in completed.stderr
    assert "Traceback" not in completed.stderr


def test_simulation_rejects_bad_site_file_argument(tmp_path: Path, wustl_path: Path) -> None:
    completed = _run_simulate(wustl_path.parent.parent, "--site-file", "5=missing.csv", "--out", str(tmp_path))

    assert completed.returncode == 2
    assert "--site-file index 5 is out of range for 2 sites" in completed.stderr
    assert "Traceback" not in completed.stderr
