"""Stopping process trees: every descendant goes, including those in a new session."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from common.exceptions import ConfigError
from common.network import is_loopback, listen_family, listen_host_option, url_host
from common.processes import (
    free_port,
    kill_process_tree,
    listen_errors,
    process_tree,
    read_pid_file,
    stop_process_tree,
)

# A parent with one child in its own session, as flower-superlink starts flower-superexec.
_TREE = "sleep 300 & setsid sleep 301 & wait"


def _start_tree() -> tuple[subprocess.Popen[bytes], list[int]]:
    process = subprocess.Popen(["sh", "-c", _TREE], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(process_tree(process.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    return process, [member.pid for member in process_tree(process.pid)]


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


def test_stop_process_tree_ends_other_sessions() -> None:
    process, pids = _start_tree()
    assert len(pids) == 3

    killed = stop_process_tree(process.pid, timeout=10)
    process.wait(timeout=10)

    assert killed == []
    assert _alive(pids) == []


def test_stop_process_tree_kills_after_timeout() -> None:
    ignoring = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); time.sleep(300)"
    process = subprocess.Popen([sys.executable, "-c", ignoring], stdout=subprocess.PIPE)
    assert process.stdout is not None
    process.stdout.readline()

    killed = stop_process_tree(process.pid, timeout=1)
    process.wait(timeout=10)

    assert killed == [process.pid]


def test_kill_process_tree_kills_every_member() -> None:
    process, pids = _start_tree()

    killed = kill_process_tree(process.pid)
    process.wait(timeout=10)

    assert sorted(killed) == sorted(pids)
    assert _alive(pids) == []


def test_read_pid_file_ignores_missing_and_stale(tmp_path: Path) -> None:
    live = tmp_path / "live.pid"
    live.write_text(f"{os.getpid()}\n")
    stale = tmp_path / "stale.pid"
    stale.write_text("999999999\n")
    garbage = tmp_path / "garbage.pid"
    garbage.write_text("not a pid\n")

    assert read_pid_file(live) == os.getpid()
    assert read_pid_file(tmp_path / "missing.pid") is None
    assert read_pid_file(stale) is None
    assert read_pid_file(garbage) is None


def test_free_port_can_be_bound() -> None:
    port = free_port()

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", port))
        assert listener.getsockname()[1] == port


def test_listen_errors_names_a_taken_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        second = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with second, pytest.raises(ConfigError) as raised, listen_errors("127.0.0.1", port):
            second.bind(("127.0.0.1", port))

    message = str(raised.value)
    assert message.startswith(f"cannot listen on 127.0.0.1:{port}: ")
    assert message.endswith("another program already listens there; stop it or choose another --port")


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError(errno.EACCES, "Permission denied"), "Permission denied; ports below 1024 need administrator rights"),
        (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), "choose another --host"),
        (OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol"), "address of the other family"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "check --host and --port"),
        (ValueError("Invalid host/port specified."), "Invalid host/port specified.; check --host and --port"),
    ],
)
def test_listen_errors_explains_bind_failures(error: Exception, expected: str) -> None:
    with pytest.raises(ConfigError, match="cannot listen on example-host:80: ") as raised, listen_errors(
        "example-host", 80
    ):
        raise error

    assert expected in str(raised.value)
    assert raised.value.__cause__ is error


def test_listen_errors_passes_other_errors_through() -> None:
    with pytest.raises(OSError) as raised, listen_errors("127.0.0.1", 1):
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    assert not isinstance(raised.value, ConfigError)


def test_listen_errors_brackets_ipv6_host() -> None:
    expected = r"^cannot listen on \[::1\]:8080: Cannot assign requested address; "
    with pytest.raises(ConfigError, match=expected), listen_errors("::1", 8080):
        raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("LOCALHOST", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("[::]", False),
        ("192.0.2.10", False),
        ("2001:db8::10", False),
        ("coordinator.example", False),
    ],
)
def test_is_loopback_addresses(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [("127.0.0.1", "127.0.0.1"), ("::1", "[::1]"), ("[::1]", "[::1]"), ("::", "[::]"), ("localhost", "localhost")],
)
def test_url_host_brackets_ipv6(host: str, expected: str) -> None:
    assert url_host(host) == expected


@pytest.mark.parametrize(
    ("host", "expected"),
    [("127.0.0.1", socket.AF_INET), ("0.0.0.0", socket.AF_INET), ("::1", socket.AF_INET6), ("[::]", socket.AF_INET6)],
)
def test_listen_family_of_addresses(host: str, expected: socket.AddressFamily) -> None:
    assert listen_family(host, 0) == expected


@pytest.mark.parametrize(
    ("addresses", "expected"),
    [
        (["::1", "127.0.0.1"], socket.AF_INET),
        (["::1"], socket.AF_INET6),
    ],
    ids=["both-families", "ipv6-only"],
)
def test_listen_family_of_names(
    monkeypatch: pytest.MonkeyPatch, addresses: list[str], expected: socket.AddressFamily
) -> None:
    def resolve(host: str, port: int, *_arguments: object, **_options: object) -> list[tuple[object, ...]]:
        assert host == "coordinator.example"
        return [
            (socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))
            for address in addresses
        ]

    # A stand-in resolver returns the addresses, so no name is looked up.
    monkeypatch.setattr(socket, "getaddrinfo", resolve)

    assert listen_family("coordinator.example", 8443) == expected


@pytest.mark.parametrize("host", ["", " ", "\t"], ids=["empty", "space", "tab"])
def test_listen_host_option_rejects_empty(host: str) -> None:
    with pytest.raises(ConfigError, match=r"^--host '.*' is empty; pass 127\.0\.0\.1 to listen on this machine only"):
        listen_host_option(host)


def test_listen_host_option_removes_brackets() -> None:
    assert listen_host_option("[::1]") == "::1"
    assert listen_host_option("127.0.0.1") == "127.0.0.1"
