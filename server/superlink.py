"""Run the coordinator's Flower SuperLink and manage the hospitals allowed to join it.

Examples::

    python -m server.superlink start --state-dir /srv/fedids --tls-dir secrets \\
        --host 203.0.113.10 --port 9093
    python -m server.superlink register-site --state-dir /srv/fedids \\
        --name hospital-a --public-key hospital-a.pub
    python -m server.superlink submit --state-dir /srv/fedids --app . \\
        --run-config num-rounds=10 --run-config checkpoint-dir='"/srv/fedids/checkpoints"'
    python -m server.superlink remove-site --state-dir /srv/fedids --name hospital-a
    python -m server.superlink stop --state-dir /srv/fedids

The SuperLink runs with TLS (``superlink.pem``/``superlink.key`` signed by
``ca.pem`` from :mod:`server.tls`), SuperNode authentication (only
registered public keys may join) and its state in
``<state-dir>/superlink.db``, so a restart keeps runs and registered sites.
It never installs app dependencies at run time: the coordinator's Python
environment must already hold them.

Layout of ``--state-dir``:

- ``superlink.db``: Flower's state (runs, registered SuperNodes);
- ``superlink.pid`` and ``logs/superlink.log``;
- ``superlink-home/``: the SuperLink's ``FLWR_HOME`` (installed app bundles);
- ``cli/config.toml``: the ``flwr`` connection named ``fedids``;
- ``sites.json``: hospital name to node id and key fingerprint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

from common.credentials import load_auth_public_key, load_certificate, public_key_fingerprint
from common.exceptions import ConfigError, DeploymentError, FedIDSError
from common.processes import (
    flwr_environment,
    flwr_executable,
    read_pid_file,
    stop_process_tree,
    wait_for_tls_port,
)

logger = logging.getLogger(__name__)

#: Name of the SuperLink connection in the coordinator's ``flwr`` configuration.
CONNECTION_NAME = "fedids"

#: Default port of the SuperLink's Fleet, Control and Runtime APIs (one HTTPS port in Flower 1.42).
DEFAULT_PORT = 9093

#: Seconds ``flwr`` CLI calls may take before they count as failed.
CLI_TIMEOUT_SECONDS = 120.0

# Bind addresses that mean "every interface"; local clients reach them over loopback.
_WILDCARD_HOSTS = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class SuperLinkLayout:
    """Files of one SuperLink under its state folder."""

    state_dir: Path

    @property
    def database(self) -> Path:
        return self.state_dir / "superlink.db"

    @property
    def flwr_home(self) -> Path:
        return self.state_dir / "superlink-home"

    @property
    def cli_home(self) -> Path:
        return self.state_dir / "cli"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "superlink.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "logs" / "superlink.log"

    @property
    def sites_file(self) -> Path:
        return self.state_dir / "sites.json"


@dataclass(frozen=True)
class SuperLinkSettings:
    """How to start a SuperLink.

    Attributes
    ----------
    state_dir : Path
        Folder of the database, logs and CLI configuration (see :class:`SuperLinkLayout`).
    tls_dir : Path
        Folder with ``ca.pem``, ``superlink.pem`` and ``superlink.key``.
    host : str
        Address the HTTPS port binds to; ``127.0.0.1`` keeps it local.
    port : int
        The one port of the Fleet, Control and Runtime APIs.
    """

    state_dir: Path
    tls_dir: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT

    @property
    def layout(self) -> SuperLinkLayout:
        return SuperLinkLayout(self.state_dir)

    @property
    def ca_certificate(self) -> Path:
        return self.tls_dir / "ca.pem"

    @property
    def certificate(self) -> Path:
        return self.tls_dir / "superlink.pem"

    @property
    def key(self) -> Path:
        return self.tls_dir / "superlink.key"

    @property
    def local_address(self) -> str:
        """``host:port`` that processes on this machine use to reach the SuperLink."""
        host = "127.0.0.1" if self.host in _WILDCARD_HOSTS else self.host
        return f"{host}:{self.port}"


def superlink_command(settings: SuperLinkSettings) -> list[str]:
    """Return the ``flower-superlink`` command line for ``settings``."""
    layout = settings.layout
    return [
        flwr_executable("flower-superlink"),
        "--ssl-certfile", str(settings.certificate.resolve()),
        "--ssl-keyfile", str(settings.key.resolve()),
        "--ssl-ca-certfile", str(settings.ca_certificate.resolve()),
        "--enable-supernode-auth",
        "--database", str(layout.database.resolve()),
        "--disable-runtime-dependency-installation",
        "--isolation", "subprocess",
        "--host", settings.host,
        "--port", str(settings.port),
    ]  # fmt: skip


def _check_tls_files(settings: SuperLinkSettings) -> None:
    for path in (settings.ca_certificate, settings.certificate, settings.key):
        if not path.is_file():
            raise ConfigError(
                f"TLS file not found: {path}; create it with python -m server.tls --out {settings.tls_dir}"
            )
    load_certificate(settings.certificate)


def write_cli_connection(layout: SuperLinkLayout, address: str, ca_certificate: Path) -> Path:
    """Write the ``flwr`` CLI configuration with one TLS connection named :data:`CONNECTION_NAME`.

    ``flwr`` 1.42 keeps connections in ``$FLWR_HOME/config.toml``, so the
    coordinator's commands use ``<state-dir>/cli`` as ``FLWR_HOME``.
    """
    layout.cli_home.mkdir(parents=True, exist_ok=True)
    path = layout.cli_home / "config.toml"
    config = {
        "superlink": {
            "default": CONNECTION_NAME,
            CONNECTION_NAME: {"address": address, "root-certificates": str(Path(ca_certificate).resolve())},
        }
    }
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


def start_superlink(settings: SuperLinkSettings, *, ready_timeout: float = 60.0) -> int:
    """Start ``flower-superlink`` in the background and return its process id once its TLS port accepts handshakes.

    The process gets its own session, so a terminal's Ctrl-C does not reach
    it; :func:`stop_superlink` ends it and every process it started.

    Raises
    ------
    ConfigError
        If a TLS file is missing.
    DeploymentError
        If a SuperLink of this state folder already runs, or it exits or
        does not complete a verified TLS handshake within ``ready_timeout`` seconds.
    """
    _check_tls_files(settings)
    layout = settings.layout
    running = read_pid_file(layout.pid_file)
    if running is not None:
        raise DeploymentError(
            f"a SuperLink of {layout.state_dir} already runs as process {running}; stop it first "
            f"(python -m server.superlink stop --state-dir {layout.state_dir})"
        )
    for folder in (layout.state_dir, layout.flwr_home, layout.log_file.parent):
        folder.mkdir(parents=True, exist_ok=True)
    write_cli_connection(layout, settings.local_address, settings.ca_certificate)

    command = superlink_command(settings)
    with layout.log_file.open("ab") as log:
        # Flower puts the launching directory on the apps' import path. The
        # state folder is neutral, so a checkout in the current directory
        # cannot shadow the installed app.
        process = subprocess.Popen(
            command,
            cwd=layout.state_dir,
            env=flwr_environment(layout.flwr_home),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    layout.pid_file.write_text(f"{process.pid}\n")
    host, _, port = settings.local_address.rpartition(":")
    try:
        wait_for_tls_port(host, int(port), settings.ca_certificate, ready_timeout)
    except DeploymentError as error:
        returncode = process.poll()
        stop_process_tree(process.pid)
        layout.pid_file.unlink(missing_ok=True)
        state = f"exited with code {returncode}" if returncode is not None else "timed out waiting for a TLS handshake"
        raise DeploymentError(f"SuperLink {state}; see {layout.log_file}: {error}") from error
    logger.info(
        "superlink: started process %d on %s:%d with TLS and SuperNode authentication, state in %s",
        process.pid,
        settings.host,
        settings.port,
        layout.database,
    )
    return process.pid


def stop_superlink(state_dir: Path, timeout: float = 15.0) -> bool:
    """Stop the SuperLink of ``state_dir`` with its SuperExec and ServerApp processes.

    Returns ``False`` when no SuperLink of that folder was running.
    """
    layout = SuperLinkLayout(Path(state_dir))
    pid = read_pid_file(layout.pid_file)
    if pid is None:
        layout.pid_file.unlink(missing_ok=True)
        return False
    stop_process_tree(pid, timeout)
    layout.pid_file.unlink(missing_ok=True)
    logger.info("superlink: stopped process %d and its children", pid)
    return True


def run_flwr(layout: SuperLinkLayout, arguments: Sequence[str], timeout: float = CLI_TIMEOUT_SECONDS) -> str:
    """Run one ``flwr`` command against the coordinator's connection and return its standard output.

    Raises
    ------
    DeploymentError
        If the command fails or takes longer than ``timeout`` seconds.
    """
    if not (layout.cli_home / "config.toml").is_file():
        raise DeploymentError(
            f"no flwr connection in {layout.cli_home}; start the SuperLink with this --state-dir first"
        )
    command = [flwr_executable("flwr"), *arguments]
    try:
        completed = subprocess.run(
            command,
            env=flwr_environment(layout.cli_home),
            cwd=layout.state_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise DeploymentError(f"flwr {arguments[0]} timed out after {timeout:.0f} s") from error
    if completed.returncode != 0:
        output = (completed.stdout + completed.stderr).strip().splitlines()
        raise DeploymentError(f"flwr {' '.join(arguments[:2])} failed: {' '.join(output[-5:])}")
    return completed.stdout


def _json_output(text: str) -> dict[str, Any]:
    """Parse the JSON object that ``flwr ... --format json`` prints after any status lines."""
    start = text.find("{")
    try:
        value = json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise DeploymentError(f"flwr printed no JSON object: {text.strip()[:300]}")
    return value


def read_sites(layout: SuperLinkLayout) -> dict[str, dict[str, Any]]:
    """Return the registry of hospitals: name to ``node_id``, ``fingerprint`` and ``registered_at``."""
    if not layout.sites_file.is_file():
        return {}
    return dict(json.loads(layout.sites_file.read_text(encoding="utf-8")))


def _write_sites(layout: SuperLinkLayout, sites: Mapping[str, Any]) -> None:
    temporary = layout.sites_file.with_suffix(".tmp")
    temporary.write_text(json.dumps(sites, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, layout.sites_file)


def register_site(layout: SuperLinkLayout, name: str, public_key: Path) -> int:
    """Register a hospital's public key with the SuperLink and return its node id.

    Raises
    ------
    CredentialError
        If the file is not an elliptic-curve OpenSSH public key.
    ConfigError
        If ``name`` is already registered.
    DeploymentError
        If the SuperLink rejects the key (for example, a key registered twice).
    """
    load_auth_public_key(public_key)
    sites = read_sites(layout)
    if name in sites:
        raise ConfigError(
            f"site {name!r} is already registered as node {sites[name]['node_id']}; remove it first to change its key"
        )
    output = run_flwr(
        layout,
        ["supernode", "register", str(Path(public_key).resolve()), CONNECTION_NAME, "--name", name, "--format", "json"],
    )
    node_id = int(_json_output(output)["node-id"])
    sites[name] = {
        "node_id": node_id,
        "fingerprint": public_key_fingerprint(public_key),
        "registered_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    _write_sites(layout, sites)
    logger.info("sites: registered %s as node %d, key %s", name, node_id, sites[name]["fingerprint"])
    return node_id


def remove_site(layout: SuperLinkLayout, name: str) -> int:
    """Unregister a hospital, which disconnects its SuperNode, and return the node id it had.

    Raises
    ------
    ConfigError
        If ``name`` is not registered.
    DeploymentError
        If the SuperLink rejects the removal.
    """
    sites = read_sites(layout)
    if name not in sites:
        raise ConfigError(f"site {name!r} is not registered; registered sites: {sorted(sites) or 'none'}")
    node_id = int(sites[name]["node_id"])
    run_flwr(layout, ["supernode", "unregister", str(node_id), CONNECTION_NAME, "--format", "json"])
    del sites[name]
    _write_sites(layout, sites)
    logger.info("sites: removed %s (node %d)", name, node_id)
    return node_id


def list_sites(layout: SuperLinkLayout) -> list[dict[str, Any]]:
    """Return every node the SuperLink lists, with the hospital name from the registry.

    Each entry has ``name`` (empty for a node missing from the registry),
    ``node_id`` and ``status`` (``registered``, ``online``, ``offline`` or
    ``unregistered``).
    """
    nodes = _json_output(run_flwr(layout, ["supernode", "list", CONNECTION_NAME, "--format", "json"]))["nodes"]
    names = {int(entry["node_id"]): name for name, entry in read_sites(layout).items()}
    return [
        {"name": names.get(int(node["node-id"]), ""), "node_id": int(node["node-id"]), "status": node["status"]}
        for node in nodes
    ]


def submit_run(layout: SuperLinkLayout, app_dir: Path, run_config: Mapping[str, Any]) -> int:
    """Submit the Flower App in ``app_dir`` with ``run_config`` overrides and return the run id.

    The overrides go through a TOML file, so paths and strings need no shell quoting.
    """
    layout.cli_home.mkdir(parents=True, exist_ok=True)
    config_file = layout.cli_home / f"run-config-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.toml"
    config_file.write_text(tomli_w.dumps(dict(run_config)), encoding="utf-8")
    arguments = ["run", str(Path(app_dir).resolve()), CONNECTION_NAME, "--format", "json"]
    if run_config:
        arguments += ["--run-config", str(config_file)]
    run_id = _json_output(run_flwr(layout, arguments))["run-id"]
    if run_id is None:
        raise DeploymentError("the SuperLink accepted no run; see its log")
    logger.info("run: submitted run %s from %s", run_id, app_dir)
    return int(run_id)


def run_status(layout: SuperLinkLayout, run_id: int) -> str:
    """Return the status of a run, for example ``running`` or ``finished:completed``."""
    runs = _json_output(run_flwr(layout, ["ls", CONNECTION_NAME, "--format", "json"]))["runs"]
    for run in runs:
        if int(run["run-id"]) == run_id:
            return str(run["status"])
    raise DeploymentError(f"run {run_id} is unknown to the SuperLink")


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------


def _parse_run_config(values: Sequence[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` pairs whose values are TOML (``3``, ``0.5``, ``"text"``)."""
    import tomllib

    config: dict[str, Any] = {}
    for value in values:
        key, separator, text = value.partition("=")
        if not separator or not key:
            raise ConfigError(f"--run-config expects KEY=VALUE, got {value!r}")
        try:
            config[key] = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(
                f"--run-config {value!r}: the value must be TOML, for example 3, 0.5 or '\"text\"': {error}"
            ) from error
    return config


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m server.superlink", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--state-dir", type=Path, required=True, help="SuperLink state folder")
        return sub

    start = add("start", "start the SuperLink in the background")
    start.add_argument(
        "--tls-dir", type=Path, default=Path("secrets"), help="folder of the TLS files (default: secrets)"
    )
    start.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1; 0.0.0.0 for hospitals)")
    start.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTPS port (default: {DEFAULT_PORT})")
    add("stop", "stop the SuperLink and every process it started")
    register = add("register-site", "allow a hospital's public key to join")
    register.add_argument("--name", required=True, help="hospital name, for example hospital-a")
    register.add_argument("--public-key", type=Path, required=True, help="the hospital's OpenSSH public key file")
    remove = add("remove-site", "unregister a hospital; its SuperNode is disconnected")
    remove.add_argument("--name", required=True, help="hospital name given at registration")
    add("list-sites", "list the nodes the SuperLink knows with their status")
    connect = add("connect", "point the commands at a SuperLink started elsewhere, for example in Docker")
    connect.add_argument("--address", required=True, help="HOST:PORT of the SuperLink")
    connect.add_argument("--ca", type=Path, required=True, help="the coordinator's CA certificate")
    submit = add("submit", "submit a federated run")
    submit.add_argument("--app", type=Path, default=Path("."), help="Flower App folder (default: .)")
    submit.add_argument(
        "--run-config", action="append", default=[], metavar="KEY=VALUE", help="run-config override (repeatable)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    layout = SuperLinkLayout(args.state_dir)
    try:
        if args.command == "start":
            settings = SuperLinkSettings(args.state_dir, args.tls_dir, args.host, args.port)
            pid = start_superlink(settings)
            print(f"SuperLink running as process {pid} on {args.host}:{args.port}; log: {layout.log_file}")
        elif args.command == "stop":
            stopped = stop_superlink(args.state_dir)
            print("SuperLink stopped" if stopped else f"no SuperLink of {args.state_dir} was running")
        elif args.command == "register-site":
            node_id = register_site(layout, args.name, args.public_key)
            print(f"registered {args.name} as node {node_id}, key {public_key_fingerprint(args.public_key)}")
        elif args.command == "remove-site":
            node_id = remove_site(layout, args.name)
            print(f"removed {args.name} (node {node_id})")
        elif args.command == "connect":
            load_certificate(args.ca)
            path = write_cli_connection(layout, args.address, args.ca)
            print(f"wrote {path}")
        elif args.command == "list-sites":
            for site in list_sites(layout):
                print(f"{site['name'] or '(unnamed)':<20} {site['node_id']:>20} {site['status']}")
        elif args.command == "submit":
            run_id = submit_run(layout, args.app, _parse_run_config(args.run_config))
            print(f"submitted run {run_id}; follow it with:")
            print(f"  FLWR_HOME={layout.cli_home} flwr log {run_id} {CONNECTION_NAME}")
    except FedIDSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
