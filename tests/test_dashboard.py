"""Coordinator dashboard: reading run folders and its routes, through Flask's test client."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flask import Flask
from flask.testing import FlaskClient

from common.exceptions import ConfigError
from common.web import cli
from common.web.app import web_state
from common.web.serving import create_wsgi_server, listening_addresses
from common.web.settings import WebSettings
from server.dashboard.app import create_dashboard_app, render_round_chart
from server.dashboard.runs import list_runs, load_run, read_history
from server.registry import Registry
from tests.bundle_helpers import write_toy_dataset, write_toy_round
from tests.web_support import ADMIN, ANALYST, add_users, page_token, sign_in, table_rows

REPOSITORY = Path(__file__).resolve().parents[1]
SITE_A, SITE_B, SITE_C = 111, 222, 333

HISTORY = [
    {"round": 1, "f1": 0.5, "macro_f1": 0.7, "fpr": 0.10, "roc_auc": 0.8, "loss": 0.9, "n_sites_ok": 3,
     "failures": 0, "seconds": 4.0},
    {"round": 2, "f1": 0.6, "macro_f1": 0.75, "fpr": 0.08, "roc_auc": 0.85, "loss": 0.7, "n_sites_ok": 2,
     "failures": 2, "seconds": 5.5},
    {"round": 3, "f1": None, "macro_f1": None, "fpr": None, "roc_auc": None, "loss": None, "n_sites_ok": 1,
     "failures": 2, "seconds": 3.0},
]


def _round_metrics(trained: list[int], evaluated: list[int], failures: list[dict[str, Any]],
                   timed_out: list[dict[str, Any]], note: str = "") -> dict[str, Any]:
    return {
        "trained": [{"node_id": node, "num_examples": 100 + node, "train_seconds": 1.5} for node in trained],
        "evaluated": [{"node_id": node, "num_examples": 10 + node} for node in evaluated],
        "failures": failures,
        "timed_out": timed_out,
        "train_note": "",
        "evaluate_note": note,
    }


def write_run(root: Path, name: str, status: str = "finished", history: list[dict[str, Any]] = HISTORY) -> Path:
    """Write a run folder the way CheckpointWriter lays it out, with literal values."""
    folder = root / name
    folder.mkdir(parents=True)
    run_info = {
        "run_name": name,
        "status": status,
        "started_at": "2026-12-01T10:00:00+0000",
        "finished_at": "2026-12-01T10:05:00+0000" if status != "running" else None,
        "settings": {"dataset": "/repo/configs/wustl-ehms-2020.toml", "task": "binary", "num-rounds": 3},
        "sites": [
            {"node_id": node, "n_rows": 1000, "n_train_rows": 700, "class_counts": {"normal": 600, "attack": 100}}
            for node in (SITE_A, SITE_B, SITE_C)
        ],
        "query_failures": [{"node_id": 444, "reason": "DataValidationError: site.csv: missing required column(s)"}],
        "error": "",
    }
    (folder / "run.json").write_text(json.dumps(run_info), encoding="utf-8")
    lines = [json.dumps(line) for line in history]
    # A run still writing its history may leave a half-written last line.
    (folder / "history.jsonl").write_text("\n".join(lines) + '\n{"round": 4, "f1"', encoding="utf-8")
    rounds = {
        1: _round_metrics([SITE_A, SITE_B, SITE_C], [SITE_A, SITE_B, SITE_C], [], []),
        2: _round_metrics(
            [SITE_A, SITE_B], [SITE_A, SITE_B],
            [{"node_id": SITE_C, "phase": "train", "reason": "EmptyDataError: site-2.csv: no rows left after cleaning",
              "code": 3}],
            [{"node_id": SITE_C, "phase": "evaluate"}],
        ),
        3: _round_metrics([SITE_A], [SITE_A], [], [{"node_id": SITE_B, "phase": "train"}],
                          note="1 valid replies, fewer than min-sites 2"),
    }
    for number, metrics in rounds.items():
        (folder / f"round-{number:03d}").mkdir()
        (folder / f"round-{number:03d}" / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return folder


@pytest.fixture
def checkpoints(tmp_path: Path) -> Path:
    root = tmp_path / "checkpoints"
    write_run(root, "federated-old")
    write_run(root, "federated-live", status="running", history=HISTORY[:1])
    return root


@pytest.fixture
def app(tmp_path: Path, checkpoints: Path) -> Flask:
    settings = WebSettings(
        instance_dir=tmp_path / "dashboard", password_time_cost=1, password_memory_kib=1024, password_parallelism=1
    )
    dashboard = create_dashboard_app(settings, checkpoints, tmp_path / "registry")
    add_users(dashboard)
    return dashboard


@pytest.fixture
def admin(app: Flask) -> FlaskClient:
    client = app.test_client()
    sign_in(client, *ADMIN)
    return client


# Reading run folders ---------------------------------------------------------------


def test_read_history_skips_partial_line(checkpoints: Path) -> None:
    lines = read_history(checkpoints / "federated-old" / "history.jsonl")

    assert [line["round"] for line in lines] == [1, 2, 3]
    assert read_history(checkpoints / "missing.jsonl") == []


def test_list_runs_running_first(checkpoints: Path) -> None:
    (checkpoints / "not-a-run").mkdir()

    runs = list_runs(checkpoints)

    assert [run.name for run in runs] == ["federated-live", "federated-old"]
    assert runs[1].completed_rounds == 3
    assert runs[1].dataset == "wustl-ehms-2020"
    assert runs[1].sites == 3
    assert runs[1].last is not None and runs[1].last["round"] == 3
    assert list_runs(checkpoints / "absent") == []


def test_load_run_rounds_sites_and_failures(checkpoints: Path) -> None:
    run = load_run(checkpoints, "federated-old")

    assert run is not None
    second = run.rounds[1]
    assert [site.node_id for site in second.sites] == [SITE_A, SITE_B]
    assert second.sites[0].train_examples == 100 + SITE_A
    assert [(failure["node_id"], failure["phase"]) for failure in second.failures] == [
        (SITE_C, "train"), (SITE_C, "evaluate")
    ]
    assert second.failures[1]["reason"] == "no reply before the round timeout"
    assert run.rounds[2].notes == ["evaluate: 1 valid replies, fewer than min-sites 2"]
    assert run.query_failures[0]["node_id"] == 444


@pytest.mark.parametrize("name", ["../checkpoints", "..", ".hidden", "a/b", "missing"])
def test_load_run_rejects_other_names(checkpoints: Path, name: str) -> None:
    assert load_run(checkpoints, name) is None


def test_round_chart_skips_missing_values(checkpoints: Path) -> None:
    run = load_run(checkpoints, "federated-old")
    assert run is not None

    svg = render_round_chart(run.rounds)

    assert svg.lstrip().startswith("<?xml")
    for label in ("F1 (attack)", "false-positive rate", "loss"):
        assert label in svg


def test_round_chart_without_rounds() -> None:
    assert "<svg" in render_round_chart([])


# Routes -----------------------------------------------------------------------


def test_dashboard_requires_sign_in(app: Flask) -> None:
    client = app.test_client()

    for path in ("/", "/runs/federated-old", "/runs/federated-old/chart.svg", "/models", "/admin/audit"):
        response = client.get(path)
        assert response.status_code == 303, path
        assert response.headers["Location"].startswith("/login"), path


def test_dashboard_cookie_differs_from_console(app: Flask) -> None:
    client = app.test_client()
    sign_in(client, *ADMIN)

    assert client.get_cookie("fedids_dashboard_session") is not None
    assert client.get_cookie("fedids_console_session") is None


def test_runs_page_lists_runs(admin: FlaskClient) -> None:
    html = admin.get("/").get_data(as_text=True)

    rows = table_rows(html, "runs-table")
    assert [row[0] for row in rows] == ["federated-live", "federated-old"]
    assert rows[0][1] == "running"
    assert rows[1][3:8] == ["3 of 3", "3", "–", "–", "–"]


def test_run_page_rounds_and_failures(admin: FlaskClient) -> None:
    html = admin.get("/runs/federated-old").get_data(as_text=True)

    rounds = table_rows(html, "rounds-table")
    assert rounds[0] == ["1", "–", "0.5000", "0.7000", "0.1000", "0.8000", "0.9000", "3", "0", "4.0"]
    assert rounds[2][2] == "–"
    assert "EmptyDataError: site-2.csv: no rows left after cleaning" in html
    assert "no reply before the round timeout" in html
    assert "Not aggregated: evaluate: 1 valid replies, fewer than min-sites 2" in html
    assert "DataValidationError: site.csv: missing required column(s)" in html
    assert 'http-equiv="refresh"' not in html


def test_run_page_of_running_run_reloads(admin: FlaskClient) -> None:
    html = admin.get("/runs/federated-live").get_data(as_text=True)

    assert '<meta http-equiv="refresh" content="30">' in html


def test_run_chart_route(admin: FlaskClient) -> None:
    response = admin.get("/runs/federated-old/chart.svg")

    assert response.status_code == 200
    assert response.mimetype == "image/svg+xml"


def test_run_page_unknown_run(admin: FlaskClient) -> None:
    assert admin.get("/runs/nothing-here").status_code == 404
    assert admin.get("/runs/..%2F..").status_code == 404
    assert admin.get("/runs/nothing-here/chart.svg").status_code == 404


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real registry with two toy versions: round 1 (validation F1 0.9) and round 2 (0.7, the latest)."""
    folder = tmp_path_factory.mktemp("registry")
    registry = Registry(folder / "registry")
    key = Ed25519PrivateKey.generate()
    dataset = write_toy_dataset(folder)
    for number, val_f1 in ((1, 0.9), (2, 0.7)):
        registry.publish(
            write_toy_round(folder / f"round-{number:03d}", number, val_f1=val_f1), run_id="fed-1",
            server_round=number, signing_key=key, dataset_file=dataset, export_onnx=False,
        )
    return folder / "registry"


