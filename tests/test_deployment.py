"""A real deployment on loopback: SuperLink and three SuperNodes with TLS, site authentication and real data.

The module starts one federation (simulations/federation.py's
LocalFederation) and runs on it, in order:

1. a run of two rounds with all three hospitals;
2. a SuperNode whose key was never registered, which the SuperLink rejects;
3. a SuperLink restart on the same database;
4. a run of three rounds in which one hospital's SuperNode is killed in
   round 1 and started again;
5. the removal of a hospital, whose SuperNode must then stop;
6. the shutdown, after which no process of the federation may remain.

A last test repeats a short run with every hospital in its own network
namespace, where the kernel and the user allow it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import pandas as pd
import pytest

from client.keys import create_site_credentials
from client.supernode import EXIT_NOT_ACCEPTED
from common.config import DatasetConfig
from common.loading import load_flows
from server.strategy import EVALUATE_METRIC_KEYS, TRAIN_METRIC_KEYS
from server.superlink import list_sites, remove_site, run_status, start_superlink, stop_superlink
from simulations.federation import LocalFederation, RunResult, SiteSpec, run_plain, run_with_kill
from tests.process_helpers import TAG_ENV, tagged_pids, wait_until_gone

ROOT = Path(__file__).resolve().parent.parent

#: Rows of the real capture each hospital gets. The sizes differ, so a site
#: that read another site's file would show in the row counts.
SITE_SLICES = {"hospital-a": (0, 2000), "hospital-b": (2000, 4500), "hospital-c": (4500, 7500)}

#: Seconds a whole run may take on a loaded two-core machine before the test fails.
RUN_TIMEOUT = 900.0

#: Environment variable marking every process of this module's federations.

#: Query reply entries a site may send: statistics and counts, never rows.
QUERY_KEYS = {"statistics", "class-counts", "n-rows", "n-train-rows", "site-name"}


@dataclass
class Deployment:
    """The module's federation and what its runs produced."""

    federation: LocalFederation
    work_dir: Path
    site_files: dict[str, Path]
    tag: str
    plain: RunResult
    plain_dir: Path
    started_pids: set[int] = field(default_factory=set)


def _run_config(work_dir: Path, run_name: str, rounds: int, **changes: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "dataset": "wustl-ehms-2020",
        "num-rounds": rounds,
        "window": 8,
        "local-epochs": 1,
        "batch-size": 256,
        "min-sites": 3,
        "round-timeout": 300.0,
        "node-wait-timeout": 120.0,
        "checkpoint-dir": str(work_dir / "checkpoints"),
        "run-name": run_name,
    }
    config.update(changes)
    return config


def _write_site_files(wustl_path: Path, folder: Path) -> dict[str, Path]:
    frame = pd.read_csv(wustl_path, dtype=str, keep_default_na=False, nrows=max(end for _, end in SITE_SLICES.values()))
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (start, end) in SITE_SLICES.items():
        paths[name] = folder / f"{name}.csv"
        frame.iloc[start:end].to_csv(paths[name], index=False)
    return paths


def _rounds(run_dir: Path) -> dict[int, dict[str, Any]]:
    return {
        int(folder.name.split("-")[1]): json.loads((folder / "metrics.json").read_text())
        for folder in sorted(run_dir.glob("round-*"))
    }


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, wustl_path: Path) -> Iterator[Deployment]:
    work_dir = tmp_path_factory.mktemp("deployment")
    site_files = _write_site_files(wustl_path, work_dir / "data")
    tag = f"deployment-{os.getpid()}"
    previous_tag = os.environ.get(TAG_ENV)
    # Every process the federation starts copies this environment, Flower's helpers included.
    os.environ[TAG_ENV] = tag
    federation = LocalFederation(work_dir, [SiteSpec(name, path) for name, path in site_files.items()])
    try:
        federation.start()
        federation.wait_for_sites(list(site_files))
        plain = run_plain(federation, _run_config(work_dir, "plain", rounds=2), RUN_TIMEOUT)
        yield Deployment(federation, work_dir, site_files, tag, plain, work_dir / "checkpoints" / "plain")
    finally:
        federation.stop()
        if previous_tag is None:
            os.environ.pop(TAG_ENV, None)
        else:
            os.environ[TAG_ENV] = previous_tag


