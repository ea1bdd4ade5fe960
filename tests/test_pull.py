"""Pulling bundles over real HTTPS on loopback: tokens, TLS, verification and fallback."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import server.model_service as model_service
from client.pull import ModelServiceClient, pull_bundle, read_token
from client.pull import main as pull_main
from common.bundle import file_sha256, load_bundle, load_public_key, pack_bundle
from common.exceptions import PullError
from server.model_service import ModelService, TokenStore, add_site, revoke_site, start_service, token_hash
from server.model_service import main as service_main
from server.registry import Registry
from server.signing import generate_keypair, load_private_key
from tests.bundle_helpers import write_toy_dataset, write_toy_round
from tests.tls_helpers import write_test_pki

ROOT = Path(__file__).resolve().parent.parent

@dataclass
class Coordinator:
    """A running model service and everything a site needs to reach it."""

    url: str
    ca: Path
    public_key: Path
    token_file: Path
    tokens: Path
    registry: Registry
    process: subprocess.Popen[str]
    work: Path


def _environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coordinator]:
    work = tmp_path_factory.mktemp("coordinator")
    private_key, public_key = generate_keypair(work / "keys")
    registry = Registry(work / "registry", keep_last=5)
    dataset = write_toy_dataset(work)
    for number in (1, 2):
        registry.publish(
            write_toy_round(work / f"round-{number}", number, val_f1=0.5 + number / 10, seed=number),
            run_id="run-p", server_round=number, signing_key=load_private_key(private_key),
            dataset_file=dataset, export_onnx=False,
        )
    ca, _, _ = write_test_pki(work / "tls")
    tokens = work / "site-tokens.json"
    token_file = work / "hospital-a.token"
    token_file.write_text(add_site(tokens, "hospital-a") + "\n")
    token_file.chmod(0o600)
    process, url = _start_service_process(work, tokens, "127.0.0.1")
    try:
        yield Coordinator(url, ca, public_key, token_file, tokens, registry, process, work)
    finally:
        process.terminate()
        process.communicate(timeout=30)


def _start_service_process(work: Path, tokens: Path, host: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``serve`` on ``host`` with the registry and TLS files under ``work``; return the process and its URL."""
    process = subprocess.Popen(
        [
            sys.executable, "-m", "server.model_service", "serve", "--registry", str(work / "registry"),
            "--tokens", str(tokens), "--cert", str(work / "tls" / "server.pem"),
            "--key", str(work / "tls" / "server.key"), "--host", host, "--port", "0",
        ],
        cwd=ROOT, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    # A service that fails to start exits, so readline returns "" instead of blocking.
    if not line.startswith("serve: listening on https://"):
        process.kill()
        pytest.fail(f"model service did not start: {line}{process.communicate()[1]}")
    return process, line.split()[3]


@contextlib.contextmanager
def _service_in_thread(coordinator: Coordinator, host: str = "127.0.0.1") -> Iterator[ModelService]:
    """Serve the coordinator's registry from this process on a free port, so a test can read the log."""
    tls = coordinator.work / "tls"
    service = start_service(
        coordinator.work / "registry", coordinator.tokens, tls / "server.pem", tls / "server.key", host, 0
    )
    thread = threading.Thread(target=service.serve_forever, daemon=True)
    thread.start()
    try:
        yield service
    finally:
        service.shutdown()
        service.server_close()
        thread.join(timeout=30)


def _pull(coordinator: Coordinator, destination: Path, *extra: str, url: str | None = None,
          token_file: Path | None = None, ca: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "client.pull", "--url", url or coordinator.url,
            "--token-file", str(token_file or coordinator.token_file), "--ca", str(ca or coordinator.ca),
            "--public-key", str(coordinator.public_key), "--to", str(destination), "--timeout", "10", *extra,
        ],
        cwd=ROOT, env=_environment(), capture_output=True, text=True, timeout=120, check=False,
    )


def _client(coordinator: Coordinator, token: str | None = None) -> ModelServiceClient:
    return ModelServiceClient(coordinator.url, token or coordinator.token_file.read_text().strip(), coordinator.ca)