def _dashboard_client(tmp_path: Path, checkpoints: Path, registry: Path | None) -> FlaskClient:
    settings = WebSettings(
        instance_dir=tmp_path / "with-registry", password_time_cost=1, password_memory_kib=1024, password_parallelism=1
    )
    dashboard = create_dashboard_app(settings, checkpoints, registry)
    add_users(dashboard)
    client = dashboard.test_client()
    sign_in(client, *ADMIN)
    return client


def test_models_page_lists_versions(tmp_path: Path, checkpoints: Path, registry_dir: Path) -> None:
    client = _dashboard_client(tmp_path, checkpoints, registry_dir)

    rows = table_rows(client.get("/models").get_data(as_text=True), "versions-table")

    assert [row[0] for row in rows] == ["fed-1/round-002 latest", "fed-1/round-001 best"]
    assert [row[1:3] for row in rows] == [["fed-1", "2"], ["fed-1", "1"]]
    # Validation F1 as published; test-block F1, FPR and loss from the toy rounds' metrics.
    assert [row[4:8] for row in rows] == [
        ["0.7000", "0.5000", "0.0200", "0.3000"],
        ["0.9000", "0.5000", "0.0200", "0.3000"],
    ]
    assert all(len(row[9]) == 64 for row in rows)


def test_models_page_registry_error(tmp_path: Path, checkpoints: Path) -> None:
    registry = tmp_path / "broken-registry"
    registry.mkdir()
    (registry / "latest.json").write_text("{not json", encoding="utf-8")
    client = _dashboard_client(tmp_path, checkpoints, registry)

    html = client.get("/models").get_data(as_text=True)

    assert "cannot be read: registry: cannot read" in html
    assert "latest.json" in html