# ---------------------------------------------------------------------------
# Command-line checks before anything starts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--site", "hospital-a"], "--site expects NAME=PATH, got 'hospital-a'"),
        (["--site", "hospital-a=/nonexistent.csv"], "file not found: /nonexistent.csv"),
        (["--site", "a={file}", "--site", "a={file}"], "site names must be unique"),
        (["--site", "a={file}", "--kill-site", "b"], "--kill-site 'b' is not one of the --site names"),
        (["--site", "a={file}", "--compare-simulation", "--data-dir", "/nonexistent"], "needs the dataset file"),
    ],
    ids=["no-path", "missing-file", "duplicate", "unknown-kill", "no-dataset"],
)
def test_federation_command_rejects_bad_arguments(tmp_path: Path, arguments: list[str], message: str) -> None:
    data = tmp_path / "flows.csv"
    data.write_text("Label\n0\n")
    command = [sys.executable, str(ROOT / "simulations" / "federation.py"), "--dataset", "wustl-ehms-2020"]
    command += [argument.replace("{file}", str(data)) for argument in arguments]
    command += ["--work-dir", str(tmp_path / "work")]

    completed = subprocess.run(
        command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, check=False
    )

    assert completed.returncode == 2
    assert message in completed.stderr
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "work" / "coordinator").exists()


# ---------------------------------------------------------------------------
# A run with all three hospitals
# ---------------------------------------------------------------------------


def test_deployment_run_completes(deployment: Deployment) -> None:
    assert deployment.plain.status == "finished:completed", deployment.plain.log_path.read_text()[-3000:]


def test_deployment_saves_global_model_per_round(deployment: Deployment) -> None:
    for round_number in (1, 2):
        folder = deployment.plain_dir / f"round-{round_number:03d}"
        for name in ("model.keras", "preprocessing.json", "metrics.json"):
            assert (folder / name).is_file(), f"{name} missing in {folder}"
    history = [json.loads(line) for line in (deployment.plain_dir / "history.jsonl").read_text().splitlines()]
    assert [entry["round"] for entry in history] == [1, 2]
    run = json.loads((deployment.plain_dir / "run.json").read_text())
    assert run["status"] == "finished"
    assert run["final_round"] == 2


def test_deployment_each_site_reads_own_file(deployment: Deployment, wustl_config: DatasetConfig) -> None:
    run = json.loads((deployment.plain_dir / "run.json").read_text())
    reported = {site["site_name"]: site for site in run["sites"]}

    assert set(reported) == set(SITE_SLICES)
    for name, path in deployment.site_files.items():
        assert reported[name]["n_rows"] == len(load_flows(path, wustl_config)), name
        assert reported[name]["node_id"] == deployment.federation.node_ids[name], name


def test_deployment_every_site_trains_each_round(deployment: Deployment) -> None:
    registered = set(deployment.federation.node_ids.values())

    for round_number, record in _rounds(deployment.plain_dir).items():
        if round_number == 0:
            continue
        trained = {entry["node_id"] for entry in record["trained"]}
        assert trained == registered, f"round {round_number}: {record['trained']}"
        assert all(entry["num_examples"] > 0 for entry in record["trained"])
        assert record["failures"] == []
        assert record["timed_out"] == []


def test_deployment_sends_weights_statistics_metrics_only(deployment: Deployment) -> None:
    model = keras.models.load_model(deployment.plain_dir / "round-002" / "model.keras", compile=False)
    weight_shapes = [list(weight.shape) for weight in model.get_weights()]
    sizes: dict[tuple[str, str, str], list[int]] = {}

    for name in SITE_SLICES:
        log = deployment.work_dir / "sites" / name / "egress.jsonl"
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        lines = [line for line in lines if line["run_id"] == deployment.plain.run_id]
        assert sorted(line["message_type"] for line in lines) == ["evaluate", "evaluate", "query", "train", "train"]
        for line in lines:
            assert line["error"] is False, line
            kind = line["message_type"]
            entries = line["records"]
            if kind == "query":
                assert {(entry["record"], entry["kind"]) for entry in entries} == {("site", "config")}
                assert {entry["key"] for entry in entries} == QUERY_KEYS
            elif kind == "train":
                arrays = [entry for entry in entries if entry["record"] == "arrays"]
                assert all(entry["kind"] == "array" for entry in arrays)
                assert [entry["shape"] for entry in arrays] == weight_shapes
                metrics = {(entry["record"], entry["kind"], entry["key"]) for entry in entries if entry not in arrays}
                assert metrics == {("metrics", "metric", key) for key in TRAIN_METRIC_KEYS}
            else:
                assert {(entry["record"], entry["kind"], entry["key"]) for entry in entries} == {
                    ("metrics", "metric", key) for key in EVALUATE_METRIC_KEYS
                }
            for entry in entries:
                if entry["kind"] != "array":
                    sizes.setdefault((kind, entry["record"], entry["key"]), []).append(entry["bytes"])

    # The sites hold 2,000 to 3,000 rows; what they send must not grow with them.
    for key, values in sizes.items():
        assert max(values) <= 1.2 * min(values), f"{key} sizes grow with the site: {values}"


