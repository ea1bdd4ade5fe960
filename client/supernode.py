"""Run a hospital's Flower SuperNode: TLS to the SuperLink, site authentication and the site's own data.

Example::

    python -m client.supernode --superlink coordinator.example:9093 \\
        --root-certificates coordinator-ca.pem --credentials secrets/hospital-a \\
        --site-name hospital-a --data-path /srv/flows/hospital-a.csv --work-dir /srv/fedids-site

The command writes ``<work-dir>/node-config.toml`` (``data-path``,
``site-name`` and ``egress-log``, read by the ClientApp), then runs
``flower-supernode`` in the foreground with

- ``--root-certificates``: the coordinator's CA, which verifies the SuperLink;
- ``--auth-supernode-private-key``: the site key from :mod:`client.keys`;
- the loopback Runtime API on ``127.0.0.1:<runtime-port>`` with the site's
  ``runtime-tls`` certificate, so the ClientApp link is encrypted as well;
- no runtime installation of app dependencies: this Python environment must
  already hold them.

``flwr-clientapp`` processes are started per message and read the data file
only on this machine. The egress audit appends to ``<work-dir>/egress.jsonl``.

The SuperLink rejects a key that is not registered, and it also rejects a
registered site whose earlier connection it still counts as online (up to
two heartbeat intervals, 60 s in Flower 1.42, after a crash). Both look the
same to the SuperNode, so the command retries for ``--join-timeout``
seconds before it gives up.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO

import tomli_w

from client.egress import EGRESS_LOG_KEY
from client.keys import PRIVATE_KEY_FILE, check_site_name, runtime_tls_files
from client.site_data import DATA_PATH_KEY, SITE_NAME_KEY
from common.credentials import load_auth_private_key, load_certificate
from common.exceptions import ConfigError, FedIDSError
from common.processes import flwr_environment, flwr_executable

logger = logging.getLogger(__name__)

#: Default port of the SuperNode's loopback Runtime API (Flower's default).
DEFAULT_RUNTIME_PORT = 9094

#: Default seconds to keep retrying when the SuperLink does not accept the site yet.
DEFAULT_JOIN_TIMEOUT = 150.0

#: Seconds between two attempts to join.
JOIN_RETRY_SECONDS = 10.0

#: Exit code when the SuperLink never accepted the site.
EXIT_NOT_ACCEPTED = 3

# flower-supernode 1.42 prints this when the SuperLink rejected the activation of the node.
_ACTIVATION_FAILED = "Failed to initialize the connection to the SuperLink"


@dataclass(frozen=True)
class SuperNodeSettings:
    """How to start one hospital's SuperNode.

    Attributes
    ----------
    superlink : str
        ``host:port`` of the SuperLink.
    root_certificates : Path
        The coordinator's CA certificate.
    credentials_dir : Path
        Folder from :mod:`client.keys` with ``site.key`` and ``runtime-tls/``.
    site_name : str
        The hospital's name, reported to the coordinator.
    data_path : Path
        The hospital's flow file; it never leaves this machine.
    work_dir : Path
        Folder for ``node-config.toml``, ``egress.jsonl`` and Flower's ``FLWR_HOME``.
    runtime_port : int
        Loopback port of the Runtime API between the SuperNode and its ClientApps.
    """

    superlink: str
    root_certificates: Path
    credentials_dir: Path
    site_name: str
    data_path: Path
    work_dir: Path
    runtime_port: int = DEFAULT_RUNTIME_PORT

    @property
    def private_key(self) -> Path:
        return self.credentials_dir / PRIVATE_KEY_FILE

    @property
    def node_config_file(self) -> Path:
        return self.work_dir / "node-config.toml"

    @property
    def egress_log(self) -> Path:
        return self.work_dir / "egress.jsonl"

    @property
    def flwr_home(self) -> Path:
        return self.work_dir / "flwr-home"


def check_settings(settings: SuperNodeSettings) -> None:
    """Check every file and value before Flower starts, so a mistake gives one clear message.

    Raises
    ------
    ConfigError
        If the site name, SuperLink address, port or data file is invalid.
    CredentialError
        If the CA certificate, the site key or the runtime TLS files are
        missing or unreadable.
    """
    check_site_name(settings.site_name)
    host, separator, port = settings.superlink.rpartition(":")
    if not separator or not host or not port.isdigit():
        raise ConfigError(f"--superlink must be HOST:PORT, got {settings.superlink!r}")
    if not 1 <= settings.runtime_port <= 65535:
        raise ConfigError(f"--runtime-port must be between 1 and 65535, got {settings.runtime_port}")
    if not settings.data_path.is_file():
        raise ConfigError(f"data file not found: {settings.data_path}; give this hospital's flow CSV as --data-path")
    load_certificate(settings.root_certificates)
    load_auth_private_key(settings.private_key)
    runtime = runtime_tls_files(settings.credentials_dir)
    load_certificate(runtime.certificate)
    load_certificate(runtime.ca_certificate)
    if not runtime.key.is_file():
        raise ConfigError(f"runtime TLS key not found: {runtime.key}; create it with python -m client.keys")


def write_node_config(settings: SuperNodeSettings) -> Path:
    """Write the node config the ClientApp reads as ``context.node_config``."""
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    config = {
        DATA_PATH_KEY: str(settings.data_path.resolve()),
        SITE_NAME_KEY: settings.site_name,
        EGRESS_LOG_KEY: str(settings.egress_log.resolve()),
    }
    settings.node_config_file.write_text(tomli_w.dumps(config), encoding="utf-8")
    return settings.node_config_file


def supernode_command(settings: SuperNodeSettings) -> list[str]:
    """Return the ``flower-supernode`` command line for ``settings``."""
    runtime = runtime_tls_files(settings.credentials_dir)
    return [
        flwr_executable("flower-supernode"),
        "--superlink", settings.superlink,
        "--root-certificates", str(settings.root_certificates.resolve()),
        "--auth-supernode-private-key", str(settings.private_key.resolve()),
        "--node-config", str(settings.node_config_file.resolve()),
        "--isolation", "subprocess",
        "--host", "127.0.0.1",
        "--port", str(settings.runtime_port),
        "--ssl-certfile", str(runtime.certificate.resolve()),
        "--ssl-keyfile", str(runtime.key.resolve()),
        "--ssl-ca-certfile", str(runtime.ca_certificate.resolve()),
    ]  # fmt: skip


def _forward_output(stream: IO[bytes], sink: IO[str], seen: list[str]) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", errors="replace")
        if _ACTIVATION_FAILED in line:
            seen.append(line)
        sink.write(line)
        sink.flush()


class _Supervisor:
    """Run ``flower-supernode`` and start it again while the SuperLink has not accepted the site."""

    def __init__(self, settings: SuperNodeSettings, join_timeout: float) -> None:
        self.settings = settings
        self.join_timeout = join_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.stopping = False

    def handle_signal(self, signum: int, _frame: FrameType | None) -> None:
        # The child shares the terminal's process group, so Ctrl-C reaches it
        # directly; SIGTERM from a service manager is passed on here.
        self.stopping = True
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def run(self) -> int:
        deadline = time.monotonic() + self.join_timeout
        command = supernode_command(self.settings)
        environment = flwr_environment(self.settings.flwr_home)
        attempt = 0
        while True:
            attempt += 1
            rejected: list[str] = []
            self.process = subprocess.Popen(
                command,
                env=environment,
                cwd=self.settings.work_dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            assert self.process.stdout is not None
            reader = threading.Thread(target=_forward_output, args=(self.process.stdout, sys.stdout, rejected))
            reader.start()
            try:
                returncode = self.process.wait()
            except KeyboardInterrupt:
                # Ctrl-C reached the child too; give it time to leave the federation cleanly.
                self.stopping = True
                try:
                    self.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                reader.join()
                return 130
            reader.join()
            if self.stopping or not rejected:
                return returncode
            if time.monotonic() + JOIN_RETRY_SECONDS > deadline:
                logger.error(
                    "join: the SuperLink did not accept site %s in %d attempts over %.0f s; check that the "
                    "coordinator registered this key (python -m server.superlink register-site)",
                    self.settings.site_name,
                    attempt,
                    self.join_timeout,
                )
                return EXIT_NOT_ACCEPTED
            logger.warning(
                "join: the SuperLink did not accept site %s (attempt %d): its key is not registered, or its "
                "previous connection still counts as online; retrying in %.0f s",
                self.settings.site_name,
                attempt,
                JOIN_RETRY_SECONDS,
            )
            time.sleep(JOIN_RETRY_SECONDS)
            if self.stopping:
                return returncode


def run_supernode(settings: SuperNodeSettings, join_timeout: float = DEFAULT_JOIN_TIMEOUT) -> int:
    """Check the settings, write the node config and run the SuperNode until it stops; return its exit code.

    Raises
    ------
    ConfigError, CredentialError
        From :func:`check_settings`.
    """
    check_settings(settings)
    settings.flwr_home.mkdir(parents=True, exist_ok=True)
    write_node_config(settings)
    logger.info(
        "supernode: site %s joins %s with data %s; egress audit in %s",
        settings.site_name,
        settings.superlink,
        settings.data_path,
        settings.egress_log,
    )
    supervisor = _Supervisor(settings, join_timeout)
    signal.signal(signal.SIGTERM, supervisor.handle_signal)
    return supervisor.run()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m client.supernode", description="Run a hospital's SuperNode.")
    parser.add_argument("--superlink", required=True, help="SuperLink address HOST:PORT")
    parser.add_argument("--root-certificates", type=Path, required=True, help="the coordinator's CA certificate")
    parser.add_argument("--credentials", type=Path, required=True, help="folder created by python -m client.keys")
    parser.add_argument("--site-name", required=True, help="this hospital's name, as registered")
    parser.add_argument("--data-path", type=Path, required=True, help="this hospital's flow CSV file")
    parser.add_argument("--work-dir", type=Path, required=True, help="folder for node config, audit and Flower state")
    parser.add_argument(
        "--runtime-port", type=int, default=DEFAULT_RUNTIME_PORT, help="loopback Runtime API port (default: 9094)"
    )
    parser.add_argument(
        "--join-timeout",
        type=float,
        default=DEFAULT_JOIN_TIMEOUT,
        help=f"seconds to keep retrying while the SuperLink rejects the site (default: {DEFAULT_JOIN_TIMEOUT:.0f})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = SuperNodeSettings(
        superlink=args.superlink,
        root_certificates=args.root_certificates,
        credentials_dir=args.credentials,
        site_name=args.site_name,
        data_path=args.data_path,
        work_dir=args.work_dir,
        runtime_port=args.runtime_port,
    )
    try:
        return run_supernode(settings, args.join_timeout)
    except FedIDSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