def test_models_page_without_registry(tmp_path: Path, checkpoints: Path) -> None:
    settings = WebSettings(instance_dir=tmp_path / "other", password_time_cost=1, password_memory_kib=1024,
                           password_parallelism=1)
    dashboard = create_dashboard_app(settings, checkpoints, None)
    add_users(dashboard)
    client = dashboard.test_client()
    sign_in(client, *ADMIN)

    assert "No model registry is configured" in client.get("/models").get_data(as_text=True)


def test_dashboard_warns_about_missing_folders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = WebSettings(instance_dir=tmp_path / "other", password_time_cost=1, password_memory_kib=1024,
                           password_parallelism=1)

    with caplog.at_level(logging.WARNING, logger="server.dashboard.app"):
        create_dashboard_app(settings, tmp_path / "no-runs", tmp_path / "no-registry")

    assert "--checkpoint-dir" in caplog.text
    assert "no-runs does not exist (yet)" in caplog.text
    assert "no-registry does not exist (yet)" in caplog.text


def test_dashboard_analyst_role(app: Flask) -> None:
    client = app.test_client()
    sign_in(client, *ANALYST)

    assert client.get("/").status_code == 200
    assert client.get("/admin/audit").status_code == 403
    assert client.post("/admin/users", data={"csrf_token": page_token(client, "/")}).status_code == 403