def test_deployment_unregistered_key_rejected(deployment: Deployment) -> None:
    federation = deployment.federation
    # A site with its own fresh key pair that the coordinator never registered.
    federation.sites["intruder"] = SiteSpec("intruder", deployment.site_files["hospital-a"])
    create_site_credentials(federation.site_credentials("intruder"), "intruder")

    site = federation.start_site("intruder", join_timeout=0)
    returncode = site.process.wait(timeout=120)
    federation.running.pop("intruder")

    assert returncode == EXIT_NOT_ACCEPTED
    assert "did not accept site intruder" in site.log_path.read_text()
    assert "No SuperNode found with the given public key" in federation.layout.log_file.read_text()
    nodes = list_sites(federation.layout)
    assert sorted(node["name"] for node in nodes) == sorted(SITE_SLICES)
    assert {node["status"] for node in nodes} == {"online"}


# ---------------------------------------------------------------------------
# SuperLink restart, then a hospital lost in the middle of a round
# ---------------------------------------------------------------------------


def test_deployment_superlink_restart_keeps_runs(deployment: Deployment) -> None:
    federation = deployment.federation
    assert stop_superlink(federation.layout.state_dir)

    start_superlink(federation.superlink_settings)

    assert run_status(federation.layout, deployment.plain.run_id) == "finished:completed"
    # The SuperNodes kept retrying while the SuperLink was down and reconnect by themselves.
    federation.wait_for_sites(list(SITE_SLICES), timeout=180)


@pytest.fixture(scope="module")
def killed_run(deployment: Deployment) -> tuple[RunResult, Path]:
    federation = deployment.federation
    federation.wait_for_sites(list(SITE_SLICES), timeout=180)
    config = _run_config(deployment.work_dir, "killed", rounds=3, **{"min-sites": 2, "round-timeout": 240.0})
    result = run_with_kill(
        federation,
        config,
        kill_site="hospital-b",
        kill_round=1,
        kill_delay=2.0,
        restart_after=0.0,
        timeout=RUN_TIMEOUT,
    )
    return result, deployment.work_dir / "checkpoints" / "killed"


def test_deployment_killed_site_does_not_stop_run(killed_run: tuple[RunResult, Path]) -> None:
    result, run_dir = killed_run

    assert result.status == "finished:completed", result.log_path.read_text()[-3000:]
    assert sorted(_rounds(run_dir)) == [0, 1, 2, 3]


def test_deployment_killed_site_named_in_round_record(
    deployment: Deployment, killed_run: tuple[RunResult, Path]
) -> None:
    result, run_dir = killed_run
    lost = deployment.federation.node_ids["hospital-b"]
    record = _rounds(run_dir)[1]

    named = [entry for entry in record["failures"] + record["timed_out"] if entry["node_id"] == lost]
    assert named, f"round 1 does not record node {lost}: {record['failures']} {record['timed_out']}"
    assert all(entry["site"] == "hospital-b" for entry in named)
    assert {entry["node_id"] for entry in record["trained"]} == {
        deployment.federation.node_ids["hospital-a"],
        deployment.federation.node_ids["hospital-c"],
    }
    assert record["train_aggregated"] is True
    assert f"node {lost} (site hospital-b)" in result.log_path.read_text()


def test_deployment_restarted_site_rejoins(deployment: Deployment, killed_run: tuple[RunResult, Path]) -> None:
    _, run_dir = killed_run
    returned = deployment.federation.node_ids["hospital-b"]

    last = _rounds(run_dir)[3]

    assert returned in {entry["node_id"] for entry in last["trained"]}


