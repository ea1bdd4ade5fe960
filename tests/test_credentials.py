"""TLS material, SuperNode keys and the command-line checks of the deployment commands."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from client.keys import check_site_name, create_site_credentials, runtime_tls_files
from client.keys import main as keys_main
from client.supernode import SuperNodeSettings, check_settings, write_node_config
from client.supernode import main as supernode_main
from common.credentials import (
    certificate_names,
    create_tls_files,
    dns_name_problem,
    load_auth_private_key,
    load_auth_public_key,
    load_certificate,
    public_key_fingerprint,
    write_private_file,
)
from common.exceptions import ConfigError, CredentialError, DeploymentError
from common.processes import wait_for_tls_port
from server.superlink import (
    SuperLinkLayout,
    SuperLinkSettings,
    _parse_run_config,
    register_site,
    remove_site,
    start_superlink,
    write_cli_connection,
)
from server.tls import create_superlink_tls
from server.tls import main as tls_main

# ---------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------


def test_server_certificate_signed_by_ca(tmp_path: Path) -> None:
    files = create_superlink_tls(tmp_path, ["link.example"], ["192.0.2.7"])

    ca = load_certificate(files.ca_certificate)
    certificate = load_certificate(files.certificate)

    certificate.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_server_certificate_names_hosts_and_loopback(tmp_path: Path) -> None:
    files = create_superlink_tls(tmp_path, ["link.example"], ["192.0.2.7"])

    names = certificate_names(load_certificate(files.certificate))

    assert sorted(names) == sorted(["link.example", "localhost", "192.0.2.7", "127.0.0.1"])


def test_private_keys_readable_by_owner_only(tmp_path: Path) -> None:
    files = create_superlink_tls(tmp_path)

    for path in (files.key, files.ca_key):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


def test_tls_files_refuse_overwrite(tmp_path: Path) -> None:
    create_superlink_tls(tmp_path)

    with pytest.raises(CredentialError, match=r"superlink\.pem already exists"):
        create_superlink_tls(tmp_path)


def test_tls_files_reuse_existing_ca(tmp_path: Path) -> None:
    first = create_superlink_tls(tmp_path)
    ca_before = first.ca_certificate.read_bytes()
    old_certificate = first.certificate.read_bytes()

    second = create_superlink_tls(tmp_path, ["renewed.example"], overwrite=True)

    assert second.ca_certificate.read_bytes() == ca_before
    assert second.certificate.read_bytes() != old_certificate
    load_certificate(second.certificate).verify_directly_issued_by(load_certificate(second.ca_certificate))


def test_tls_files_reject_half_ca(tmp_path: Path) -> None:
    files = create_superlink_tls(tmp_path)
    files.ca_key.unlink()

    with pytest.raises(CredentialError, match=r"only one of ca\.pem and ca\.key"):
        create_tls_files(tmp_path, "other", ca_name="x", hostnames=["localhost"])


def test_tls_files_reject_invalid_ip(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match=r"'300\.1\.1\.1' is not an IP address"):
        create_superlink_tls(tmp_path, ip_addresses=["300.1.1.1"])


def test_tls_files_reject_invalid_dns_name(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match=r"'bad host' is not a valid DNS host name: it contains ' '"):
        create_superlink_tls(tmp_path, ["bad host"])

    assert not (tmp_path / "ca.pem").exists()
    assert not (tmp_path / "ca.key").exists()


@pytest.mark.parametrize(
    "name",
    [
        "localhost",
        "coordinator-1.hospital-net.example",
        "xn--hpital-fva.example",
        "a" * 63,
        ".".join(["a" * 63] * 4)[:253],
    ],
    ids=["localhost", "hyphens", "punycode", "longest-label", "longest-name"],
)
def test_dns_name_problem_accepts_host_names(name: str) -> None:
    assert dns_name_problem(name) is None


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("", "invalid --host '': it is empty"),
        ("  ", "it contains ' '; a host name contains only letters, digits, hyphens and dots"),
        ("bad host", "invalid --host 'bad host': it contains ' '"),
        ("h\u00f4pital.example", "it contains '\u00f4'"),
        ("*.example", "it contains '*'"),
        ("link.example.", "it has an empty label"),
        ("a..example", "it has an empty label"),
        ("-link.example", "its label '-link' starts or ends with a hyphen"),
        ("a" * 64 + ".example", "it has a label of 64 characters; a label has at most 63"),
        (".".join(["a" * 63] * 4), "it has 255 characters; a host name has at most 253"),
        ("192.0.2.7", "--host '192.0.2.7' is an IP address; pass it with --ip"),
    ],
    ids=["empty", "spaces", "space", "non-ascii", "wildcard", "trailing-dot", "double-dot", "leading-hyphen",
         "long-label", "long-name", "ip-address"],
)
def test_tls_command_rejects_invalid_host(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str, message: str
) -> None:
    status = tls_main(["--out", str(tmp_path / "secrets"), f"--host={host}"])

    error = capsys.readouterr().err
    assert status == 2
    assert len(error.splitlines()) == 1
    assert error.startswith("error: ")
    assert message in error
    assert not (tmp_path / "secrets").exists()


def test_load_certificate_rejects_other_file(tmp_path: Path) -> None:
    path = tmp_path / "not-a-cert.pem"
    path.write_text("hello\n")

    with pytest.raises(CredentialError, match="is not a PEM certificate"):
        load_certificate(path)


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A real TLS server on 127.0.0.1 that completes handshakes with the generated certificate."""
    files = create_superlink_tls(tmp_path / "tls")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.certificate, files.key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with context.wrap_socket(connection, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1]), files.ca_certificate
    stop.set()
    thread.join(timeout=5)
    listener.close()


