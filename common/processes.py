"""Start, check and stop the Flower processes of a deployed federation.

Flower's deployment commands start helpers of their own: ``flower-superlink``
starts ``flower-superexec`` in a new session, which starts one
``flwr-serverapp`` per run, and ``flower-supernode`` starts a
``flower-superexec`` that starts one ``flwr-clientapp`` per message. Stopping
only the process one started would leave those behind, so
:func:`stop_process_tree` collects every descendant first and then ends them
all by process id.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import psutil

from common.exceptions import ConfigError, DeploymentError
from common.network import url_host

logger = logging.getLogger(__name__)

#: Environment every Flower process of this project gets: no telemetry, no update check.
FLWR_QUIET_ENVIRONMENT = {"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}


def flwr_environment(flwr_home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return an environment for a Flower command with its own ``FLWR_HOME``.

    The folder of the running Python interpreter goes first on ``PATH``,
    because Flower starts ``flower-superexec``, ``flwr-serverapp`` and
    ``flwr-clientapp`` by name and they must come from the same environment.
    """
    environment = dict(os.environ)
    environment.update(FLWR_QUIET_ENVIRONMENT)
    environment["FLWR_HOME"] = str(Path(flwr_home).resolve())
    environment["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environment.get("PATH", "")])
    environment.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if extra:
        environment.update(extra)
    return environment


def flwr_executable(name: str) -> str:
    """Return the path of a Flower command installed beside the running interpreter.

    Raises
    ------
    DeploymentError
        If the command is not installed there.
    """
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise DeploymentError(f"{name} not found beside {sys.executable}; install flwr into this environment")
    return str(path)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that no process listens on at the moment of the call.

    NOTE: another process may take the port before the caller binds it. The
    window is short, and a failed bind shows up as a process that exits early.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


_LISTEN_ADVICE = {
    errno.EADDRINUSE: "another program already listens there; stop it or choose another --port",
    errno.EADDRNOTAVAIL: "no network interface of this machine has that address; choose another --host",
    errno.EACCES: "ports below 1024 need administrator rights; choose a port above 1023",
    errno.EAFNOSUPPORT: "this machine does not support that address family; choose an address of the other family "
    "with --host",
}


@contextlib.contextmanager
def listen_errors(host: str, port: int) -> Iterator[None]:
    """Convert an error while binding ``host:port`` into a :class:`ConfigError` naming the option to change.

    A host name that does not resolve is reported the same way, whether the
    server raises :class:`socket.gaierror` or, like waitress, ``ValueError``.
    Any other error passes through unchanged. An IPv6 host is written in
    brackets, as in a URL.
    """
    address = f"{url_host(host)}:{port}"
    try:
        yield
    except (socket.gaierror, ValueError) as error:
        raise ConfigError(f"cannot listen on {address}: {error}; check --host and --port") from error
    except OSError as error:
        advice = _LISTEN_ADVICE.get(error.errno or -1)
        if advice is None:
            raise
        raise ConfigError(f"cannot listen on {address}: {error.strerror}; {advice}") from error


def wait_for_tls_port(host: str, port: int, ca_certificate: Path, timeout: float) -> None:
    """Wait until a TLS server on ``host:port`` completes a handshake that the CA certificate verifies.

    Raises
    ------
    DeploymentError
        If no verified handshake succeeded within ``timeout`` seconds; the
        message includes the last error (refused connection, certificate
        not trusted, host name mismatch).
    """
    context = ssl.create_default_context(cafile=str(ca_certificate))
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with (
                socket.create_connection((host, port), timeout=2) as raw,
                context.wrap_socket(raw, server_hostname=host),
            ):
                return
        except (OSError, ssl.SSLError) as error:
            last_error = error
            time.sleep(0.3)
    raise DeploymentError(f"no verified TLS server on {host}:{port} after {timeout:.0f} s: {last_error}")


def process_tree(pid: int) -> list[psutil.Process]:
    """Return the process ``pid`` and all its live descendants, parents first.

    Zombies are left out: they have already exited and only wait for their
    parent to collect their exit status.
    """
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    live = []
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                live.append(process)
        except psutil.NoSuchProcess:
            continue
    return live


def stop_process_tree(pid: int, timeout: float = 15.0, *, sig: int = signal.SIGTERM) -> list[int]:
    """Stop a process and every descendant it started, and return the ids that had to be killed.

    The whole tree is collected before the first signal, because Flower's
    helpers exit or get re-parented as soon as their parent goes. Each
    process gets ``sig``; whatever still runs after ``timeout`` seconds gets
    SIGKILL.
    """
    processes = process_tree(pid)
    for process in processes:
        try:
            process.send_signal(sig)
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    killed = []
    for process in alive:
        try:
            process.kill()
            killed.append(process.pid)
        except psutil.NoSuchProcess:
            continue
    if killed:
        logger.warning("stop: killed %d processes that ignored signal %d: %s", len(killed), sig, killed)
        psutil.wait_procs(alive, timeout=5)
    return killed


def kill_process_tree(pid: int) -> list[int]:
    """Kill a process and its descendants at once with SIGKILL, as a power cut would, and return their ids."""
    processes = process_tree(pid)
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(processes, timeout=10)
    return [process.pid for process in processes]


def read_pid_file(path: Path) -> int | None:
    """Return the process id in ``path`` if that process still runs, else ``None``."""
    try:
        pid = int(Path(path).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if psutil.pid_exists(pid) else None