def test_dashboard_admin_audit_shows_sign_ins(admin: FlaskClient) -> None:
    rows = table_rows(admin.get("/admin/audit").get_data(as_text=True), "audit-table")

    assert [row[1:3] for row in rows] == [[ADMIN[0], "sign-in"]]


def test_audit_page_shows_command_line_actions(app: Flask, admin: FlaskClient) -> None:
    settings = web_state(app).settings
    cli.set_account_password(settings, ANALYST[0], "a brand new passphrase")
    cli.unlock_sign_in(settings, None, "10.0.0.9")

    rows = table_rows(admin.get("/admin/audit").get_data(as_text=True), "audit-table")

    # Columns after the time: User, Action, Address, File, File SHA-256, Model version, Detail.
    assert [row[1:] for row in rows] == [
        ["", "sign-in-unlocked", "", "", "", "",
         "command line: unlocked sign-in for address 10.0.0.9; deleted 0 failed sign-in(s)"],
        ["", "password-set", "", "", "", "", f"command line: set a new password for {ANALYST[0]}; ended 0 session(s)"],
        [ADMIN[0], "sign-in", "127.0.0.1", "", "", "", ""],
    ]


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_serve_logs_stop_on_signal(tmp_path: Path, stop_signal: signal.Signals) -> None:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    process = subprocess.Popen(
        [sys.executable, "-m", "server.dashboard", "serve", "--port", "0", "--instance-dir", str(tmp_path / "web"),
         "--checkpoint-dir", str(tmp_path / "runs")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, cwd=REPOSITORY,
    )
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline()
        process.send_signal(stop_signal)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert first_line.startswith("dashboard: serving on http://127.0.0.1:")
    assert process.returncode == 0
    assert "INFO common.web.cli: serve: stopping dashboard" in stderr
    assert "Traceback" not in stderr


def test_serve_on_taken_port_prints_one_line(tmp_path: Path) -> None:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "server.dashboard", "serve", "--port", str(port),
             "--instance-dir", str(tmp_path / "web"), "--checkpoint-dir", str(tmp_path / "runs")],
            capture_output=True, text=True, env=environment, cwd=REPOSITORY, timeout=120, check=False,
        )

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"dashboard: error: cannot listen on 127.0.0.1:{port}: " in result.stderr
    assert "another program already listens there; stop it or choose another --port" in result.stderr