def test_tls_handshake_verified_by_ca(tls_server: tuple[int, Path]) -> None:
    port, ca_certificate = tls_server

    wait_for_tls_port("127.0.0.1", port, ca_certificate, timeout=10)


def test_tls_handshake_rejects_other_ca(tls_server: tuple[int, Path], tmp_path: Path) -> None:
    port, _ = tls_server
    other = create_superlink_tls(tmp_path / "other")

    with pytest.raises(DeploymentError, match="certificate verify failed"):
        wait_for_tls_port("127.0.0.1", port, other.ca_certificate, timeout=2)


def test_tls_command_prints_error_on_existing_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert tls_main(["--out", str(tmp_path), "--host", "link.example"]) == 0
    capsys.readouterr()

    assert tls_main(["--out", str(tmp_path)]) == 2

    error = capsys.readouterr().err
    assert error.startswith("error: ")
    assert "superlink.pem already exists; remove it first, or replace it with --overwrite" in error
    assert "Traceback" not in error


# ---------------------------------------------------------------------------
# SuperNode authentication keys
# ---------------------------------------------------------------------------


def test_site_key_fingerprint_matches_ssh_format(tmp_path: Path) -> None:
    credentials = create_site_credentials(tmp_path, "hospital-a")

    blob = base64.b64decode(credentials.public_key.read_text().split()[1])
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert credentials.fingerprint == expected
    assert public_key_fingerprint(credentials.public_key) == expected


def test_site_keys_accepted_by_flower_loaders(tmp_path: Path) -> None:
    from flwr.cli.supernode.register import try_load_public_key

    credentials = create_site_credentials(tmp_path, "hospital-a")

    # The loaders that "flwr supernode register" and flower-supernode use.
    assert try_load_public_key(credentials.public_key).startswith(b"-----BEGIN PUBLIC KEY-----")
    private = serialization.load_ssh_private_key(credentials.private_key.read_bytes(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.public_key() == load_auth_public_key(credentials.public_key)
    assert stat.S_IMODE(os.stat(credentials.private_key).st_mode) == 0o600


def test_site_public_key_carries_site_name(tmp_path: Path) -> None:
    credentials = create_site_credentials(tmp_path, "hospital-a")

    assert credentials.public_key.read_text().split()[0] == "ecdsa-sha2-nistp384"
    assert credentials.public_key.read_text().split()[2] == "hospital-a"


def test_site_runtime_certificate_for_loopback(tmp_path: Path) -> None:
    create_site_credentials(tmp_path, "hospital-a")
    runtime = runtime_tls_files(tmp_path)

    certificate = load_certificate(runtime.certificate)

    certificate.verify_directly_issued_by(load_certificate(runtime.ca_certificate))
    assert sorted(certificate_names(certificate)) == ["127.0.0.1", "localhost"]


def test_auth_public_key_rejects_ed25519(tmp_path: Path) -> None:
    path = tmp_path / "ed.pub"
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    path.write_bytes(key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))

    with pytest.raises(CredentialError, match="NIST curve"):
        load_auth_public_key(path)


def test_auth_public_key_rejects_garbage(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pub"
    path.write_text("not a key\n")

    with pytest.raises(CredentialError, match="is not an OpenSSH public key"):
        load_auth_public_key(path)


def test_auth_private_key_missing(tmp_path: Path) -> None:
    with pytest.raises(CredentialError, match="private key file not found"):
        load_auth_private_key(tmp_path / "missing.key")


@pytest.mark.parametrize("name", ["", "has space", "-leading-dash", "a" * 64, "ünïcode"])
def test_site_name_rejects_invalid(name: str) -> None:
    with pytest.raises(ConfigError, match="site name"):
        check_site_name(name)


def test_keys_command_refuses_existing_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert keys_main(["--out", str(tmp_path), "--name", "hospital-a"]) == 0
    capsys.readouterr()

    assert keys_main(["--out", str(tmp_path), "--name", "hospital-a"]) == 2

    error = capsys.readouterr().err
    assert error.startswith("error: ")
    assert "site.pub already exists" in error


# ---------------------------------------------------------------------------
# SuperNode settings
# ---------------------------------------------------------------------------


def _site_settings(tmp_path: Path, **changes: object) -> SuperNodeSettings:
    credentials = tmp_path / "credentials"
    if not credentials.exists():
        create_site_credentials(credentials, "hospital-a")
        create_superlink_tls(tmp_path / "coordinator")
        (tmp_path / "flows.csv").write_text("a,b\n1,2\n")
    values: dict[str, object] = {
        "superlink": "127.0.0.1:9093",
        "root_certificates": tmp_path / "coordinator" / "ca.pem",
        "credentials_dir": credentials,
        "site_name": "hospital-a",
        "data_path": tmp_path / "flows.csv",
        "work_dir": tmp_path / "work",
    }
    values.update(changes)
    return SuperNodeSettings(**values)  # type: ignore[arg-type]


def test_supernode_settings_valid(tmp_path: Path) -> None:
    check_settings(_site_settings(tmp_path))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"superlink": "no-port"}, "must be HOST:PORT"),
        ({"runtime_port": 70000}, "between 1 and 65535"),
        ({"data_path": Path("/nonexistent/flows.csv")}, "data file not found"),
        ({"root_certificates": Path("/nonexistent/ca.pem")}, "certificate file not found"),
        ({"site_name": "bad name"}, "site name"),
    ],
    ids=["address", "port", "data", "ca", "name"],
)
def test_supernode_settings_reject(tmp_path: Path, change: dict[str, object], message: str) -> None:
    settings = _site_settings(tmp_path, **change)

    with pytest.raises((ConfigError, CredentialError), match=message):
        check_settings(settings)