def test_pull_latest_over_https(coordinator: Coordinator, tmp_path: Path) -> None:
    completed = _pull(coordinator, tmp_path / "models")

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith("pull: run-p/round-002 verified and now current")
    bundle = load_bundle(tmp_path / "models" / "current", public_key=coordinator.public_key)
    assert str(bundle.version) == "run-p/round-002"
    assert bundle.signature_verified
    assert not [path.name for path in (tmp_path / "models").iterdir() if path.name.startswith(".")]


def test_pull_twice_keeps_current(coordinator: Coordinator, tmp_path: Path) -> None:
    _pull(coordinator, tmp_path / "models")

    again = _pull(coordinator, tmp_path / "models")

    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "pull: run-p/round-002 is already current"


def test_pull_named_and_best_versions(coordinator: Coordinator, tmp_path: Path) -> None:
    client = _client(coordinator)
    key = load_public_key(coordinator.public_key)

    first = pull_bundle(client, tmp_path / "models", key, version="run-p/round-001")
    best = pull_bundle(client, tmp_path / "models", key, version="best")

    assert (first.version, first.updated) == ("run-p/round-001", True)
    assert (best.version, best.updated) == ("run-p/round-002", True)
    assert first.bytes == coordinator.registry.entry("run-p/round-001")["bytes"]
    assert sorted(path.name for path in (tmp_path / "models" / "bundles").iterdir()) == [
        "run-p__round-001", "run-p__round-002"
    ]


def test_pull_wrong_token_rejected(coordinator: Coordinator, tmp_path: Path) -> None:
    _pull(coordinator, tmp_path / "models")
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-token\n")

    completed = _pull(coordinator, tmp_path / "models", token_file=wrong)

    assert completed.returncode == 1
    assert "rejected this site's token (HTTP 401)" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert (tmp_path / "models" / "current").resolve().name == "run-p__round-002"


def test_revoked_site_rejected(coordinator: Coordinator) -> None:
    token = add_site(coordinator.tokens, "hospital-b")
    assert _client(coordinator, token).entry("latest")["version"] == "run-p/round-002"

    revoke_site(coordinator.tokens, "hospital-b")

    with pytest.raises(PullError, match=r"HTTP 401"):
        _client(coordinator, token).entry("latest")


def test_token_store_fails_closed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tokens = tmp_path / "site-tokens.json"
    token = add_site(tokens, "hospital-a")
    store = TokenStore(tokens)
    assert store.authenticate(token) == "hospital-a"
    saved = tokens.read_bytes()

    tokens.unlink()
    with caplog.at_level(logging.ERROR, logger="server.model_service"):
        assert store.authenticate(token) is None
    assert "rejecting every request until the file is fixed" in caplog.text

    tokens.write_text("{not json")
    assert store.authenticate(token) is None

    tokens.write_bytes(saved)
    assert store.authenticate(token) == "hospital-a"


def test_tokens_file_stores_only_hashes(coordinator: Coordinator) -> None:
    token = coordinator.token_file.read_text().strip()
    stored = coordinator.tokens.read_text()

    assert token not in stored
    assert token_hash(token) in stored
    assert oct(coordinator.tokens.stat().st_mode & 0o777) == "0o600"


def test_version_list_hides_coordinator_paths(coordinator: Coordinator) -> None:
    with _client(coordinator)._open("/v1/versions") as response:
        versions = json.loads(response.read())["versions"]

    assert [entry["version"] for entry in versions] == ["run-p/round-002", "run-p/round-001"]
    assert all("path" not in entry and "archive" not in entry for entry in versions)


def test_unknown_version_hides_coordinator_paths(coordinator: Coordinator) -> None:
    with pytest.raises(PullError, match="HTTP 404") as error:
        _client(coordinator).entry("run-x/round-009")

    assert "no such published version; see GET /v1/versions" in str(error.value)
    assert str(coordinator.registry.root) not in str(error.value)
    assert "list_versions" not in str(error.value)


def test_pull_token_file_with_byte_order_mark(coordinator: Coordinator, tmp_path: Path) -> None:
    token_file = tmp_path / "bom.token"
    token_file.write_text("\ufeff" + coordinator.token_file.read_text(encoding="utf-8"), encoding="utf-8")
    token_file.chmod(0o600)

    completed = _pull(coordinator, tmp_path / "models", token_file=token_file)

    assert completed.returncode == 0, completed.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [("tok en", "spaces or characters that are not printable ASCII"), ("t\u00f6ken", "not printable ASCII")],
    ids=["space", "non-ascii"],
)
def test_read_token_rejects_bad_text(tmp_path: Path, content: str, message: str) -> None:
    token_file = tmp_path / "site.token"
    token_file.write_text(content + "\n", encoding="utf-8")

    with pytest.raises(PullError, match=message):
        read_token(token_file)