@pytest.mark.parametrize("host", ["::1", "[::1]"], ids=["plain", "brackets"])
def test_serve_on_ipv6_loopback(tmp_path: Path, host: str) -> None:
    environment = {**os.environ, "PYTHONPATH": str(REPOSITORY)}
    process = subprocess.Popen(
        [sys.executable, "-m", "server.dashboard", "serve", "--host", host, "--port", "0",
         "--instance-dir", str(tmp_path / "web"), "--checkpoint-dir", str(tmp_path / "runs")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, cwd=REPOSITORY,
    )
    try:
        assert process.stdout is not None
        first_line = process.stdout.readline()
        url = first_line.split()[-1]
        with urllib.request.urlopen(f"{url}/login", timeout=10) as response:
            status = response.status
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert first_line.startswith("dashboard: serving on http://[::1]:")
    assert status == 200
    assert "which other machines can reach" not in stderr
    assert "Traceback" not in stderr


class _FakeWaitress:
    """Stands in for a waitress server that has bound its sockets; run returns at once."""

    effective_port = "8090"

    def run(self) -> None:
        return None

    def close(self) -> None:
        return None


@pytest.mark.parametrize(
    ("host", "bound", "url", "warned"),
    [
        ("0.0.0.0", ["0.0.0.0"], "http://0.0.0.0:8090", "0.0.0.0"),
        ("::", ["::"], "http://[::]:8090", "::"),
        ("coordinator.example", ["127.0.0.1", "192.0.2.10"], "http://coordinator.example:8090", "192.0.2.10"),
        ("::1", ["::1"], "http://[::1]:8090", None),
        ("localhost", ["127.0.0.1"], "http://localhost:8090", None),
    ],
    ids=["every-ipv4-interface", "every-ipv6-interface", "name-with-reachable-address", "ipv6-loopback", "localhost"],
)
def test_serve_warns_after_bind_about_reachable_addresses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch, host: str, bound: list[str], url: str, warned: str | None,
) -> None:
    # No socket is bound to a non-loopback address: the check runs on the addresses a bind would report.
    monkeypatch.setattr(cli, "create_wsgi_server", lambda _app, _settings: _FakeWaitress())
    monkeypatch.setattr(cli, "listening_addresses", lambda _server: [(address, "8090") for address in bound])
    monkeypatch.setattr(cli.signal, "signal", lambda *_arguments: None)
    settings = WebSettings(instance_dir=tmp_path, host=host, port=8090)

    with caplog.at_level(logging.WARNING, logger="common.web.cli"):
        cli.serve(Flask(__name__), settings, "dashboard")

    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert capsys.readouterr().out == f"dashboard: serving on {url}\n"
    if warned is None:
        assert warnings == []
    else:
        assert warnings == [
            f"serve: listening on {warned}, which other machines can reach; put a TLS proxy in front and pass "
            "--secure-cookies"
        ]


def test_serve_unusable_host_gets_only_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail_to_bind(_app: Flask, _settings: WebSettings) -> Any:
        raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")

    # Fails the way binding an address of no local interface does, without trying it.
    monkeypatch.setattr(cli, "create_wsgi_server", fail_to_bind)
    settings = WebSettings(instance_dir=tmp_path, host="192.0.2.10", port=8090)

    with caplog.at_level(logging.WARNING, logger="common.web.cli"), pytest.raises(ConfigError) as raised:
        cli.serve(Flask(__name__), settings, "dashboard")

    assert str(raised.value) == (
        "cannot listen on 192.0.2.10:8090: Cannot assign requested address; no network interface of this machine "
        "has that address; choose another --host"
    )
    assert caplog.records == []


def test_listening_addresses_of_bound_server(app: Flask) -> None:
    settings = WebSettings(instance_dir=web_state(app).settings.instance_dir, host="localhost", port=0)
    server = create_wsgi_server(app, settings)
    try:
        addresses = listening_addresses(server)
        port = str(server.effective_port)
    finally:
        server.close()

    assert addresses == [("127.0.0.1", port)]