def test_supernode_settings_reject_missing_key(tmp_path: Path) -> None:
    settings = _site_settings(tmp_path)
    settings.private_key.unlink()

    with pytest.raises(CredentialError, match="private key file not found"):
        check_settings(settings)


def test_node_config_read_by_flower(tmp_path: Path) -> None:
    from flwr.common.config import parse_config_args

    settings = _site_settings(tmp_path, data_path=tmp_path / "flows.csv")
    path = write_node_config(settings)

    # flower-supernode reads a single --node-config argument ending in .toml as a file.
    config = parse_config_args([str(path)])

    assert config == {
        "data-path": str((tmp_path / "flows.csv").resolve()),
        "site-name": "hospital-a",
        "egress-log": str((tmp_path / "work" / "egress.jsonl").resolve()),
    }


def test_supernode_command_prints_error_on_missing_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = _site_settings(tmp_path)

    arguments = [
        "--superlink", "127.0.0.1:9093",
        "--root-certificates", str(settings.root_certificates),
        "--credentials", str(settings.credentials_dir),
        "--site-name", "hospital-a",
        "--data-path", str(tmp_path / "missing.csv"),
        "--work-dir", str(tmp_path / "work"),
    ]  # fmt: skip

    code = supernode_main(arguments)

    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: data file not found")
    assert "Traceback" not in error


# ---------------------------------------------------------------------------
# Coordinator commands that need no running SuperLink
# ---------------------------------------------------------------------------


def test_run_config_values_parsed_as_toml() -> None:
    config = _parse_run_config(["num-rounds=3", "learning-rate=0.5", 'checkpoint-dir="/srv/x y"', "flag=true"])

    assert config == {"num-rounds": 3, "learning-rate": 0.5, "checkpoint-dir": "/srv/x y", "flag": True}


@pytest.mark.parametrize("value", ["no-separator", "key=not toml", "=3"])
def test_run_config_rejects_invalid(value: str) -> None:
    with pytest.raises(ConfigError, match="--run-config"):
        _parse_run_config([value])


def test_cli_connection_points_at_ca(tmp_path: Path) -> None:
    import tomllib

    layout = SuperLinkLayout(tmp_path)

    path = write_cli_connection(layout, "127.0.0.1:9093", tmp_path / "ca.pem")

    config = tomllib.loads(path.read_text())
    assert config["superlink"]["default"] == "fedids"
    assert config["superlink"]["fedids"] == {
        "address": "127.0.0.1:9093",
        "root-certificates": str((tmp_path / "ca.pem").resolve()),
    }


def test_register_site_rejects_registered_name(tmp_path: Path) -> None:
    layout = SuperLinkLayout(tmp_path)
    layout.sites_file.write_text('{"hospital-a": {"node_id": 7, "fingerprint": "x"}}')
    credentials = create_site_credentials(tmp_path / "keys", "hospital-a")

    with pytest.raises(ConfigError, match="already registered as node 7"):
        register_site(layout, "hospital-a", credentials.public_key)


def test_remove_site_rejects_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'hospital-z' is not registered"):
        remove_site(SuperLinkLayout(tmp_path), "hospital-z")


def test_start_superlink_requires_tls_files(tmp_path: Path) -> None:
    settings = SuperLinkSettings(state_dir=tmp_path / "state", tls_dir=tmp_path / "missing")

    with pytest.raises(ConfigError, match="TLS file not found"):
        start_superlink(settings)


def test_superexec_secret_created_once(tmp_path: Path) -> None:
    from server.tls import create_superexec_secret

    path = create_superexec_secret(tmp_path)
    first = path.read_text()

    assert create_superexec_secret(tmp_path).read_text() == first
    assert len(first) == 64
    assert int(first, 16) >= 0
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_write_private_file_replaces_owner_only(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "token"

    write_private_file(target, b"first\n")
    write_private_file(target, b"second\n")

    assert target.read_bytes() == b"second\n"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert sorted(path.name for path in target.parent.iterdir()) == ["token"]