def test_pull_rejects_invalid_version(coordinator: Coordinator, tmp_path: Path) -> None:
    completed = _pull(coordinator, tmp_path / "models", "--version", "../../etc/passwd")

    assert completed.returncode == 1
    assert "invalid --version '../../etc/passwd': use latest, best or <run>/round-NNN" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_pull_unreachable_keeps_verified_bundle(coordinator: Coordinator, tmp_path: Path) -> None:
    _pull(coordinator, tmp_path / "models")
    dead_url = f"https://127.0.0.1:{_free_port()}"

    completed = _pull(coordinator, tmp_path / "models", url=dead_url)

    assert completed.returncode == 75, completed.stderr
    assert "still using the verified bundle run-p/round-002" in completed.stdout
    assert "is unreachable" in completed.stderr
    assert load_bundle(tmp_path / "models" / "current", coordinator.public_key).signature_verified


def test_pull_unreachable_without_bundle_fails(coordinator: Coordinator, tmp_path: Path) -> None:
    completed = _pull(coordinator, tmp_path / "models", url=f"https://127.0.0.1:{_free_port()}")

    assert completed.returncode == 1
    assert "contains no verified bundle to fall back to" in completed.stderr


def test_pull_rejects_untrusted_certificate(coordinator: Coordinator, tmp_path: Path) -> None:
    other_ca, _, _ = write_test_pki(tmp_path / "other-ca", ca_name="another CA")

    completed = _pull(coordinator, tmp_path / "models", ca=other_ca)

    assert completed.returncode == 1
    assert "TLS verification of" in completed.stderr
    assert not (tmp_path / "models" / "current").exists()


def test_pull_rejects_tampered_bundle_and_keeps_current(coordinator: Coordinator, tmp_path: Path) -> None:
    _pull(coordinator, tmp_path / "models", "--version", "run-p/round-001")
    # Publish round 3, then swap a file inside its archive and fix up the
    # entry's checksum, as an attacker with write access to the registry could.
    registry = coordinator.registry
    registry.publish(
        write_toy_round(tmp_path / "round-3", 3, seed=3), run_id="run-p", server_round=3,
        signing_key=load_private_key(coordinator.public_key.parent / "bundle-signing.key"),
        dataset_file=write_toy_dataset(tmp_path), export_onnx=False,
    )
    folder = tmp_path / "tampered"
    shutil.copytree(registry.path_of("run-p/round-003"), folder)
    (folder / "preprocessing.json").write_text((folder / "preprocessing.json").read_text().replace("10.0", "99.0"))
    archive = registry.archive_of("run-p/round-003")
    pack_bundle(folder, archive)
    entry_path = archive.with_name("round-003.json")
    entry = json.loads(entry_path.read_text())
    entry.update(sha256=file_sha256(archive), bytes=archive.stat().st_size)
    entry_path.write_text(json.dumps(entry))

    completed = _pull(coordinator, tmp_path / "models")

    assert completed.returncode == 1
    assert "preprocessing.json" in completed.stderr
    assert "keeping run-p/round-001" in completed.stderr
    assert (tmp_path / "models" / "current").resolve().name == "run-p__round-001"
    shutil.rmtree(registry.path_of("run-p/round-003"))
    for suffix in (".tar.gz", ".json"):
        archive.with_name("round-003" + suffix).unlink()
    (registry.root / "latest.json").write_text(json.dumps({"version": "run-p/round-002"}))


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_any_case(coordinator: Coordinator, scheme: str) -> None:
    # HTTP authentication schemes are case-insensitive (RFC 9110, section 11.1).
    token = coordinator.token_file.read_text().strip()
    request = urllib.request.Request(
        f"{coordinator.url}/v1/versions/latest", headers={"Authorization": f"{scheme} {token}"}
    )
    context = ssl.create_default_context(cafile=str(coordinator.ca))

    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        status = response.status
        entry = json.loads(response.read())

    assert status == 200
    assert entry["version"] == "run-p/round-002"