def test_deployment_removed_site_disconnected(deployment: Deployment, killed_run: tuple[RunResult, Path]) -> None:
    federation = deployment.federation
    site = federation.running["hospital-c"]

    node_id = remove_site(federation.layout, "hospital-c")

    # The SuperLink rejects the removed key's next request and the SuperNode stops by itself.
    site.process.wait(timeout=120)
    federation.running.pop("hospital-c")
    assert node_id == federation.node_ids["hospital-c"]
    statuses = {node["node_id"]: node["status"] for node in list_sites(federation.layout)}
    assert statuses.get(node_id) != "online"
    assert "hospital-c" not in json.loads(federation.layout.sites_file.read_text())


# ---------------------------------------------------------------------------
# Shutdown
# ---------------------------------------------------------------------------


def test_deployment_stop_leaves_no_process(deployment: Deployment, killed_run: tuple[RunResult, Path]) -> None:
    assert tagged_pids(deployment.tag), "the federation should be running before the stop"

    deployment.federation.stop()

    assert not wait_until_gone(deployment.tag)


# ---------------------------------------------------------------------------
# The same deployment across a virtual network
# ---------------------------------------------------------------------------

#: Subnet of the virtual network; it exists only inside the test's namespaces.
NETNS_SUBNET = "10.213.0"


def _namespaces_unavailable() -> str | None:
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces with ip netns needs root"
    probe = f"fedids-probe-{os.getpid()}"
    created = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if created.returncode != 0:
        return f"the kernel rejected a network namespace: {created.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _ip(*arguments: str) -> None:
    subprocess.run(["ip", *arguments], check=True, capture_output=True, text=True)


@pytest.fixture
def virtual_network() -> Iterator[tuple[str, dict[str, str]]]:
    """A coordinator namespace with a bridge and one namespace per hospital, joined by veth pairs."""
    reason = _namespaces_unavailable()
    if reason:
        pytest.skip(reason)
    prefix = f"fi{os.getpid() % 100000}"
    coordinator = f"{prefix}-link"
    sites = {name: f"{prefix}-{name[-1]}" for name in SITE_SLICES}
    created: list[str] = []
    try:
        _ip("netns", "add", coordinator)
        created.append(coordinator)
        _ip("-n", coordinator, "link", "set", "lo", "up")
        _ip("-n", coordinator, "link", "add", "br0", "type", "bridge")
        _ip("-n", coordinator, "addr", "add", f"{NETNS_SUBNET}.1/24", "dev", "br0")
        _ip("-n", coordinator, "link", "set", "br0", "up")
        for index, namespace in enumerate(sites.values(), start=2):
            _ip("netns", "add", namespace)
            created.append(namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
            # Both ends are created inside the namespaces, so nothing is added to the host's interfaces.
            _ip(
                "-n", coordinator, "link", "add", f"vh{index}", "type", "veth",
                "peer", "name", "eth0", "netns", namespace,
            )  # fmt: skip
            _ip("-n", coordinator, "link", "set", f"vh{index}", "master", "br0", "up")
            _ip("-n", namespace, "addr", "add", f"{NETNS_SUBNET}.{index}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
        yield coordinator, sites
    finally:
        for namespace in reversed(created):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, check=False)


def test_deployment_across_network_namespaces(
    virtual_network: tuple[str, dict[str, str]], wustl_path: Path, tmp_path: Path
) -> None:
    coordinator, namespaces = virtual_network
    site_files = _write_site_files(wustl_path, tmp_path / "data")
    tag = f"netns-{os.getpid()}"
    command = [
        "ip", "netns", "exec", coordinator,
        sys.executable, str(ROOT / "simulations" / "federation.py"),
        "--dataset", "wustl-ehms-2020",
        "--rounds", "1",
        "--window", "8",
        "--min-sites", "3",
        "--round-timeout", "300",
        "--run-timeout", str(RUN_TIMEOUT),
        "--host", f"{NETNS_SUBNET}.1",
        "--work-dir", str(tmp_path / "work"),
    ]  # fmt: skip
    for name, path in site_files.items():
        command += ["--site", f"{name}={path}", "--site-netns", f"{name}={namespaces[name]}"]

    completed = subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, TAG_ENV: tag, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT + 300,
        check=False,
    )

    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert summary["status"] == "finished:completed"
    assert len(summary["round_seconds"]) == 1
    # Each SuperNode reached the SuperLink from its own address on the virtual network.
    superlink_log = (tmp_path / "work" / "coordinator" / "logs" / "superlink.log").read_text()
    for index in range(2, 2 + len(namespaces)):
        assert f"{NETNS_SUBNET}.{index}:" in superlink_log, f"no Fleet request from {NETNS_SUBNET}.{index}"
    assert not wait_until_gone(tag)