def test_service_log_never_contains_token(coordinator: Coordinator) -> None:
    """Stops the shared service to read its log, so it stays the module's last test."""
    _client(coordinator).entry("latest")
    token = coordinator.token_file.read_text().strip()
    coordinator.process.terminate()
    _, stderr = coordinator.process.communicate(timeout=30)

    assert "serve: site hospital-a GET /v1/versions/latest -> 200" in stderr
    assert token not in stderr
    assert "Traceback" not in stderr


def test_add_site_keeps_existing_token_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tokens = tmp_path / "site-tokens.json"
    token_file = tmp_path / "hospital-b.token"
    token_file.write_text("earlier token\n", encoding="utf-8")

    status = service_main(["add-site", "--tokens", str(tokens), "--site", "hospital-c", "--token-out", str(token_file)])

    assert status == 1
    assert "already exists" in capsys.readouterr().err
    assert token_file.read_text(encoding="utf-8") == "earlier token\n"
    assert not tokens.exists()


def test_serve_port_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["serve", "--registry", str(tmp_path), "--tokens", str(tmp_path / "t.json")]
    arguments += ["--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "c.key"), "--port", "-1"]

    assert service_main(arguments) == 1

    assert "--port must be between 0 and 65535, got -1" in capsys.readouterr().err


def test_pull_negative_timeout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["--url", "https://127.0.0.1:9", "--token-file", str(tmp_path / "t"), "--ca", str(tmp_path / "ca.pem")]
    arguments += ["--to", str(tmp_path / "models"), "--timeout", "-1"]

    assert pull_main(arguments) == 1

    assert "--timeout must be above 0 seconds, got -1.0" in capsys.readouterr().err


def test_serve_on_taken_port(coordinator: Coordinator, capsys: pytest.CaptureFixture[str]) -> None:
    tls = coordinator.work / "tls"
    # The test binds the port itself, because the shared service has been stopped
    # by now and serve would run on a free port until it is killed.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        arguments = ["serve", "--registry", str(coordinator.work / "registry"), "--tokens", str(coordinator.tokens)]
        arguments += ["--cert", str(tls / "server.pem"), "--key", str(tls / "server.key"), "--port", port]

        status = service_main(arguments)

    assert status == 1

    error = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}: " in error
    assert "another program already listens there" in error


def test_serve_missing_registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arguments = ["serve", "--registry", str(tmp_path / "absent"), "--tokens", str(tmp_path / "t.json")]
    arguments += ["--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "c.key"), "--port", "0"]

    assert service_main(arguments) == 1

    assert "registry folder" in capsys.readouterr().err


def test_long_request_line_gets_414(coordinator: Coordinator, caplog: pytest.LogCaptureFixture) -> None:
    context = ssl.create_default_context(cafile=str(coordinator.ca))
    # Exactly one byte over http.server's limit of 65536 and no line end, so the
    # service reads everything sent and closes without resetting the connection.
    request_line = b"GET /" + b"a" * (65537 - len(b"GET /"))

    with caplog.at_level(logging.INFO, logger="server.model_service"), _service_in_thread(coordinator) as service:
        port = service.server_address[1]
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as connection,
        ):
            connection.sendall(request_line)
            status_line = connection.makefile("rb").readline()

    assert status_line.startswith(b"HTTP/1.1 414 ")
    assert "serve: request line from 127.0.0.1 is longer than 65536 bytes -> 414" in caplog.messages
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("host", ["", "   "], ids=["empty", "whitespace"])
def test_serve_rejects_empty_host(tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str) -> None:
    arguments = ["serve", "--registry", str(tmp_path), "--tokens", str(tmp_path / "t.json")]
    arguments += ["--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "c.key"), "--host", host]

    status = service_main(arguments)

    error = capsys.readouterr().err
    assert status == 1
    assert error == (
        f"error: --host {host!r} is empty; pass 127.0.0.1 to listen on this machine only, "
        "or 0.0.0.0 (or ::) to listen on every interface\n"
    )


def test_serve_missing_tokens_file_not_listen_error(
    coordinator: Coordinator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tls = coordinator.work / "tls"
    tokens = tmp_path / "absent.json"
    arguments = ["serve", "--registry", str(coordinator.work / "registry"), "--tokens", str(tokens)]
    arguments += ["--cert", str(tls / "server.pem"), "--key", str(tls / "server.key"), "--port", "0"]

    status = service_main(arguments)

    error = capsys.readouterr().err
    assert status == 1
    assert error.startswith(f"error: tokens file not found: {tokens}; create it with")
    assert "cannot listen" not in error


def test_serve_over_ipv6_loopback(coordinator: Coordinator) -> None:
    process, url = _start_service_process(coordinator.work, coordinator.tokens, "::1")
    try:
        client = ModelServiceClient(url, coordinator.token_file.read_text().strip(), coordinator.ca)
        entry = client.entry("latest")
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=30)

    assert url.startswith("https://[::1]:")
    assert entry["version"] == "run-p/round-002"
    assert "serve: site hospital-a GET /v1/versions/latest -> 200" in stderr
    assert "which other machines can reach" not in stderr
    assert "Traceback" not in stderr


def test_service_listens_on_bracketed_ipv6(coordinator: Coordinator) -> None:
    with _service_in_thread(coordinator, host="[::1]") as service:
        family = service.address_family
        address = service.server_address[0]
        client = ModelServiceClient(f"https://[::1]:{service.server_address[1]}",
                                    coordinator.token_file.read_text().strip(), coordinator.ca)
        entry = client.entry("latest")

    assert family == socket.AF_INET6
    assert address == "::1"
    assert entry["version"] == "run-p/round-002"


def test_serve_unresolvable_host_only_error(
    coordinator: Coordinator, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fail_to_resolve(*_arguments: Any, **_options: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    # The name is never looked up: resolving it fails the way an unknown name does.
    monkeypatch.setattr(socket, "getaddrinfo", fail_to_resolve)
    tls = coordinator.work / "tls"
    arguments = ["serve", "--registry", str(coordinator.work / "registry"), "--tokens", str(coordinator.tokens)]
    arguments += ["--cert", str(tls / "server.pem"), "--key", str(tls / "server.key")]
    arguments += ["--host", "coordinator.invalid", "--port", "0"]

    with caplog.at_level(logging.WARNING, logger="server.model_service"):
        status = service_main(arguments)

    assert status == 1
    assert capsys.readouterr().err == (
        "error: cannot listen on coordinator.invalid:0: [Errno -2] Name or service not known; check --host and --port\n"
    )
    assert "which other machines can reach" not in caplog.text


class _BoundService:
    """Stands in for a ModelService that has bound ``address``; serve_forever returns at once."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.server_address = address

    def serve_forever(self) -> None:
        return None

    def shutdown(self) -> None:
        return None

    def server_close(self) -> None:
        return None


@pytest.mark.parametrize(
    ("bound", "url", "reachable"),
    [
        (("0.0.0.0", 8443), "https://0.0.0.0:8443", True),
        (("::", 8443), "https://[::]:8443", True),
        (("192.0.2.10", 8443), "https://192.0.2.10:8443", True),
        (("127.0.0.1", 8443), "https://127.0.0.1:8443", False),
        (("::1", 8443), "https://[::1]:8443", False),
    ],
    ids=["every-ipv4-interface", "every-ipv6-interface", "one-address", "ipv4-loopback", "ipv6-loopback"],
)
def test_serve_warns_when_other_machines_can_connect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch, bound: tuple[str, int], url: str, reachable: bool,
) -> None:
    # No socket is bound to a non-loopback address: the check runs on the address a bind would report.
    monkeypatch.setattr(model_service, "start_service", lambda *_arguments: _BoundService(bound))
    monkeypatch.setattr(model_service.signal, "signal", lambda *_arguments: None)
    arguments = ["serve", "--registry", str(tmp_path), "--tokens", str(tmp_path / "t.json")]
    arguments += ["--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "c.key"), "--host", bound[0]]

    with caplog.at_level(logging.WARNING, logger="server.model_service"):
        status = service_main(arguments)

    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert status == 0
    assert capsys.readouterr().out == f"serve: listening on {url} (registry {tmp_path})\n"
    if reachable:
        assert warnings == [
            f"serve: listening on {bound[0]}, which other machines can reach; let only the hospitals' networks "
            "connect to port 8443 (firewall)"
        ]
    else:
        assert warnings == []
